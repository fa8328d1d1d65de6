//! The sandbox's own pages, served by the shop's server as a real provider serves its hosted
//! pay page: the amount, and Pay and Fail buttons. Each button is a form with an anti-forgery
//! token bound to the browser's nonce cookie (same-site only) and the payment; the pages allow
//! no script and no framing. The server mounts `pay_pages` beside its API; they are documented
//! in its OpenAPI document under `payments`.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::{Sandbox, SandboxError};

/// Where the buyer goes after paying (or failing): a path on the shop's own site, as a real
/// provider's return URL; anything else (another host, a scheme) is ignored.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReturnTo {
    /// A path on this site (`/orders/...`) to send the buyer back to.
    #[serde(rename = "return")]
    #[param(rename = "return")]
    return_to: Option<String>,
}

impl ReturnTo {
    fn path(&self) -> Option<&str> {
        self.return_to.as_deref().filter(|p| {
            // Visible ASCII only: it goes into a `Location` header as it is.
            p.starts_with('/')
                && !p.starts_with("//")
                && p.len() <= 512
                && p.bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'\\' | b'"' | b'<' | b'>'))
        })
    }

    /// `?return=...` for the page's own form actions.
    fn query(&self) -> String {
        self.path().map_or_else(String::new, |p| {
            let mut q = String::from("?return=");
            for b in p.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                    q.push(char::from(b));
                } else {
                    q.push_str(&format!("%{b:02X}"));
                }
            }
            q
        })
    }
}

/// The pay pages of `sandbox`, ready to be merged into any router.
pub fn pay_pages<S>(sandbox: Arc<Sandbox>) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    OpenApiRouter::new()
        .routes(routes!(sandbox_pay_page))
        .routes(routes!(sandbox_pay))
        .routes(routes!(sandbox_fail))
        .with_state(sandbox)
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:30rem;\
         margin:3rem auto;padding:0 1rem}}button{{font-size:1.1rem;padding:.6rem 1.4rem;\
         margin-right:.8rem}}.note{{color:#666}}</style></head><body>\
         <h1>{title}</h1>{body}<p class=\"note\">flashmart sandbox payment provider: no real \
         money moves.</p></body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn sandbox_error(e: SandboxError) -> Response {
    let (status, text) = match &e {
        SandboxError::NotFound => (StatusCode::NOT_FOUND, "No such payment."),
        SandboxError::NotOpen(_) | SandboxError::Expired => {
            (StatusCode::CONFLICT, "This payment can no longer be paid.")
        }
        SandboxError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "Try again shortly."),
    };
    if matches!(e, SandboxError::Storage(_)) {
        tracing::error!(err = %e, "sandbox storage failed");
    }
    let mut response = page("Payment", &format!("<p>{text}</p>")).into_response();
    *response.status_mut() = status;
    response
}

/// The cookie holding the browser's nonce for the pay page's anti-forgery tokens.
const NONCE_COOKIE: &str = "sandbox_nonce";
/// No script, no framing (against clickjacking the Pay button), forms only to this server.
const PAY_PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                            frame-ancestors 'none'; base-uri 'none'";

fn nonce_from(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, value)| *name == NONCE_COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_owned())
}

/// Headers every sandbox page carries.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAY_PAGE_CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The sandbox's pay page: the amount, and Pay and Fail buttons. Each button is a form with an
/// anti-forgery token bound to this browser's nonce cookie (same-site only) and the payment.
#[utoipa::path(get, path = "/sandbox/pay/{reference}", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference"), ReturnTo),
    responses(
        (status = 200, description = "HTML page", content_type = "text/html", body = String),
        (status = 404, description = "No such payment", content_type = "text/html", body = String),
    ))]
async fn sandbox_pay_page(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Query(back): Query<ReturnTo>,
) -> Response {
    let (nonce, fresh) = match nonce_from(&headers) {
        Some(nonce) => (nonce, false),
        None => (Uuid::new_v4().simple().to_string(), true),
    };
    let mut response = match sandbox.payment(&reference).await {
        Err(e) => sandbox_error(e),
        Ok(p) => {
            let amount = format!(
                "{}.{:02} {}",
                p.amount.cents() / 100,
                p.amount.cents() % 100,
                p.amount.currency()
            );
            let r = escape(&p.reference);
            let q = escape(&back.query());
            let body = if p.status == "open" {
                let token = escape(&sandbox.form_token(&nonce, &p.reference));
                format!(
                    "<p>{}</p><p><strong>{amount}</strong></p>\
                     <form method=\"post\" action=\"/sandbox/pay/{r}/pay{q}\" style=\"display:inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                     <button type=\"submit\">Pay</button></form>\
                     <form method=\"post\" action=\"/sandbox/pay/{r}/fail{q}\" style=\"display:inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                     <button type=\"submit\">Fail</button></form>",
                    escape(&p.description)
                )
            } else {
                let back_link = back.path().map_or_else(String::new, |path| {
                    format!("<p><a href=\"{}\">Back to the shop</a></p>", escape(path))
                });
                format!(
                    "<p>{}</p><p><strong>{amount}</strong>: {}.</p>{back_link}",
                    escape(&p.description),
                    escape(&p.status)
                )
            };
            page("Pay", &body).into_response()
        }
    };
    if fresh
        && let Ok(cookie) = HeaderValue::from_str(&format!(
            "{NONCE_COOKIE}={nonce}; Path=/sandbox/pay; HttpOnly; SameSite=Strict"
        ))
    {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    guarded(response)
}

/// What the pay page's forms post.
#[derive(Debug, Deserialize, ToSchema)]
struct PayForm {
    /// The page's anti-forgery token.
    #[serde(default)]
    csrf: String,
}

async fn complete(
    sandbox: Arc<Sandbox>,
    headers: &HeaderMap,
    reference: String,
    form: &PayForm,
    paid: bool,
    back: &ReturnTo,
) -> Response {
    let genuine = nonce_from(headers)
        .is_some_and(|nonce| sandbox.check_form_token(&nonce, &reference, &form.csrf));
    if !genuine {
        let mut response = page(
            "Payment",
            "<p>This form did not come from this payment's page. Open the page and press the \
             button again.</p>",
        )
        .into_response();
        *response.status_mut() = StatusCode::FORBIDDEN;
        return guarded(response);
    }
    match sandbox.complete(&reference, paid).await {
        Ok(()) => match back.path() {
            Some(path) => Redirect::to(path).into_response(),
            None => Redirect::to(&format!("/sandbox/pay/{}", escape(&reference))).into_response(),
        },
        Err(e) => guarded(sandbox_error(e)),
    }
}

/// The Pay button: the sandbox marks the payment paid and notifies the merchant. The form must
/// carry the page's token and the browser its nonce cookie (403 otherwise).
#[utoipa::path(post, path = "/sandbox/pay/{reference}/pay", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference"), ReturnTo),
    request_body(content = PayForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Back to the pay page, or to `return` when given"),
        (status = 403, description = "The form's token is missing or not this page's", content_type = "text/html", body = String),
        (status = 404, description = "No such payment", content_type = "text/html", body = String),
        (status = 409, description = "The payment is no longer open", content_type = "text/html", body = String),
    ))]
async fn sandbox_pay(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Query(back): Query<ReturnTo>,
    Form(form): Form<PayForm>,
) -> Response {
    complete(sandbox, &headers, reference, &form, true, &back).await
}

/// The Fail button: the sandbox marks the payment failed and notifies the merchant.
#[utoipa::path(post, path = "/sandbox/pay/{reference}/fail", tag = "payments",
    params(("reference" = String, Path, description = "The sandbox payment reference"), ReturnTo),
    request_body(content = PayForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Back to the pay page, or to `return` when given"),
        (status = 403, description = "The form's token is missing or not this page's", content_type = "text/html", body = String),
        (status = 404, description = "No such payment", content_type = "text/html", body = String),
        (status = 409, description = "The payment is no longer open", content_type = "text/html", body = String),
    ))]
async fn sandbox_fail(
    State(sandbox): State<Arc<Sandbox>>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    Query(back): Query<ReturnTo>,
    Form(form): Form<PayForm>,
) -> Response {
    complete(sandbox, &headers, reference, &form, false, &back).await
}
