//! The pages' frame (the storefront's and the console's), the pieces every page uses (money,
//! times, countdowns, the anti-forgery field, notices), and the error page.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use flashmart_domain::Money;
use maud::{DOCTYPE, Markup, html};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::session::Viewer;

/// A page of the storefront.
pub fn shop_page(viewer: &Viewer, title: &str, body: Markup) -> Html<String> {
    frame(title, title, shop_nav(viewer), body)
}

/// A page of the operator console.
pub fn console_page(viewer: &Viewer, title: &str, body: Markup) -> Html<String> {
    frame(
        &format!("{title} · console"),
        title,
        console_nav(viewer),
        body,
    )
}

/// A whole page: `title` names the browser's tab, `heading` the page's one `h1`.
fn frame(title: &str, heading: &str, nav: Markup, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · flashmart" }
                    link rel="stylesheet" href="/assets/app.css";
                    link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
                    script src="/assets/app.js" defer {}
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    (nav)
                    main #main {
                        h1 { (heading) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

fn sign_out(viewer: &Viewer) -> Markup {
    html! {
        form.inline method="post" action="/signout" {
            (csrf_field(viewer))
            button.link type="submit" { "Sign out" }
        }
    }
}

fn shop_nav(viewer: &Viewer) -> Markup {
    html! {
        header.bar {
            a.brand href="/" { "flashmart" }
            nav aria-label="Shop" {
                ul {
                    li { a href="/" { "Shop" } }
                    li { a href="/flash-sales" { "Flash sales" } }
                    li { a href="/cart" { "Cart" } }
                    li { a href="/orders" { "Orders" } }
                    @if viewer.staff {
                        li { a href="/admin" { "Console" } }
                    }
                    @if viewer.signed_in() {
                        li { (sign_out(viewer)) }
                    } @else {
                        li { a href={ "/signin?next=" (crate::session::encode(&viewer.here)) } { "Sign in" } }
                        li { a href="/register" { "Register" } }
                    }
                }
            }
        }
    }
}

fn console_nav(viewer: &Viewer) -> Markup {
    html! {
        header.bar.console {
            a.brand href="/admin" { "flashmart console" }
            nav aria-label="Console" {
                ul {
                    li { a href="/admin/products" { "Products" } }
                    li { a href="/admin/coupons" { "Coupons" } }
                    li { a href="/admin/flash-sales" { "Flash sales" } }
                    li { a href="/admin/schedules" { "Schedules" } }
                    li { a href="/admin/orders" { "Orders" } }
                    @if viewer.is_admin() {
                        li { a href="/admin/users" { "Users" } }
                    }
                    li { a href="/" { "Shop" } }
                    @if viewer.signed_in() {
                        li { (sign_out(viewer)) }
                    }
                }
            }
        }
    }
}

/// The hidden field with this browser's anti-forgery token.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

pub fn money(m: Money) -> String {
    cents(m.cents(), m.currency().as_str())
}

pub fn cents(c: i64, currency: &str) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let c = c.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", c / 100, c % 100)
}

fn iso(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A moment, readable without script (UTC) and machine-readable.
pub fn when(t: OffsetDateTime) -> Markup {
    let text = format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    );
    html! { time datetime=(iso(t)) { (text) } }
}

/// A moment that counts down in the browser ("ends in 4:59"), and says `done` when it is past.
pub fn countdown(t: OffsetDateTime, prefix: &str, done: &str) -> Markup {
    html! {
        span.countdown data-countdown=(iso(t)) data-prefix=(prefix) data-done=(done) {
            (prefix) " " (when(t))
        }
    }
}

/// Previous and next links and where the reader is, when there is more than one page; `base` is
/// the list's URL, to which `page=N` is added.
pub fn pager(base: &str, page: u32, total: u64, per_page: u32) -> Markup {
    let pages = total.div_ceil(u64::from(per_page)).max(1);
    let current = u64::from(page);
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        @if pages > 1 {
            nav.pages aria-label="Pages" {
                @if current > 1 { a href={ (base) (sep) "page=" (current - 1) } rel="prev" { "Previous page" } }
                span { "Page " (current) " of " (pages) }
                @if current < pages { a href={ (base) (sep) "page=" (current + 1) } rel="next" { "Next page" } }
            }
        }
    }
}

/// What is wrong with a form, when anything is: `title`, then each problem.
pub fn errors_box(title: &str, errors: &[String]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div.problem role="alert" { p { (title) } ul { @for e in errors { li { (e) } } } }
        }
    }
}

pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

pub fn problem(text: &str) -> Markup {
    html! { p.problem role="alert" { (text) } }
}

/// An order's or a reservation's status as people read it.
pub fn status_label(status: &str) -> &str {
    match status {
        "pending_payment" => "awaiting payment",
        "partially_refunded" => "partially refunded",
        other => other,
    }
}

/// A page that went wrong, as a page (not the API's envelope).
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "There is nothing here.")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The shop cannot answer this just now; try again in a moment.",
        )
    }

    /// A failure of storage or the like: logged, and shown without its details.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(%err, "a page failed");
        Self::unavailable()
    }

    pub fn bad_form() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "This form is out of date or did not come from this shop. Go back, reload the page \
             and try again.",
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            s if s.is_server_error() => "Unavailable",
            _ => "Something is wrong",
        };
        let page = frame(
            title,
            title,
            html! {
                header.bar {
                    a.brand href="/" { "flashmart" }
                    nav aria-label="Shop" { ul {
                        li { a href="/" { "Shop" } }
                        li { a href="/flash-sales" { "Flash sales" } }
                        li { a href="/orders" { "Orders" } }
                    } }
                }
            },
            html! { (problem(&self.message)) p { a href="/" { "Back to the shop" } } },
        );
        (self.status, page).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;

/// Parses a price typed as `12`, `12.5` or `12.50` into cents.
pub fn parse_price(text: &str) -> Option<i64> {
    let text = text.trim().trim_start_matches('$');
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || whole.len() > 12
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_read_as_people_type_them() {
        assert_eq!(parse_price("12"), Some(1200));
        assert_eq!(parse_price("12.5"), Some(1250));
        assert_eq!(parse_price(" $0.99 "), Some(99));
        assert_eq!(parse_price(".5"), Some(50));
        for bad in ["", ".", "1.234", "-1", "1,50", "abc", "1e3"] {
            assert_eq!(parse_price(bad), None, "{bad}");
        }
    }
}
