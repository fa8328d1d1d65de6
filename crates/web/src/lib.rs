//! flashmart's web pages, served by the same binary as the API: the storefront at `/` and the
//! operator console at `/admin`. Pages are rendered on the server (maud, checked at compile
//! time) by calling the same use cases as the JSON API; every form works without JavaScript, and
//! one small script (`assets/app.js`) moves what must move by itself: countdowns, a sale's stock
//! from its event stream, an order turning paid, and the console's live view of a sale.

mod account;
mod console;
mod layout;
mod sales;
pub mod session;
mod shop;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use flashmart_http::AppState;

pub use session::{ACCESS_COOKIE, CSRF_COOKIE, PAGE_CSP, REFRESH_COOKIE};

/// Every page and asset, with the session middleware. `upload_max_bytes` bounds each picture a
/// product form uploads.
pub fn routes(state: AppState, upload_max_bytes: usize) -> Router<AppState> {
    let product_form_limit = upload_max_bytes
        .saturating_mul(console::MAX_FORM_IMAGES)
        .saturating_add(64 * 1024);
    let pages = Router::new()
        .route("/", get(shop::catalogue))
        .route("/products/{id}", get(shop::product))
        .route("/cart", get(shop::cart).post(shop::change_cart))
        .route(
            "/cart/checkout",
            get(shop::checkout_page).post(shop::checkout),
        )
        .route("/orders", get(shop::orders))
        .route("/orders/{id}", get(shop::order))
        .route("/orders/{id}/status", get(shop::order_status))
        .route("/orders/{id}/pay", post(shop::pay))
        .route("/orders/{id}/cancel", post(shop::cancel))
        .route(
            "/register",
            get(account::register_page).post(account::register),
        )
        .route("/signin", get(account::sign_in_page).post(account::sign_in))
        .route("/signout", post(account::sign_out))
        .route("/flash-sales", get(sales::list))
        .route("/flash-sales/{id}", get(sales::sale))
        .route("/flash-sales/{id}/reserve", post(sales::reserve))
        .route("/reservations/{id}", get(sales::reservation))
        .route("/admin", get(console::home))
        .route("/admin/products", get(console::products))
        .route(
            "/admin/products/new",
            get(console::new_product_page)
                .post(console::create_product)
                .layer(DefaultBodyLimit::max(product_form_limit)),
        )
        .route(
            "/admin/products/{id}",
            get(console::product_page)
                .post(console::update_product)
                .layer(DefaultBodyLimit::max(product_form_limit)),
        )
        .route("/admin/products/{id}/delete", post(console::delete_product))
        .route(
            "/admin/coupons",
            get(console::coupons).post(console::create_coupon),
        )
        .route("/admin/flash-sales", get(console::sales))
        .route(
            "/admin/flash-sales/new",
            get(console::new_sale_page).post(console::create_sale),
        )
        .route("/admin/flash-sales/{id}", get(console::sale_live))
        .route("/admin/flash-sales/{id}/live", get(console::sale_live_data))
        .route(
            "/admin/schedules",
            get(console::schedules).post(console::create_schedule),
        )
        .route("/admin/orders", get(console::orders))
        .route("/admin/orders/{id}", get(console::order))
        .route("/admin/orders/{id}/refund", post(console::refund))
        .route("/admin/users", get(console::users))
        .route("/admin/users/{id}/role", post(console::set_role))
        .layer(axum::middleware::from_fn_with_state(
            state,
            session::middleware,
        ))
        .layer(axum::Extension(Arc::new(session::Refresher::default())));
    Router::new()
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/assets/icon.svg", get(icon))
        .merge(pages)
}

/// What no route matched: a page for a browser asking for one outside the API, the API's
/// envelope (404) for anyone else.
pub async fn not_found(
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> axum::response::Response {
    let wants_page = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let api = ["/api/", "/sandbox/", "/uploads/", "/images/"]
        .iter()
        .any(|p| uri.path().starts_with(p));
    if wants_page && !api {
        let mut response = layout::PageError::not_found().into_response();
        session::harden(response.headers_mut());
        response
    } else {
        flashmart_http::ApiError::status(axum::http::StatusCode::NOT_FOUND, "no such route")
            .into_response()
    }
}

const APP_CSS: &str = include_str!("../assets/app.css");
const APP_JS: &str = include_str!("../assets/app.js");
const ICON_SVG: &str = include_str!("../assets/icon.svg");

fn asset(content_type: &'static str, body: &'static str) -> axum::response::Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Built into the binary: the same for as long as the process runs.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn css() -> axum::response::Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn js() -> axum::response::Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn icon() -> axum::response::Response {
    asset("image/svg+xml", ICON_SVG)
}
