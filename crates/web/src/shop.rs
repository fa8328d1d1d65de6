//! The storefront: the catalogue (search, categories, pages), a product, the cart, checkout with
//! a saved or a new address and a coupon, paying through the provider's page, and the buyer's
//! orders, each of which turns `paid` in the page when the provider's notification arrives.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use flashmart_app::FieldError;
use flashmart_app::catalog::{CatalogError, Product, ProductFilter};
use flashmart_app::page::PageRequest;
use flashmart_app::payments::PaymentError;
use flashmart_app::shop::model::{AddressRecord, OrderRecord};
use flashmart_app::shop::{CartProblem, ShipTo, ShopError};
use flashmart_domain::address::AddressFields;
use flashmart_domain::order::OrderStatus;
use flashmart_domain::{AddressId, OrderId, ProductId};
use flashmart_http::AppState;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::{
    PageError, PageResult, cents, countdown, csrf_field, money, pager, problem, shop_page,
    status_label, when,
};
use crate::session::{Nothing, Posted, Shopper, Viewer, encode};

const PER_PAGE: u32 = 12;

pub fn fields_text(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn shop_error(e: ShopError) -> PageError {
    match e {
        ShopError::Store(s) => PageError::internal(&s),
        ShopError::OrderNotFound | ShopError::ProductNotFound | ShopError::AddressNotFound => {
            PageError::not_found()
        }
        ShopError::Invalid(fields) => {
            PageError::new(StatusCode::UNPROCESSABLE_ENTITY, fields_text(&fields))
        }
        other => PageError::new(StatusCode::CONFLICT, other.to_string()),
    }
}

pub fn catalog_error(e: CatalogError) -> PageError {
    match e {
        CatalogError::NotFound => PageError::not_found(),
        CatalogError::Invalid(fields) => {
            PageError::new(StatusCode::UNPROCESSABLE_ENTITY, fields_text(&fields))
        }
        CatalogError::Busy => PageError::new(StatusCode::CONFLICT, "Busy; try again."),
        CatalogError::Store(s) => PageError::internal(&s),
    }
}

pub fn payment_error(e: PaymentError) -> PageError {
    match e {
        PaymentError::OrderNotFound | PaymentError::PaymentNotFound => PageError::not_found(),
        PaymentError::Store(s) => PageError::internal(&s),
        PaymentError::Provider(p) => PageError::internal(&p),
        other => PageError::new(StatusCode::CONFLICT, other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct CatalogParams {
    q: Option<String>,
    category: Option<String>,
    page: Option<u32>,
}

fn product_url(id: ProductId) -> String {
    format!("/products/{}", id.as_uuid())
}

fn stock_text(p: &Product) -> String {
    match p.stock {
        0 => "Out of stock".to_owned(),
        n if n <= 5 => format!("Only {n} left"),
        _ => "In stock".to_owned(),
    }
}

fn add_to_cart(viewer: &Viewer, p: &Product, with_quantity: bool) -> Markup {
    html! {
        form.add method="post" action="/cart" {
            (csrf_field(viewer))
            input type="hidden" name="product_id" value=(p.id.as_uuid());
            @if with_quantity {
                label for="quantity" { "Quantity" }
                input #quantity type="number" name="quantity" value="1" min="1" max="99" required;
            } @else {
                input type="hidden" name="quantity" value="1";
            }
            @if p.stock == 0 {
                button type="submit" disabled aria-label={ "Add " (p.name) " to cart (out of stock)" } { "Add to cart" }
            } @else {
                button type="submit" { "Add to cart" }
            }
        }
    }
}

/// `/`: the catalogue, searchable, by category, a page at a time.
pub async fn catalogue(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(params): Query<CatalogParams>,
) -> PageResult {
    let q = params.q.clone().unwrap_or_default();
    let category = params.category.clone().filter(|c| !c.is_empty());
    let filter = ProductFilter {
        q: Some(q.clone()).filter(|q| !q.trim().is_empty()),
        category: category.clone(),
        include_inactive: false,
    };
    let page = state
        .catalog
        .list(filter, PageRequest::new(params.page, Some(PER_PAGE)))
        .await
        .map_err(catalog_error)?;
    // The categories of what is on sale, from the first products.
    let mut categories: Vec<String> = state
        .catalog
        .list(ProductFilter::default(), PageRequest::new(None, Some(100)))
        .await
        .map_err(catalog_error)?
        .items
        .into_iter()
        .filter_map(|p| p.category)
        .collect();
    categories.sort();
    categories.dedup();
    let mut base = "/?".to_owned();
    if !q.is_empty() {
        base.push_str(&format!("q={}&", encode(&q)));
    }
    if let Some(c) = &category {
        base.push_str(&format!("category={}&", encode(c)));
    }
    let base = base.trim_end_matches(['&', '?']).to_owned();
    let base = if base.is_empty() {
        "/".to_owned()
    } else {
        base
    };
    let body = html! {
        form.search role="search" method="get" action="/" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(q);
            @if let Some(c) = &category { input type="hidden" name="category" value=(c); }
            button type="submit" { "Search" }
        }
        nav.categories aria-label="Categories" {
            ul {
                li { a href="/" aria-current=[category.is_none().then_some("page")] { "All" } }
                @for c in &categories {
                    li {
                        a href={ "/?category=" (encode(c)) }
                          aria-current=[(category.as_deref() == Some(c.as_str())).then_some("page")] { (c) }
                    }
                }
            }
        }
        @if page.items.is_empty() {
            p { "No products match." }
        } @else {
            p.count { (page.total) " products" }
            ul.cards {
                @for p in &page.items {
                    li.card {
                        @if let Some(img) = p.images.first() {
                            img src=(img) alt="" loading="lazy";
                        }
                        h2 { a href=(product_url(p.id)) { (p.name) } }
                        p.price { (money(p.price)) }
                        p.stock { (stock_text(p)) }
                        (add_to_cart(&viewer, p, false))
                    }
                }
            }
            (pager(&base, page.page, page.total, PER_PAGE))
        }
    };
    Ok(shop_page(&viewer, "Shop", body).into_response())
}

/// The id in `raw`, or the page is not found.
pub fn parse_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw).map_err(|_| PageError::not_found())
}

/// `/products/{id}`: one product with its pictures.
pub async fn product(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let id = ProductId::from_uuid(parse_id(&id)?);
    let p = state.catalog.get(id, false).await.map_err(catalog_error)?;
    let body = html! {
        div.product {
            @if !p.images.is_empty() {
                div.gallery {
                    @for (i, img) in p.images.iter().enumerate() {
                        img src=(img) alt={ (p.name) ", picture " (i + 1) };
                    }
                }
            }
            div {
                p.price { (money(p.price)) }
                p.stock { (stock_text(&p)) }
                @if let Some(c) = &p.category {
                    p { "Category: " a href={ "/?category=" (encode(c)) } { (c) } }
                }
                @if !p.description.is_empty() { p.description { (p.description) } }
                (add_to_cart(&viewer, &p, true))
            }
        }
    };
    Ok(shop_page(&viewer, &p.name, body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CartForm {
    product_id: String,
    quantity: Option<String>,
    #[serde(default)]
    remove: Option<String>,
}

/// `POST /cart`: adds a product (or sets a line's quantity, or removes it).
pub async fn change_cart(
    State(state): State<AppState>,
    Shopper(_, me): Shopper,
    Posted(form): Posted<CartForm>,
) -> PageResult {
    let product = ProductId::from_uuid(parse_id(&form.product_id)?);
    if form.remove.is_some() {
        return match state.shop.remove_cart_line(me.user_id, product).await {
            Ok(_) | Err(ShopError::CartLineNotFound) => Ok(Redirect::to("/cart").into_response()),
            Err(e) => Err(shop_error(e)),
        };
    }
    let quantity: i64 = form
        .quantity
        .as_deref()
        .unwrap_or("1")
        .trim()
        .parse()
        .map_err(|_| PageError::new(StatusCode::UNPROCESSABLE_ENTITY, "quantity: a number"))?;
    state
        .shop
        .set_cart_line(me.user_id, product, quantity)
        .await
        .map_err(shop_error)?;
    Ok(Redirect::to("/cart").into_response())
}

/// `/cart`: what is in the cart, priced from the catalogue now.
pub async fn cart(State(state): State<AppState>, Shopper(viewer, me): Shopper) -> PageResult {
    let cart = state.shop.cart(me.user_id).await.map_err(shop_error)?;
    let body = html! {
        @if cart.lines.is_empty() {
            p { "Your cart is empty. " a href="/" { "Browse the shop" } }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Product" } th scope="col" { "Quantity" } th scope="col" { "Total" } th scope="col" { span.sr { "Remove" } } } }
                tbody {
                    @for l in &cart.lines {
                        @let name = l.line.product.as_ref().map_or("(gone)", |p| p.name.as_str());
                        @let pid = l.line.product_id.as_uuid().to_string();
                        tr {
                            td { a href=(product_url(l.line.product_id)) { (name) }
                                @match l.problem {
                                    Some(CartProblem::Unavailable) => { br; span.problem { "no longer available" } }
                                    Some(CartProblem::OnlyLeft(n)) => { br; span.problem { "only " (n) " left" } }
                                    None => {}
                                }
                            }
                            td {
                                form.qty method="post" action="/cart" {
                                    (csrf_field(&viewer))
                                    input type="hidden" name="product_id" value=(pid);
                                    input type="number" name="quantity" min="1" max="99" value=(l.line.quantity)
                                        aria-label={ "Quantity of " (name) };
                                    button type="submit" { "Update" }
                                }
                            }
                            td { (l.line_total.map(money).unwrap_or_default()) }
                            td {
                                form method="post" action="/cart" {
                                    (csrf_field(&viewer))
                                    input type="hidden" name="product_id" value=(pid);
                                    button type="submit" name="remove" value="1" aria-label={ "Remove " (name) } { "Remove" }
                                }
                            }
                        }
                    }
                }
            } }
            @if let Some(s) = cart.subtotal { p.total { "Subtotal: " strong { (money(s)) } } }
            @if cart.ready {
                p { a.button href="/cart/checkout" { "Checkout" } }
            } @else {
                (problem("Some lines cannot be ordered as they are: change or remove them to check out."))
            }
        }
    };
    Ok(shop_page(&viewer, "Cart", body).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct CheckoutForm {
    /// `new`, or a saved address's id.
    #[serde(default)]
    ship_to: String,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    line1: String,
    #[serde(default)]
    line2: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    save: Option<String>,
    #[serde(default)]
    coupon: String,
}

fn address_line(a: &AddressRecord) -> String {
    let f = a.address.fields();
    format!(
        "{}, {}, {} {}, {}",
        f.recipient, f.line1, f.postal_code, f.city, f.country
    )
}

fn checkout_form(
    viewer: &Viewer,
    saved: &[AddressRecord],
    form: &CheckoutForm,
    error: Option<&str>,
) -> Markup {
    let chosen = if form.ship_to.is_empty() {
        saved
            .iter()
            .find(|a| a.is_default)
            .or(saved.first())
            .map_or_else(|| "new".to_owned(), |a| a.id.as_uuid().to_string())
    } else {
        form.ship_to.clone()
    };
    html! {
        @if let Some(e) = error { (problem(e)) }
        form.stack method="post" action="/cart/checkout" {
            (csrf_field(viewer))
            fieldset {
                legend { "Ship to" }
                @for a in saved {
                    @let id = a.id.as_uuid().to_string();
                    div.choice {
                        input type="radio" name="ship_to" id={ "a-" (id) } value=(id) checked[chosen == id];
                        label for={ "a-" (id) } { (address_line(a)) }
                    }
                }
                div.choice {
                    input #a-new type="radio" name="ship_to" value="new" checked[chosen == "new"];
                    label for="a-new" { "A new address" }
                }
                div.stack.new-address {
                    label for="recipient" { "Recipient" }
                    input #recipient type="text" name="recipient" autocomplete="name" value=(form.recipient);
                    label for="line1" { "Address line 1" }
                    input #line1 type="text" name="line1" autocomplete="address-line1" value=(form.line1);
                    label for="line2" { "Address line 2" }
                    input #line2 type="text" name="line2" autocomplete="address-line2" value=(form.line2);
                    label for="city" { "City" }
                    input #city type="text" name="city" autocomplete="address-level2" value=(form.city);
                    label for="region" { "Region" }
                    input #region type="text" name="region" autocomplete="address-level1" value=(form.region);
                    label for="postal_code" { "Postal code" }
                    input #postal_code type="text" name="postal_code" autocomplete="postal-code" value=(form.postal_code);
                    label for="country" { "Country" }
                    input #country type="text" name="country" autocomplete="country" maxlength="2"
                        aria-describedby="country-help" value=(form.country);
                    p #country-help .help { "Two letters, such as DE or US." }
                    div.choice {
                        input #save type="checkbox" name="save" value="1" checked[form.save.is_some()];
                        label for="save" { "Save this address" }
                    }
                }
            }
            label for="coupon" { "Coupon code" }
            input #coupon type="text" name="coupon" autocomplete="off" value=(form.coupon);
            button type="submit" { "Place order" }
        }
    }
}

fn cart_summary(cart: &flashmart_app::shop::CartView) -> Markup {
    html! {
        ul.summary {
            @for l in &cart.lines {
                li {
                    (l.line.quantity) " × " (l.line.product.as_ref().map_or("(gone)", |p| p.name.as_str()))
                    " — " (l.line_total.map(money).unwrap_or_default())
                }
            }
        }
        @if let Some(s) = cart.subtotal { p.total { "Subtotal: " strong { (money(s)) } } }
    }
}

/// `/cart/checkout`: the address and coupon form.
pub async fn checkout_page(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
) -> PageResult {
    let cart = state.shop.cart(me.user_id).await.map_err(shop_error)?;
    if cart.lines.is_empty() {
        return Ok(Redirect::to("/cart").into_response());
    }
    let saved = state.shop.addresses(me.user_id).await.map_err(shop_error)?;
    let body = html! {
        (cart_summary(&cart))
        (checkout_form(&viewer, &saved, &CheckoutForm::default(), None))
    };
    Ok(shop_page(&viewer, "Checkout", body).into_response())
}

fn optional(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// `POST /cart/checkout`: places the order, then shows it.
pub async fn checkout(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
    Posted(form): Posted<CheckoutForm>,
) -> PageResult {
    let again = async |error: String, status: StatusCode| -> PageResult {
        let cart = state.shop.cart(me.user_id).await.map_err(shop_error)?;
        let saved = state.shop.addresses(me.user_id).await.map_err(shop_error)?;
        let body = html! {
            (cart_summary(&cart))
            (checkout_form(&viewer, &saved, &form, Some(&error)))
        };
        Ok((status, shop_page(&viewer, "Checkout", body)).into_response())
    };
    let ship_to = if form.ship_to.is_empty() || form.ship_to == "new" {
        let fields = AddressFields {
            recipient: form.recipient.trim().to_owned(),
            line1: form.line1.trim().to_owned(),
            line2: optional(&form.line2),
            city: form.city.trim().to_owned(),
            region: optional(&form.region),
            postal_code: form.postal_code.trim().to_owned(),
            country: form.country.trim().to_ascii_uppercase(),
            phone: None,
        };
        if form.save.is_some() {
            match state.shop.add_address(me.user_id, fields, false).await {
                Ok(saved) => ShipTo::Saved(saved.id),
                Err(ShopError::Invalid(f)) => {
                    return again(fields_text(&f), StatusCode::UNPROCESSABLE_ENTITY).await;
                }
                Err(e) => return again(e.to_string(), StatusCode::CONFLICT).await,
            }
        } else {
            ShipTo::Given(fields)
        }
    } else {
        ShipTo::Saved(AddressId::from_uuid(parse_id(&form.ship_to)?))
    };
    let coupon = optional(&form.coupon);
    match state
        .shop
        .checkout(me.user_id, ship_to, coupon.as_deref())
        .await
    {
        Ok(order) => Ok(Redirect::to(&order_url(order.id)).into_response()),
        Err(ShopError::Store(e)) => Err(PageError::internal(&e)),
        Err(ShopError::Invalid(f)) => {
            again(fields_text(&f), StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(ShopError::EmptyCart) => Ok(Redirect::to("/cart").into_response()),
        Err(e) => again(e.to_string(), StatusCode::CONFLICT).await,
    }
}

pub fn order_url(id: OrderId) -> String {
    format!("/orders/{}", id.as_uuid())
}

#[derive(Debug, Deserialize)]
pub struct OrdersParams {
    page: Option<u32>,
}

/// `/orders`: the buyer's orders, newest first.
pub async fn orders(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
    Query(params): Query<OrdersParams>,
) -> PageResult {
    let page = state
        .shop
        .orders_of(me.user_id, None, PageRequest::new(params.page, Some(20)))
        .await
        .map_err(shop_error)?;
    let body = html! {
        @if page.items.is_empty() {
            p { "No orders yet. " a href="/" { "Browse the shop" } }
        } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Order" } th scope="col" { "Placed" } th scope="col" { "Total" } th scope="col" { "Status" } } }
                tbody {
                    @for o in &page.items {
                        tr {
                            td { a href=(order_url(o.id)) { (short(o.id.as_uuid())) } }
                            td { (when(o.created_at)) }
                            td { (money(o.total)) }
                            td { (status_label(o.status.as_str())) }
                        }
                    }
                }
            } }
            (pager("/orders", page.page, page.total, 20))
        }
    };
    Ok(shop_page(&viewer, "Orders", body).into_response())
}

/// The last eight hex digits of an id: enough to tell orders apart in a list (the first ones of
/// a UUIDv7 are its timestamp, the same for orders made in the same minute).
pub fn short(id: &Uuid) -> String {
    let s = id.simple().to_string();
    format!("#{}", &s[s.len() - 8..])
}

/// An order's lines, totals and address: what the buyer's and the console's pages both show.
pub fn order_details(o: &OrderRecord) -> Markup {
    let currency = o.total.currency().as_str().to_owned();
    html! {
        div.scroll { table {
            thead { tr { th scope="col" { "Item" } th scope="col" { "Quantity" } th scope="col" { "Price" } } }
            tbody {
                @for l in &o.lines {
                    tr { td { (l.name) } td { (l.quantity) } td { (cents(l.unit_price_cents, &currency)) } }
                }
            }
        } }
        dl.totals {
            dt { "Subtotal" } dd { (money(o.subtotal)) }
            @if o.discount.cents() != 0 {
                dt { "Discount" @if let Some(c) = &o.coupon_code { " (" (c) ")" } } dd { "-" (money(o.discount)) }
            }
            dt { "Total" } dd { strong { (money(o.total)) } }
            @if o.refunded.cents() != 0 { dt { "Refunded" } dd { (money(o.refunded)) } }
            dt { "Placed" } dd { (when(o.created_at)) }
            @if let Some(paid) = o.paid_at { dt { "Paid" } dd { (when(paid)) } }
        }
        @if let Some(a) = &o.shipping {
            @let f = a.fields();
            h2 { "Shipping to" }
            address {
                (f.recipient) br; (f.line1) br;
                @if let Some(l2) = &f.line2 { (l2) br; }
                (f.postal_code) " " (f.city) br;
                @if let Some(r) = &f.region { (r) br; }
                (f.country)
            }
        }
    }
}

/// `/orders/{id}`: one order; while it awaits payment, the Pay button and a countdown, and the
/// status follows the provider's notification without a reload.
pub async fn order(
    State(state): State<AppState>,
    Shopper(viewer, me): Shopper,
    Path(id): Path<String>,
) -> PageResult {
    let id = OrderId::from_uuid(parse_id(&id)?);
    let o = state
        .shop
        .order_of(me.user_id, id)
        .await
        .map_err(shop_error)?;
    let cancel = html! {
        form.inline method="post" action={ (order_url(o.id)) "/cancel" } {
            (csrf_field(&viewer))
            button.secondary type="submit" { "Cancel order" }
        }
    };
    let body = html! {
        (payment_status(&viewer, &o, "The time to pay is over.", cancel))
        (order_details(&o))
    };
    Ok(shop_page(&viewer, &format!("Order {}", short(o.id.as_uuid())), body).into_response())
}

/// An order's status, which follows the provider's notification in the page while the order
/// awaits payment, and then the time left to pay, Pay, and `more` (other buttons).
pub fn payment_status(viewer: &Viewer, o: &OrderRecord, over: &str, more: Markup) -> Markup {
    let pending = o.status == OrderStatus::PendingPayment;
    html! {
        p.status {
            "Status: "
            strong data-order-status data-watch=[pending.then(|| format!("{}/status", order_url(o.id)))] {
                (status_label(o.status.as_str()))
            }
        }
        @if pending {
            div data-pay {
                p.deadline { (countdown(o.expires_at, "Pay within", over)) }
                form.inline method="post" action={ (order_url(o.id)) "/pay" } {
                    (csrf_field(viewer))
                    button type="submit" { "Pay" }
                }
                (more)
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OrderStatusOut {
    status: &'static str,
    label: &'static str,
}

/// `/orders/{id}/status`: the order's status, which the order page asks for while it waits for
/// the payment.
pub async fn order_status(
    State(state): State<AppState>,
    Shopper(_, me): Shopper,
    Path(id): Path<String>,
) -> Result<Json<OrderStatusOut>, PageError> {
    let id = OrderId::from_uuid(parse_id(&id)?);
    let o = state
        .shop
        .order_of(me.user_id, id)
        .await
        .map_err(shop_error)?;
    let status = o.status.as_str();
    Ok(Json(OrderStatusOut {
        status,
        label: status_label(status),
    }))
}

/// `POST /orders/{id}/pay`: opens a payment and sends the buyer to the provider's page, which
/// sends them back to the order.
pub async fn pay(
    State(state): State<AppState>,
    Shopper(_, me): Shopper,
    Path(id): Path<String>,
    Posted(Nothing {}): Posted<Nothing>,
) -> PageResult {
    let id = OrderId::from_uuid(parse_id(&id)?);
    let payment = state
        .payments
        .start(me.user_id, id)
        .await
        .map_err(payment_error)?;
    let back = order_url(id);
    let sep = if payment.pay_url.contains('?') {
        '&'
    } else {
        '?'
    };
    Ok(Redirect::to(&format!("{}{sep}return={}", payment.pay_url, encode(&back))).into_response())
}

/// `POST /orders/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Shopper(_, me): Shopper,
    Path(id): Path<String>,
    Posted(Nothing {}): Posted<Nothing>,
) -> PageResult {
    let id = OrderId::from_uuid(parse_id(&id)?);
    state
        .shop
        .cancel(me.user_id, id)
        .await
        .map_err(shop_error)?;
    Ok(Redirect::to(&order_url(id)).into_response())
}
