//! The operator console at `/admin`: products (with pictures), coupons, flash sales and their
//! schedules, a live view of a running sale, orders with refunds, and (admins only) users.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use flashmart_app::audit::Actor;
use flashmart_app::catalog::{CatalogError, ProductDraft, ProductFilter, ProductPatch};
use flashmart_app::flash_sale::{ItemDraft, ItemsDraft, SaleDraft, ScheduleDraft};
use flashmart_app::page::PageRequest;
use flashmart_app::shop::CouponDraft;
use flashmart_domain::coupon::Discount;
use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::order::OrderStatus;
use flashmart_domain::{OrderId, ProductId, Role, SaleId};
use flashmart_http::AppState;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use time::macros::format_description;
use time::{Duration, OffsetDateTime, PrimitiveDateTime};

use crate::layout::{
    PageError, PageResult, cents, console_page, csrf_field, errors_box, money, notice, pager,
    parse_price, status_label, when,
};
use crate::sales::{sale_clock, sale_error};
use crate::session::{Nothing, Posted, Viewer};
use crate::shop::{catalog_error, order_details, parse_id, payment_error, shop_error, short};

/// Pictures one product form may upload at once.
pub const MAX_FORM_IMAGES: usize = 4;

/// An operator or admin (with the second factor when the configuration asks for one).
#[derive(Debug, Clone)]
pub struct Staff(pub Viewer, pub Actor);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Staff {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(viewer) = Viewer::from_request_parts(parts, state).await;
        let Some(principal) = viewer.principal else {
            return Err(viewer.sign_in_first());
        };
        if !principal.role.allows(Role::Operator) {
            return Err(PageError::forbidden(
                "The console is for operators and admins. Sign in with a staff account.",
            )
            .into_response());
        }
        if !viewer.staff {
            return Err(PageError::forbidden(
                "The console needs a session opened with a second factor: enrol one through the \
                 API (/api/v1/auth/totp/enroll), then sign in again with its code.",
            )
            .into_response());
        }
        Ok(Self(viewer, principal.actor()))
    }
}

fn admin_only(viewer: &Viewer) -> Result<(), PageError> {
    if viewer.is_admin() {
        Ok(())
    } else {
        Err(PageError::forbidden("Only admins may do this."))
    }
}

/// `/admin`: where to go.
pub async fn home(State(state): State<AppState>, Staff(viewer, _): Staff) -> PageResult {
    let live = state
        .flash_sales
        .list_sales(Some(SalePhase::Live), PageRequest::new(None, Some(20)))
        .await
        .map_err(sale_error)?;
    let body = html! {
        h2 { "Live sales" }
        @if live.items.is_empty() { p { "None just now." } }
        @else {
            ul { @for s in &live.items {
                li { a href={ "/admin/flash-sales/" (s.record.id.as_uuid()) } { (s.record.name) } " — " (s.remaining) " left, " (sale_clock(s)) }
            } }
        }
        p { a.button href="/admin/flash-sales/new" { "New sale" } " " a.button href="/admin/products/new" { "New product" } }
    };
    Ok(console_page(&viewer, "Console", body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct PageParams {
    page: Option<u32>,
    status: Option<String>,
    saved: Option<String>,
}

/// `/admin/products`.
pub async fn products(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    let page = state
        .catalog
        .list(
            ProductFilter {
                include_inactive: true,
                ..ProductFilter::default()
            },
            PageRequest::new(params.page, Some(50)),
        )
        .await
        .map_err(catalog_error)?;
    let body = html! {
        @if params.saved.is_some() { (notice("Deleted.")) }
        p { a.button href="/admin/products/new" { "New product" } }
        div.scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Price" } th scope="col" { "Stock" } th scope="col" { "Sold" } th scope="col" { "Category" } th scope="col" { "On sale" } } }
            tbody { @for p in &page.items {
                tr {
                    td { a href={ "/admin/products/" (p.id.as_uuid()) } { (p.name) } }
                    td { (money(p.price)) } td { (p.stock) } td { (p.sold) }
                    td { (p.category.as_deref().unwrap_or("")) } td { @if p.active { "yes" } @else { "no" } }
                }
            } }
        } }
        (pager("/admin/products", page.page, page.total, 50))
    };
    Ok(console_page(&viewer, "Products", body).into_response())
}

/// What the product form holds.
#[derive(Debug, Default)]
struct ProductFields {
    csrf: String,
    name: String,
    description: String,
    price: String,
    stock: String,
    category: String,
    active: bool,
    keep: Vec<String>,
    images: Vec<Vec<u8>>,
}

fn product_form(
    viewer: &Viewer,
    action: &str,
    f: &ProductFields,
    images: &[String],
    errors: &[String],
) -> Markup {
    html! {
        (errors_box("Not saved:", errors))
        form.stack method="post" action=(action) enctype="multipart/form-data" {
            (csrf_field(viewer))
            label for="name" { "Name" }
            input #name type="text" name="name" required value=(f.name);
            label for="price" { "Price" }
            input #price type="text" name="price" inputmode="decimal" required aria-describedby="price-help" value=(f.price);
            p #price-help .help { "In US dollars, such as 19.99." }
            label for="stock" { "Stock" }
            input #stock type="number" name="stock" min="0" required value=(f.stock);
            label for="category" { "Category" }
            input #category type="text" name="category" aria-describedby="category-help" value=(f.category);
            p #category-help .help { "Lower-case letters, digits and -, such as shoes." }
            label for="description" { "Description" }
            textarea #description name="description" rows="4" { (f.description) }
            @if !images.is_empty() {
                fieldset {
                    legend { "Pictures" }
                    @for (i, img) in images.iter().enumerate() {
                        div.choice.picture {
                            input type="checkbox" name="keep" id={ "keep-" (i) } value=(img) checked;
                            label for={ "keep-" (i) } { img src=(img) alt={ "Picture " (i + 1) }; " Keep picture " (i + 1) }
                        }
                    }
                }
            }
            label for="images" { "Add pictures" }
            input #images type="file" name="images" accept="image/png,image/jpeg,image/gif,image/webp" multiple
                aria-describedby="images-help";
            p #images-help .help { "PNG, JPEG, GIF or WebP; up to " (MAX_FORM_IMAGES) " at a time." }
            div.choice {
                input #active type="checkbox" name="active" value="1" checked[f.active];
                label for="active" { "On sale in the shop" }
            }
            button type="submit" { "Save" }
        }
    }
}

/// `/admin/products/new`.
pub async fn new_product_page(Staff(viewer, _): Staff) -> PageResult {
    let f = ProductFields {
        active: true,
        ..ProductFields::default()
    };
    Ok(console_page(
        &viewer,
        "New product",
        product_form(&viewer, "/admin/products/new", &f, &[], &[]),
    )
    .into_response())
}

async fn read_product_form(mut form: Multipart) -> Result<ProductFields, String> {
    let mut f = ProductFields::default();
    while let Some(field) = form.next_field().await.map_err(|e| e.body_text())? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "images" {
            let has_file = field.file_name().is_some_and(|n| !n.is_empty());
            let bytes = field.bytes().await.map_err(|e| e.body_text())?;
            if has_file && !bytes.is_empty() {
                if f.images.len() == MAX_FORM_IMAGES {
                    return Err(format!("at most {MAX_FORM_IMAGES} pictures at a time"));
                }
                f.images.push(bytes.to_vec());
            }
            continue;
        }
        let text = field.text().await.map_err(|e| e.body_text())?;
        match name.as_str() {
            "csrf" => f.csrf = text,
            "name" => f.name = text,
            "description" => f.description = text,
            "price" => f.price = text,
            "stock" => f.stock = text,
            "category" => f.category = text,
            "active" => f.active = true,
            "keep" => f.keep.push(text),
            _ => {}
        }
    }
    Ok(f)
}

/// Checks the typed numbers and stores the uploaded pictures; the pictures' URLs, or what is
/// wrong.
async fn prepare(
    state: &AppState,
    f: &ProductFields,
) -> Result<(i64, i64, Vec<String>), Vec<String>> {
    let mut errors = Vec::new();
    let price = parse_price(&f.price);
    if price.is_none() {
        errors.push("price: a price such as 19.99".to_owned());
    }
    let stock = f.stock.trim().parse::<i64>().ok();
    if stock.is_none() {
        errors.push("stock: a whole number".to_owned());
    }
    let mut urls = f.keep.clone();
    if errors.is_empty() {
        for (i, bytes) in f.images.iter().enumerate() {
            match state.uploads.store(bytes).await {
                Ok(stored) => urls.push(stored.url()),
                Err(e) => errors.push(format!("picture {}: {e}", i + 1)),
            }
        }
    }
    match (price, stock) {
        (Some(p), Some(s)) if errors.is_empty() => Ok((p, s, urls)),
        _ => Err(errors),
    }
}

fn invalid_fields(e: CatalogError) -> Result<Vec<String>, PageError> {
    match e {
        CatalogError::Invalid(f) => Ok(f.iter().map(ToString::to_string).collect()),
        other => Err(catalog_error(other)),
    }
}

/// `POST /admin/products/new` (multipart, with pictures).
pub async fn create_product(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    form: Multipart,
) -> PageResult {
    let f = read_product_form(form)
        .await
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e))?;
    if !viewer.genuine(&f.csrf) {
        return Err(PageError::bad_form());
    }
    let again = |errors: Vec<String>| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            console_page(
                &viewer,
                "New product",
                product_form(&viewer, "/admin/products/new", &f, &f.keep, &errors),
            ),
        )
            .into_response()
    };
    let (price_cents, stock, images) = match prepare(&state, &f).await {
        Ok(ok) => ok,
        Err(errors) => return Ok(again(errors)),
    };
    let draft = ProductDraft {
        name: f.name.clone(),
        description: Some(f.description.clone()),
        price_cents,
        currency: None,
        stock,
        category: Some(f.category.trim().to_owned()).filter(|c| !c.is_empty()),
        images,
        active: Some(f.active),
    };
    match state.catalog.create(by, draft).await {
        Ok(p) => Ok(
            Redirect::to(&format!("/admin/products/{}?saved=1", p.id.as_uuid())).into_response(),
        ),
        Err(e) => Ok(again(invalid_fields(e)?)),
    }
}

fn fields_of(p: &flashmart_app::catalog::Product) -> ProductFields {
    let c = p.price.cents();
    ProductFields {
        name: p.name.clone(),
        description: p.description.clone(),
        price: format!("{}.{:02}", c / 100, c % 100),
        stock: p.stock.to_string(),
        category: p.category.clone().unwrap_or_default(),
        active: p.active,
        ..ProductFields::default()
    }
}

/// `/admin/products/{id}`: edit, pictures, delete.
pub async fn product_page(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> PageResult {
    let id = ProductId::from_uuid(parse_id(&id)?);
    let p = state.catalog.get(id, true).await.map_err(catalog_error)?;
    let action = format!("/admin/products/{}", id.as_uuid());
    let body = html! {
        @if params.saved.is_some() { (notice("Saved.")) }
        p { "Sold so far: " (p.sold) " · " a href={ "/products/" (id.as_uuid()) } { "As shoppers see it" } }
        (product_form(&viewer, &action, &fields_of(&p), &p.images, &[]))
        form.inline.danger method="post" action={ (action) "/delete" } {
            (csrf_field(&viewer))
            button.secondary type="submit" { "Delete product" }
        }
    };
    Ok(console_page(&viewer, &p.name, body).into_response())
}

/// `POST /admin/products/{id}` (multipart).
pub async fn update_product(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    Path(id): Path<String>,
    form: Multipart,
) -> PageResult {
    let id = ProductId::from_uuid(parse_id(&id)?);
    let f = read_product_form(form)
        .await
        .map_err(|e| PageError::new(StatusCode::BAD_REQUEST, e))?;
    if !viewer.genuine(&f.csrf) {
        return Err(PageError::bad_form());
    }
    let action = format!("/admin/products/{}", id.as_uuid());
    let again = |errors: Vec<String>| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            console_page(
                &viewer,
                "Edit product",
                product_form(&viewer, &action, &f, &f.keep, &errors),
            ),
        )
            .into_response()
    };
    let (price_cents, stock, images) = match prepare(&state, &f).await {
        Ok(ok) => ok,
        Err(errors) => return Ok(again(errors)),
    };
    let patch = ProductPatch {
        name: Some(f.name.clone()),
        description: Some(f.description.clone()),
        price_cents: Some(price_cents),
        currency: None,
        stock: Some(stock),
        category: Some(Some(f.category.trim().to_owned()).filter(|c| !c.is_empty())),
        images: Some(images),
        active: Some(f.active),
    };
    match state.catalog.update(by, id, patch).await {
        Ok(_) => Ok(Redirect::to(&format!("{action}?saved=1")).into_response()),
        Err(e) => Ok(again(invalid_fields(e)?)),
    }
}

/// `POST /admin/products/{id}/delete`.
pub async fn delete_product(
    State(state): State<AppState>,
    Staff(_, by): Staff,
    Path(id): Path<String>,
    Posted(Nothing {}): Posted<Nothing>,
) -> PageResult {
    let id = ProductId::from_uuid(parse_id(&id)?);
    state.catalog.delete(by, id).await.map_err(catalog_error)?;
    Ok(Redirect::to("/admin/products?saved=1").into_response())
}

const LOCAL_MINUTE: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]");

/// A `datetime-local` value, read as UTC.
fn parse_utc(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(text.trim(), LOCAL_MINUTE)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

fn local_value(t: OffsetDateTime) -> String {
    t.format(LOCAL_MINUTE).unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
pub struct CouponForm {
    #[serde(default)]
    code: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    min_spend: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default)]
    max_uses: String,
    #[serde(default)]
    per_user_limit: String,
}

fn coupon_form(viewer: &Viewer, f: &CouponForm, errors: &[String]) -> Markup {
    html! {
        (errors_box("Not saved:", errors))
        form.stack method="post" action="/admin/coupons" {
            (csrf_field(viewer))
            label for="code" { "Code" }
            input #code type="text" name="code" required value=(f.code);
            label for="kind" { "Kind" }
            select #kind name="kind" {
                option value="percent" selected[f.kind != "fixed"] { "Percent off" }
                option value="fixed" selected[f.kind == "fixed"] { "Amount off" }
            }
            label for="value" { "Discount" }
            input #value type="text" name="value" inputmode="decimal" required aria-describedby="value-help" value=(f.value);
            p #value-help .help { "A percentage (10) or an amount in dollars (5.00)." }
            label for="min_spend" { "Minimum spend" }
            input #min_spend type="text" name="min_spend" inputmode="decimal" value=(f.min_spend);
            label for="ends_at" { "Ends (UTC)" }
            input #ends_at type="datetime-local" name="ends_at" required value=(f.ends_at);
            label for="max_uses" { "Uses in all" }
            input #max_uses type="number" name="max_uses" min="1" value=(f.max_uses);
            label for="per_user_limit" { "Uses per buyer" }
            input #per_user_limit type="number" name="per_user_limit" min="1" value=(f.per_user_limit);
            button type="submit" { "Save" }
        }
    }
}

async fn coupons_page(
    state: &AppState,
    viewer: &Viewer,
    page: Option<u32>,
    form: &CouponForm,
    errors: &[String],
    saved: bool,
) -> PageResult {
    let list = state
        .shop
        .coupons(PageRequest::new(page, Some(50)))
        .await
        .map_err(shop_error)?;
    let body = html! {
        @if saved { (notice("Saved.")) }
        div.scroll { table {
            thead { tr { th scope="col" { "Code" } th scope="col" { "Discount" } th scope="col" { "Minimum" } th scope="col" { "Ends" } th scope="col" { "Used" } } }
            tbody { @for c in &list.items {
                tr {
                    td { (c.code) }
                    td { @match c.rules.discount { Discount::Percent { percent } => { (percent) "%" } Discount::Fixed { amount } => { (money(amount)) } } }
                    td { (c.rules.min_spend.map(money).unwrap_or_default()) }
                    td { (when(c.rules.ends_at)) }
                    td { (c.uses) @if let Some(m) = c.rules.max_uses { " of " (m) } }
                }
            } }
        } }
        (pager("/admin/coupons", list.page, list.total, 50))
        h2 { "New coupon" }
        (coupon_form(viewer, form, errors))
    };
    let page = console_page(viewer, "Coupons", body);
    Ok(if errors.is_empty() {
        page.into_response()
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
    })
}

/// `/admin/coupons`.
pub async fn coupons(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    let form = CouponForm {
        ends_at: local_value(state.flash_sales.clock().now() + Duration::days(30)),
        ..CouponForm::default()
    };
    coupons_page(
        &state,
        &viewer,
        params.page,
        &form,
        &[],
        params.saved.is_some(),
    )
    .await
}

fn optional_number(text: &str, field: &str, errors: &mut Vec<String>) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    t.parse()
        .map_err(|_| errors.push(format!("{field}: a whole number")))
        .ok()
}

/// `POST /admin/coupons`.
pub async fn create_coupon(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    Posted(form): Posted<CouponForm>,
) -> PageResult {
    let mut errors = Vec::new();
    let fixed = form.kind == "fixed";
    let (percent, amount_cents) = if fixed {
        (None, parse_price(&form.value))
    } else {
        (form.value.trim().parse::<i64>().ok(), None)
    };
    if percent.is_none() && amount_cents.is_none() {
        errors.push("discount: a number".to_owned());
    }
    let min_spend_cents = match form.min_spend.trim() {
        "" => None,
        t => {
            let p = parse_price(t);
            if p.is_none() {
                errors.push("minimum spend: an amount such as 30.00".to_owned());
            }
            p
        }
    };
    let ends_at = parse_utc(&form.ends_at);
    if ends_at.is_none() {
        errors.push("ends: a date and time".to_owned());
    }
    let max_uses = optional_number(&form.max_uses, "uses in all", &mut errors);
    let per_user_limit = optional_number(&form.per_user_limit, "uses per buyer", &mut errors);
    if errors.is_empty()
        && let Some(ends_at) = ends_at
    {
        let draft = CouponDraft {
            code: form.code.trim().to_owned(),
            kind: if fixed { "fixed" } else { "percent" }.to_owned(),
            percent,
            amount_cents,
            currency: None,
            min_spend_cents,
            starts_at: None,
            ends_at,
            max_uses,
            per_user_limit,
        };
        match state.shop.create_coupon(by, draft).await {
            Ok(_) => return Ok(Redirect::to("/admin/coupons?saved=1").into_response()),
            Err(flashmart_app::shop::ShopError::Invalid(f)) => {
                errors.extend(f.iter().map(ToString::to_string));
            }
            Err(flashmart_app::shop::ShopError::Store(e)) => return Err(PageError::internal(&e)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    coupons_page(&state, &viewer, None, &form, &errors, false).await
}

/// `/admin/flash-sales`.
pub async fn sales(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    let list = state
        .flash_sales
        .list_sales(None, PageRequest::new(params.page, Some(50)))
        .await
        .map_err(sale_error)?;
    let body = html! {
        p { a.button href="/admin/flash-sales/new" { "New sale" } }
        div.scroll { table {
            thead { tr { th scope="col" { "Sale" } th scope="col" { "State" } th scope="col" { "Left" } th scope="col" { "Starts" } th scope="col" { "Ends" } } }
            tbody { @for s in &list.items {
                tr {
                    td { a href={ "/admin/flash-sales/" (s.record.id.as_uuid()) } { (s.record.name) } }
                    td { (s.phase.as_str()) }
                    td { (s.remaining) " of " (s.record.total_stock) }
                    td { (when(s.record.rules.window().starts_at())) }
                    td { (when(s.record.rules.window().ends_at())) }
                }
            } }
        } }
        (pager("/admin/flash-sales", list.page, list.total, 50))
    };
    Ok(console_page(&viewer, "Flash sales", body).into_response())
}

/// Rows of the sale form that name a product each.
const PRODUCT_ROWS: usize = 3;

#[derive(Debug, Default, Deserialize)]
pub struct SaleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    minutes: String,
    #[serde(default)]
    per_user_limit: String,
    #[serde(default)]
    pay_minutes: String,
    /// `generated` or `products`.
    #[serde(default)]
    items: String,
    #[serde(default)]
    generated_count: String,
    #[serde(default)]
    generated_price: String,
    #[serde(default)]
    generated_stock: String,
    #[serde(flatten)]
    rows: BTreeMap<String, String>,
}

fn sale_form(
    viewer: &Viewer,
    f: &SaleForm,
    products: &[flashmart_app::catalog::Product],
    errors: &[String],
) -> Markup {
    let generated = f.items != "products";
    let row = |key: String| f.rows.get(&key).cloned().unwrap_or_default();
    html! {
        (errors_box("Not created:", errors))
        form.stack method="post" action="/admin/flash-sales/new" {
            (csrf_field(viewer))
            label for="name" { "Name" }
            input #name type="text" name="name" required value=(f.name);
            label for="starts_at" { "Starts (UTC)" }
            input #starts_at type="datetime-local" name="starts_at" aria-describedby="starts-help" value=(f.starts_at);
            p #starts-help .help { "Empty: now." }
            label for="minutes" { "Lasts (minutes)" }
            input #minutes type="number" name="minutes" min="1" required value=(f.minutes);
            label for="per_user_limit" { "Per buyer" }
            input #per_user_limit type="number" name="per_user_limit" min="1" required value=(f.per_user_limit);
            label for="pay_minutes" { "Minutes to pay" }
            input #pay_minutes type="number" name="pay_minutes" min="1" required value=(f.pay_minutes);
            fieldset {
                legend { "Items" }
                div.choice {
                    input #items-generated type="radio" name="items" value="generated" checked[generated];
                    label for="items-generated" { "Generated items" }
                }
                div.stack {
                    label for="generated_count" { "How many items" }
                    input #generated_count type="number" name="generated_count" min="1" value=(f.generated_count);
                    label for="generated_price" { "Price of each" }
                    input #generated_price type="text" name="generated_price" inputmode="decimal" value=(f.generated_price);
                    label for="generated_stock" { "Units of each" }
                    input #generated_stock type="number" name="generated_stock" min="1" value=(f.generated_stock);
                }
                div.choice {
                    input #items-products type="radio" name="items" value="products" checked[!generated];
                    label for="items-products" { "Products from the catalogue" }
                }
                @for i in 1..=PRODUCT_ROWS {
                    div.stack.row {
                        label for={ "product_" (i) } { "Product " (i) }
                        select id={ "product_" (i) } name={ "product_" (i) } {
                            option value="" { "(none)" }
                            @for p in products {
                                @let id = p.id.as_uuid().to_string();
                                option value=(id) selected[row(format!("product_{i}")) == id] { (p.name) " (" (p.stock) " in stock)" }
                            }
                        }
                        label for={ "units_" (i) } { "Units of product " (i) }
                        input type="number" id={ "units_" (i) } name={ "units_" (i) } min="1" value=(row(format!("units_{i}")));
                        label for={ "sale_price_" (i) } { "Sale price of product " (i) }
                        input type="text" inputmode="decimal" id={ "sale_price_" (i) } name={ "sale_price_" (i) } value=(row(format!("sale_price_{i}")));
                    }
                }
            }
            button type="submit" { "Create sale" }
        }
    }
}

async fn sale_form_page(
    state: &AppState,
    viewer: &Viewer,
    f: &SaleForm,
    errors: &[String],
) -> PageResult {
    let products = state
        .catalog
        .list(ProductFilter::default(), PageRequest::new(None, Some(100)))
        .await
        .map_err(catalog_error)?;
    let page = console_page(
        viewer,
        "New sale",
        sale_form(viewer, f, &products.items, errors),
    );
    Ok(if errors.is_empty() {
        page.into_response()
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
    })
}

/// `/admin/flash-sales/new`.
pub async fn new_sale_page(State(state): State<AppState>, Staff(viewer, _): Staff) -> PageResult {
    let f = SaleForm {
        minutes: "60".to_owned(),
        per_user_limit: "1".to_owned(),
        pay_minutes: "10".to_owned(),
        items: "generated".to_owned(),
        generated_count: "10".to_owned(),
        generated_price: "9.99".to_owned(),
        generated_stock: "10".to_owned(),
        ..SaleForm::default()
    };
    sale_form_page(&state, &viewer, &f, &[]).await
}

fn number(text: &str, field: &str, errors: &mut Vec<String>) -> i64 {
    text.trim().parse().unwrap_or_else(|_| {
        errors.push(format!("{field}: a whole number"));
        0
    })
}

/// `POST /admin/flash-sales/new`.
pub async fn create_sale(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    Posted(f): Posted<SaleForm>,
) -> PageResult {
    let mut errors = Vec::new();
    let now = state.flash_sales.clock().now();
    let starts_at = match f.starts_at.trim() {
        "" => now,
        t => parse_utc(t).unwrap_or_else(|| {
            errors.push("starts: a date and time".to_owned());
            now
        }),
    };
    let minutes = number(&f.minutes, "lasts", &mut errors);
    let per_user_limit = number(&f.per_user_limit, "per buyer", &mut errors);
    let pay_minutes = number(&f.pay_minutes, "minutes to pay", &mut errors);
    let items = if f.items == "products" {
        let products = state
            .catalog
            .list(ProductFilter::default(), PageRequest::new(None, Some(100)))
            .await
            .map_err(catalog_error)?;
        let mut listed = Vec::new();
        for i in 1..=PRODUCT_ROWS {
            let Some(pid) = f
                .rows
                .get(&format!("product_{i}"))
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            let Some(p) = products
                .items
                .iter()
                .find(|p| p.id.as_uuid().to_string() == *pid)
            else {
                errors.push(format!("product {i}: not in the catalogue"));
                continue;
            };
            let units = number(
                f.rows.get(&format!("units_{i}")).map_or("", String::as_str),
                &format!("units of product {i}"),
                &mut errors,
            );
            let price = match f.rows.get(&format!("sale_price_{i}")).map(|s| s.trim()) {
                None | Some("") => p.price.cents(),
                Some(t) => parse_price(t).unwrap_or_else(|| {
                    errors.push(format!("sale price of product {i}: an amount such as 9.99"));
                    0
                }),
            };
            listed.push(ItemDraft {
                name: p.name.clone(),
                product_id: Some(*p.id.as_uuid()),
                image_url: p.images.first().cloned(),
                price_cents: price,
                stock: units,
            });
        }
        if listed.is_empty() {
            errors.push("items: choose at least one product".to_owned());
        }
        ItemsDraft::Listed(listed)
    } else {
        ItemsDraft::Generated {
            count: number(&f.generated_count, "how many items", &mut errors),
            price_cents: parse_price(&f.generated_price).unwrap_or_else(|| {
                errors.push("price of each: an amount such as 9.99".to_owned());
                0
            }),
            stock: number(&f.generated_stock, "units of each", &mut errors),
        }
    };
    if errors.is_empty() {
        let draft = SaleDraft {
            name: f.name.clone(),
            starts_at,
            ends_at: starts_at + Duration::minutes(minutes),
            per_user_limit,
            reservation_ttl_secs: pay_minutes.saturating_mul(60),
            currency: None,
            items,
        };
        match state.flash_sales.create_sale(by, draft).await {
            Ok(sale) => {
                return Ok(Redirect::to(&format!(
                    "/admin/flash-sales/{}",
                    sale.record.id.as_uuid()
                ))
                .into_response());
            }
            Err(flashmart_app::flash_sale::SaleError::Invalid(fields)) => {
                errors.extend(fields.iter().map(ToString::to_string));
            }
            Err(e @ flashmart_app::flash_sale::SaleError::ProductShort { .. }) => {
                errors.push(e.to_string());
            }
            Err(e) => return Err(sale_error(e)),
        }
    }
    sale_form_page(&state, &viewer, &f, &errors).await
}

/// `/admin/flash-sales/{id}`: the sale as it runs.
pub async fn sale_live(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Path(id): Path<String>,
) -> PageResult {
    let id = SaleId::from_uuid(parse_id(&id)?);
    let sale = state.flash_sales.sale(id).await.map_err(sale_error)?;
    let stats = state.flash_sales.stats(id).await.map_err(sale_error)?;
    let recent = state
        .flash_sales
        .reservations(id, PageRequest::new(None, Some(20)), None)
        .await
        .map_err(sale_error)?;
    let stat = |name: &'static str, label: &'static str, value: u64| {
        html! { div.stat { dt { (label) } dd data-stat=(name) { (value) } } }
    };
    let body = html! {
        div.live data-sale=(id.as_uuid()) data-live=(format!("/admin/flash-sales/{}/live", id.as_uuid())) {
            p { span.badge data-sale-status { (sale.phase.as_str()) } " " (sale_clock(&sale))
                " · " a href={ "/flash-sales/" (id.as_uuid()) } { "The sale's page in the shop" } }
            p.remaining aria-live="polite" { strong data-remaining { (sale.remaining) " left" } " of " (stats.stock) }
            meter data-meter min="0" max=(stats.stock) value=(sale.remaining) aria-label="Stock left" {}
            dl.stats {
                (stat("reserved", "Held, unpaid", stats.reserved))
                (stat("sold", "Paid", stats.sold))
                (stat("released", "Given back", stats.released))
                (stat("buyers", "Buyers", stats.buyers))
                (stat("attempts", "Contest attempts", stats.attempts))
            }
            h2 { "Reservations per second, by result" }
            p.help { "As this server answered them (every sale it serves), from its metrics." }
            div.scroll { table.rates {
                thead { tr { th scope="col" { "Result" } th scope="col" { "Per second" } th scope="col" { "In all" } } }
                tbody data-rates {}
            } }
        }
        h2 { "Latest reservations" }
        div.scroll { table {
            thead { tr { th scope="col" { "When" } th scope="col" { "Item" } th scope="col" { "Units" } th scope="col" { "Status" } } }
            tbody { @for r in &recent.items {
                tr { td { (when(r.created_at)) } td { (r.item_no) } td { (r.quantity) } td { (r.status.as_str()) } }
            } }
        } }
    };
    Ok(console_page(&viewer, &sale.record.name, body).into_response())
}

#[derive(Debug, Serialize)]
pub struct LiveOut {
    phase: &'static str,
    remaining: u64,
    stock: u64,
    reserved: u64,
    sold: u64,
    released: u64,
    buyers: u64,
    attempts: u64,
    /// `flash_sale_reservations_total` by result, as this server counted them.
    results: BTreeMap<String, f64>,
}

/// `/admin/flash-sales/{id}/live`: what the live view polls.
pub async fn sale_live_data(
    State(state): State<AppState>,
    Staff(_, _): Staff,
    Path(id): Path<String>,
) -> Result<Json<LiveOut>, PageError> {
    let id = SaleId::from_uuid(parse_id(&id)?);
    let sale = state.flash_sales.sale(id).await.map_err(sale_error)?;
    let stats = state.flash_sales.stats(id).await.map_err(sale_error)?;
    Ok(Json(LiveOut {
        phase: sale.phase.as_str(),
        remaining: sale.remaining,
        stock: stats.stock,
        reserved: stats.reserved,
        sold: stats.sold,
        released: stats.released,
        buyers: stats.buyers,
        attempts: stats.attempts,
        results: reservation_results(&state.metrics.render()),
    }))
}

/// The `flash_sale_reservations_total{result="..."}` samples of a Prometheus exposition.
fn reservation_results(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("flash_sale_reservations_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let result = labels
                .split(',')
                .find_map(|l| l.strip_prefix("result=\""))?
                .trim_end_matches('"');
            Some((result.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// `/admin/schedules`.
pub async fn schedules(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    schedules_page(
        &state,
        &viewer,
        params.page,
        &ScheduleForm::default(),
        &[],
        params.saved.is_some(),
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
pub struct ScheduleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    recurrence: String,
    #[serde(default)]
    item_count: String,
    #[serde(default)]
    price: String,
    #[serde(default)]
    per_user_limit: String,
    #[serde(default)]
    pay_minutes: String,
}

async fn schedules_page(
    state: &AppState,
    viewer: &Viewer,
    page: Option<u32>,
    f: &ScheduleForm,
    errors: &[String],
    saved: bool,
) -> PageResult {
    let list = state
        .flash_sales
        .schedules(PageRequest::new(page, Some(50)))
        .await
        .map_err(sale_error)?;
    let body = html! {
        @if saved { (notice("Saved: its sales are made by the scheduler.")) }
        div.scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Every" } th scope="col" { "Items" } th scope="col" { "Price" } th scope="col" { "Per buyer" } } }
            tbody { @for s in &list.items {
                tr { td { (s.name) } td { (s.recurrence.as_str()) } td { (s.item_count) } td { (cents(s.price_cents, s.currency.as_str())) } td { (s.per_user_limit) } }
            } }
        } }
        (pager("/admin/schedules", list.page, list.total, 50))
        h2 { "New schedule" }
        (errors_box("Not saved:", errors))
        form.stack method="post" action="/admin/schedules" {
            (csrf_field(viewer))
            label for="name" { "Name" }
            input #name type="text" name="name" required value=(f.name);
            label for="recurrence" { "Every" }
            select #recurrence name="recurrence" {
                option value="hourly" selected[f.recurrence != "daily"] { "hour" }
                option value="daily" selected[f.recurrence == "daily"] { "day" }
            }
            label for="item_count" { "Items in each sale" }
            input #item_count type="number" name="item_count" min="1" required value=(f.item_count);
            label for="price" { "Price" }
            input #price type="text" name="price" inputmode="decimal" required value=(f.price);
            label for="per_user_limit" { "Per buyer" }
            input #per_user_limit type="number" name="per_user_limit" min="1" required value=(f.per_user_limit);
            label for="pay_minutes" { "Minutes to pay" }
            input #pay_minutes type="number" name="pay_minutes" min="1" required value=(f.pay_minutes);
            button type="submit" { "Save" }
        }
    };
    let page = console_page(viewer, "Schedules", body);
    Ok(if errors.is_empty() {
        page.into_response()
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, page).into_response()
    })
}

/// `POST /admin/schedules`.
pub async fn create_schedule(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    Posted(f): Posted<ScheduleForm>,
) -> PageResult {
    let mut errors = Vec::new();
    let item_count = number(&f.item_count, "items", &mut errors);
    let per_user_limit = number(&f.per_user_limit, "per buyer", &mut errors);
    let pay_minutes = number(&f.pay_minutes, "minutes to pay", &mut errors);
    let price_cents = parse_price(&f.price).unwrap_or_else(|| {
        errors.push("price: an amount such as 9.99".to_owned());
        0
    });
    if errors.is_empty() {
        let draft = ScheduleDraft {
            name: f.name.trim().to_owned(),
            recurrence: f.recurrence.clone(),
            item_count,
            price_cents,
            currency: None,
            per_user_limit,
            reservation_ttl_secs: pay_minutes.saturating_mul(60),
            duration_secs: None,
        };
        match state.flash_sales.create_schedule(by, draft).await {
            Ok(_) => return Ok(Redirect::to("/admin/schedules?saved=1").into_response()),
            Err(flashmart_app::flash_sale::SaleError::Invalid(fields)) => {
                errors.extend(fields.iter().map(ToString::to_string));
            }
            Err(e @ flashmart_app::flash_sale::SaleError::ScheduleNameTaken) => {
                errors.push(e.to_string())
            }
            Err(e) => return Err(sale_error(e)),
        }
    }
    schedules_page(&state, &viewer, None, &f, &errors, false).await
}

/// `/admin/orders?status=`.
pub async fn orders(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    let status = match params.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<OrderStatus>()
                .map_err(|_| PageError::new(StatusCode::BAD_REQUEST, "No such status."))?,
        ),
    };
    let list = state
        .shop
        .all_orders(status, PageRequest::new(params.page, Some(50)))
        .await
        .map_err(shop_error)?;
    let statuses = [
        "pending_payment",
        "paid",
        "cancelled",
        "expired",
        "refunded",
        "partially_refunded",
    ];
    let base = match status {
        Some(s) => format!("/admin/orders?status={}", s.as_str()),
        None => "/admin/orders".to_owned(),
    };
    let body = html! {
        form.search method="get" action="/admin/orders" {
            label for="status" { "Status" }
            select #status name="status" {
                option value="" { "any" }
                @for s in statuses {
                    option value=(s) selected[status.is_some_and(|x| x.as_str() == s)] { (status_label(s)) }
                }
            }
            button type="submit" { "Filter" }
        }
        p.count { (list.total) " orders" }
        div.scroll { table {
            thead { tr { th scope="col" { "Order" } th scope="col" { "Placed" } th scope="col" { "Total" } th scope="col" { "Status" } } }
            tbody { @for o in &list.items {
                tr {
                    td { a href={ "/admin/orders/" (o.id.as_uuid()) } { (short(o.id.as_uuid())) } }
                    td { (when(o.created_at)) } td { (money(o.total)) } td { (status_label(o.status.as_str())) }
                }
            } }
        } }
        (pager(&base, list.page, list.total, 50))
    };
    Ok(console_page(&viewer, "Orders", body).into_response())
}

/// `/admin/orders/{id}`: the order, and Refund for admins.
pub async fn order(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> PageResult {
    let id = OrderId::from_uuid(parse_id(&id)?);
    let o = state.shop.order(id).await.map_err(shop_error)?;
    let refundable = matches!(o.status, OrderStatus::Paid | OrderStatus::PartiallyRefunded);
    let body = html! {
        @if params.saved.is_some() { (notice("Refunded.")) }
        p.status { "Status: " strong { (status_label(o.status.as_str())) } }
        (order_details(&o))
        @if refundable && viewer.is_admin() {
            h2 { "Refund" }
            form.stack method="post" action={ "/admin/orders/" (id.as_uuid()) "/refund" } {
                (csrf_field(&viewer))
                label for="amount" { "Amount" }
                input #amount type="text" name="amount" inputmode="decimal" aria-describedby="amount-help";
                p #amount-help .help { "Empty: whatever is left of " (money(o.total)) "." }
                label for="reason" { "Reason" }
                input #reason type="text" name="reason";
                button type="submit" { "Refund" }
            }
        }
    };
    Ok(console_page(&viewer, &format!("Order {}", short(o.id.as_uuid())), body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RefundForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
}

/// `POST /admin/orders/{id}/refund` (admins).
pub async fn refund(
    State(state): State<AppState>,
    Staff(viewer, by): Staff,
    Path(id): Path<String>,
    Posted(form): Posted<RefundForm>,
) -> PageResult {
    admin_only(&viewer)?;
    let id = OrderId::from_uuid(parse_id(&id)?);
    let amount = match form.amount.trim() {
        "" => None,
        t => Some(parse_price(t).ok_or_else(|| {
            PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "amount: an amount such as 5.00",
            )
        })?),
    };
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    match state.payments.refund(by, id, amount, reason).await {
        Ok(_) => {
            Ok(Redirect::to(&format!("/admin/orders/{}?saved=1", id.as_uuid())).into_response())
        }
        Err(flashmart_app::payments::PaymentError::RefundPending) => {
            Ok(Redirect::to(&format!("/admin/orders/{}", id.as_uuid())).into_response())
        }
        Err(e) => Err(payment_error(e)),
    }
}

/// `/admin/users` (admins): every account and its role.
pub async fn users(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Query(params): Query<PageParams>,
) -> PageResult {
    admin_only(&viewer)?;
    let list = state
        .auth
        .list_users(PageRequest::new(params.page, Some(50)))
        .await
        .map_err(|e| PageError::internal(&e))?;
    let me = viewer.principal.map(|p| p.user_id);
    let body = html! {
        @if params.saved.is_some() { (notice("Role changed: that account's sessions have ended.")) }
        div.scroll { table {
            thead { tr { th scope="col" { "Name" } th scope="col" { "Email" } th scope="col" { "Role" } th scope="col" { "Since" } } }
            tbody { @for u in &list.items {
                tr {
                    td { (u.name.as_str()) } td { (u.email.as_str()) }
                    td {
                        @if Some(u.id) == me {
                            (u.role.as_str()) " (you)"
                        } @else {
                            form.qty method="post" action={ "/admin/users/" (u.id.as_uuid()) "/role" } {
                                (csrf_field(&viewer))
                                select name="role" aria-label={ "Role of " (u.email.as_str()) } {
                                    @for r in [Role::Customer, Role::Operator, Role::Admin] {
                                        option value=(r.as_str()) selected[u.role == r] { (r.as_str()) }
                                    }
                                }
                                button type="submit" { "Change role" }
                            }
                        }
                    }
                    td { (when(u.created_at)) }
                }
            } }
        } }
        (pager("/admin/users", list.page, list.total, 50))
    };
    Ok(console_page(&viewer, "Users", body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    role: String,
}

/// `POST /admin/users/{id}/role` (admins): the account's sessions end with it.
pub async fn set_role(
    State(state): State<AppState>,
    Staff(viewer, _): Staff,
    Path(id): Path<String>,
    Posted(form): Posted<RoleForm>,
) -> PageResult {
    admin_only(&viewer)?;
    let Some(admin) = viewer.principal else {
        return Err(PageError::forbidden("Only admins may do this."));
    };
    let role: Role = form
        .role
        .parse()
        .map_err(|e: flashmart_domain::RoleError| {
            PageError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        })?;
    let user = flashmart_domain::UserId::from_uuid(parse_id(&id)?);
    match state.auth.set_role(&admin, user, role).await {
        Ok(_) => Ok(Redirect::to("/admin/users?saved=1").into_response()),
        Err(flashmart_app::auth::AuthError::Store(flashmart_app::StoreError::NotFound)) => {
            Err(PageError::not_found())
        }
        Err(e @ flashmart_app::auth::AuthError::OwnRole) => {
            Err(PageError::new(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err(PageError::internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_from_the_exposition() {
        let text = "# TYPE flash_sale_reservations_total counter\n\
                    flash_sale_reservations_total{result=\"reserved\"} 12\n\
                    flash_sale_reservations_total{result=\"sold_out\"} 3\n\
                    other_total 5\n";
        let r = reservation_results(text);
        assert_eq!(r.get("reserved"), Some(&12.0));
        assert_eq!(r.get("sold_out"), Some(&3.0));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn datetime_local_is_utc() {
        let t = parse_utc("2026-12-05T10:30").map(local_value);
        assert_eq!(t.as_deref(), Some("2026-12-05T10:30"));
        assert!(parse_utc("tomorrow").is_none());
    }
}
