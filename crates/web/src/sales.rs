//! Flash sales in the storefront: live and upcoming sales with countdowns; a sale's page whose
//! stock ("N left") follows the sale's event stream; Reserve; and the reservation with its
//! payment deadline counting down and a Pay button.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use flashmart_app::flash_sale::{SaleError, SaleView};
use flashmart_app::page::PageRequest;
use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::{ReservationId, SaleId};
use flashmart_http::AppState;
use maud::{Markup, html};
use serde::Deserialize;

use crate::layout::{
    PageError, PageResult, cents, countdown, csrf_field, pager, problem, shop_page,
};
use crate::session::{Posted, Shopper, Viewer};
use crate::shop::{fields_text, order_url, parse_id, payment_status};

/// Items shown on a sale's page at once.
const ITEMS_PER_PAGE: u32 = 100;

pub fn sale_error(e: SaleError) -> PageError {
    match e {
        SaleError::SaleNotFound | SaleError::ItemNotFound | SaleError::ReservationNotFound => {
            PageError::not_found()
        }
        SaleError::Invalid(f) => PageError::new(StatusCode::UNPROCESSABLE_ENTITY, fields_text(&f)),
        SaleError::Store(s) => PageError::internal(&s),
        SaleError::Unavailable(_) => PageError::unavailable(),
        other => PageError::new(StatusCode::CONFLICT, other.to_string()),
    }
}

pub fn sale_url(id: SaleId) -> String {
    format!("/flash-sales/{}", id.as_uuid())
}

/// The sale's state and its countdown to the next change.
pub fn sale_clock(s: &SaleView) -> Markup {
    let window = s.record.rules.window();
    html! {
        @match s.phase {
            SalePhase::Upcoming => (countdown(window.starts_at(), "Starts in", "Started")),
            SalePhase::Live => (countdown(window.ends_at(), "Ends in", "Ended")),
            SalePhase::Ended => "Ended",
        }
    }
}

fn sale_card(s: &SaleView) -> Markup {
    html! {
        li.card {
            h2 { a href=(sale_url(s.record.id)) { (s.record.name) } }
            p { span.badge { (s.phase.as_str()) } " " (sale_clock(s)) }
            p { (s.remaining) " of " (s.record.total_stock) " left · " (s.record.item_count) " items" }
        }
    }
}

/// `/flash-sales`: the sales that are live and those coming.
pub async fn list(State(state): State<AppState>, viewer: Viewer) -> PageResult {
    let first = PageRequest::new(None, Some(50));
    let live = state
        .flash_sales
        .list_sales(Some(SalePhase::Live), first)
        .await
        .map_err(sale_error)?;
    let upcoming = state
        .flash_sales
        .list_sales(Some(SalePhase::Upcoming), first)
        .await
        .map_err(sale_error)?;
    let body = html! {
        h2 { "Live now" }
        @if live.items.is_empty() { p { "No sale is live just now." } }
        @else { ul.cards { @for s in &live.items { (sale_card(s)) } } }
        h2 { "Coming up" }
        @if upcoming.items.is_empty() { p { "Nothing is scheduled yet." } }
        @else { ul.cards { @for s in &upcoming.items { (sale_card(s)) } } }
    };
    Ok(shop_page(&viewer, "Flash sales", body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SaleParams {
    page: Option<u32>,
}

async fn sale_page(
    state: &AppState,
    viewer: &Viewer,
    id: SaleId,
    page: Option<u32>,
    error: Option<(StatusCode, String)>,
) -> PageResult {
    let sale = state.flash_sales.sale(id).await.map_err(sale_error)?;
    let items = state
        .flash_sales
        .items(id, PageRequest::new(page, Some(ITEMS_PER_PAGE)))
        .await
        .map_err(sale_error)?;
    let currency = sale.record.currency.as_str().to_owned();
    let live = sale.phase == SalePhase::Live;
    let sold_out = sale.remaining == 0;
    let url = sale_url(id);
    let body = html! {
        div.sale-head data-sale=(id.as_uuid()) data-page=(items.page) data-per-page=(ITEMS_PER_PAGE) {
            p {
                span.badge data-sale-status { (sale.phase.as_str()) } " "
                (sale_clock(&sale))
            }
            p.remaining aria-live="polite" {
                strong data-remaining { (sale.remaining) " left" }
                " of " (sale.record.total_stock)
                " · at most " (sale.record.rules.per_user_limit()) " per buyer"
                " · pay within " (sale.record.rules.reservation_ttl().whole_minutes()) " min of reserving"
            }
            p.sold-out role="status" data-sold-out hidden[!sold_out] { "Sold out" }
        }
        @if let Some((_, e)) = &error { (problem(e)) }
        ul.cards.items {
            @for (item, left) in &items.items {
                li.card data-item=(item.no) {
                    @if let Some(img) = &item.image_url { img src=(img) alt="" loading="lazy"; }
                    h2 { (item.name) }
                    p.price { (cents(item.price_cents, &currency)) }
                    p { span data-item-left { (left) " left" } }
                    @if live && *left > 0 {
                        form method="post" action={ (url) "/reserve" } {
                            (csrf_field(viewer))
                            input type="hidden" name="item_id" value=(item.no);
                            button type="submit" data-reserve { "Reserve" }
                        }
                    } @else if live {
                        button type="button" disabled { "Sold out" }
                    }
                }
            }
        }
        (pager(&url, items.page, items.total, ITEMS_PER_PAGE))
    };
    let page = shop_page(viewer, &sale.record.name, body);
    Ok(match error {
        Some((status, _)) => (status, page).into_response(),
        None => page.into_response(),
    })
}

/// `/flash-sales/{id}`: the sale's items, live.
pub async fn sale(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(params): Query<SaleParams>,
) -> PageResult {
    let id = SaleId::from_uuid(parse_id(&id)?);
    sale_page(&state, &viewer, id, params.page, None).await
}

#[derive(Debug, Deserialize)]
pub struct ReserveForm {
    item_id: i64,
}

/// `POST /flash-sales/{id}/reserve`: one unit of an item; the reservation's page on success,
/// the sale's page saying why not otherwise.
pub async fn reserve(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
    Path(id): Path<String>,
    Posted(form): Posted<ReserveForm>,
) -> PageResult {
    let id = SaleId::from_uuid(parse_id(&id)?);
    let why = match state
        .flash_sales
        .reserve(me.user_id, id, form.item_id, 1, None)
        .await
    {
        Ok(r) => {
            return Ok(Redirect::to(&format!("/reservations/{}", r.id.as_uuid())).into_response());
        }
        Err(SaleError::SoldOut) => "Sold out: someone was quicker.".to_owned(),
        Err(SaleError::LimitReached) => {
            "You have reserved as many as this sale allows per buyer.".to_owned()
        }
        Err(SaleError::NotStarted) => "The sale has not started yet.".to_owned(),
        Err(SaleError::Ended) => "The sale has ended.".to_owned(),
        Err(e) => return Err(sale_error(e)),
    };
    sale_page(&state, &viewer, id, None, Some((StatusCode::CONFLICT, why))).await
}

/// `/reservations/{id}`: what was reserved, the time left to pay, and Pay.
pub async fn reservation(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
    Path(id): Path<String>,
) -> PageResult {
    let id = ReservationId::from_uuid(parse_id(&id)?);
    let r = state
        .flash_sales
        .reservation_for(me.user_id, id)
        .await
        .map_err(sale_error)?;
    let sale = state
        .flash_sales
        .sale(r.sale_id)
        .await
        .map_err(sale_error)?;
    let page = (r.item_no - 1) / ITEMS_PER_PAGE + 1;
    let items = state
        .flash_sales
        .items(
            r.sale_id,
            PageRequest::new(Some(page), Some(ITEMS_PER_PAGE)),
        )
        .await
        .map_err(sale_error)?;
    let item = items.items.iter().find(|(i, _)| i.no == r.item_no);
    let order = match r.order_id {
        Some(o) => Some(
            state
                .shop
                .order_of(me.user_id, o)
                .await
                .map_err(crate::shop::shop_error)?,
        ),
        None => None,
    };
    let body = html! {
        p {
            "From " a href=(sale_url(sale.record.id)) { (sale.record.name) } ": "
            strong { (r.quantity) " × " (item.map_or("an item", |(i, _)| i.name.as_str())) }
            @if let Some((i, _)) = item { " at " (cents(i.price_cents, sale.record.currency.as_str())) }
        }
        @if let Some(o) = &order {
            (payment_status(&viewer, o, "The time to pay is over: the units went back on sale.", html! {}))
            p { a href=(order_url(o.id)) { "The order" } }
        } @else {
            p { "Status: " (r.status.as_str()) }
        }
    };
    Ok(shop_page(&viewer, "Your reservation", body).into_response())
}
