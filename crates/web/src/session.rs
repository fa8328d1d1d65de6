//! The browser's session: the access and refresh tokens of an ordinary API session, kept in
//! httpOnly, SameSite=Strict cookies (Secure behind TLS) instead of in the page, so no script can
//! read them; an anti-forgery token every form carries (double-submit: the cookie and the form
//! field must match, and a cross-site form cannot read or send the cookie); and the headers every
//! page carries (a Content-Security-Policy without inline scripts or styles).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use flashmart_app::auth::{AuthService, Principal, TokenPair};
use flashmart_domain::Role;
use flashmart_http::AppState;

use crate::layout::PageError;

/// The access token (a JWT, as the API's bearer token).
pub const ACCESS_COOKIE: &str = "fm_session";
/// The refresh token; the session goes on with it once the access token has expired.
pub const REFRESH_COOKIE: &str = "fm_refresh";
/// The anti-forgery token every form repeats.
pub const CSRF_COOKIE: &str = "fm_csrf";

/// Scripts and styles from this server only, none inline; pictures from here or https (a
/// product's pictures may live on a CDN); forms post here only; no framing.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                            img-src 'self' https: data:; connect-src 'self'; form-action 'self'; \
                            frame-ancestors 'none'; base-uri 'none'";

/// Who is looking at the page, as the session middleware found them.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Option<Principal>,
    /// This browser's anti-forgery token.
    pub csrf: Arc<str>,
    /// The page came over TLS (a proxy said `X-Forwarded-Proto: https`; whoever sends it only
    /// makes the cookies stricter).
    pub secure: bool,
    /// The path and query the page was asked for (where sign-in sends the viewer back to).
    pub here: Arc<str>,
    /// Whether the viewer is staff with the second factor the configuration asks for.
    pub staff: bool,
}

impl Viewer {
    pub fn signed_in(&self) -> bool {
        self.principal.is_some()
    }

    pub fn is_admin(&self) -> bool {
        self.principal.is_some_and(|p| p.role == Role::Admin)
    }

    /// Whether a posted form's token is this browser's (compared in constant time; an empty one
    /// never is).
    pub fn genuine(&self, token: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), token.as_bytes());
        !a.is_empty()
            && a.len() == b.len()
            && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Sign-in, then back here.
    pub fn sign_in_first(&self) -> Response {
        Redirect::to(&format!("/signin?next={}", encode(&self.here))).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .unwrap_or_else(|| Viewer {
                principal: None,
                csrf: Arc::from(""),
                secure: false,
                here: Arc::from("/"),
                staff: false,
            }))
    }
}

/// A posted form (`application/x-www-form-urlencoded`) whose `csrf` field is this browser's
/// anti-forgery token: any other form is refused (403) before the handler runs.
#[derive(Debug)]
pub struct Posted<T>(pub T);

/// A form with nothing but its token (sign out, Pay, Cancel, Delete).
#[derive(Debug, serde::Deserialize)]
pub struct Nothing {}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            csrf: String,
        }
        let (mut parts, body) = req.into_parts();
        let Ok(viewer) = Viewer::from_request_parts(&mut parts, state).await;
        let bytes = axum::body::Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|e| {
                PageError::new(e.status(), "The form could not be read.").into_response()
            })?;
        let token: Token = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| PageError::bad_form().into_response())?;
        if !viewer.genuine(&token.csrf) {
            return Err(PageError::bad_form().into_response());
        }
        serde_urlencoded::from_bytes(&bytes)
            .map(Posted)
            .map_err(|e| {
                PageError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    format!("The form is not complete: {e}."),
                )
                .into_response()
            })
    }
}

/// A signed-in viewer; anyone else is sent to sign in first.
#[derive(Debug, Clone)]
pub struct Shopper(pub Viewer, pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Shopper {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(viewer) = Viewer::from_request_parts(parts, state).await;
        match viewer.principal {
            Some(p) => Ok(Self(viewer, p)),
            None => Err(viewer.sign_in_first()),
        }
    }
}

/// Percent-encodes `s` for a query string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `next` when it is a path on this site (never `//host` or a scheme), in visible ASCII (it goes
/// into a `Location` header as it is), else `fallback`.
pub fn local_path<'a>(next: Option<&'a str>, fallback: &'a str) -> &'a str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.len() <= 1024
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n
        }
        _ => fallback,
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v)
}

fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: httpOnly and SameSite=Strict always, Secure behind TLS; `max_age`
/// `Some(0)` deletes the cookie, `None` keeps it for the browser's session.
pub fn cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("fm_invalid=; Max-Age=0"))
}

/// The cookies of a freshly opened or refreshed session.
pub fn session_cookies(pair: &TokenPair, secure: bool) -> [HeaderValue; 2] {
    let ttl = u64::try_from(pair.expires_in.whole_seconds()).unwrap_or(0);
    [
        cookie(ACCESS_COOKIE, &pair.access_token, Some(ttl), secure),
        // Kept for the browser's session only: closing the browser signs out.
        cookie(REFRESH_COOKIE, &pair.refresh_token, None, secure),
    ]
}

/// The cookies that end the session in this browser.
pub fn ended_session(secure: bool) -> [HeaderValue; 2] {
    [
        cookie(ACCESS_COOKIE, "", Some(0), secure),
        cookie(REFRESH_COOKIE, "", Some(0), secure),
    ]
}

/// Refresh tokens are single-use with reuse detection: two requests of one page that both find
/// the access token expired (a page and its status poll) would present the same refresh token
/// twice, and the second would end the session. The rotation of one token is therefore done
/// once and its result kept for a minute for whoever presents the same token meanwhile.
#[derive(Debug, Default)]
pub struct Refresher {
    turn: tokio::sync::Mutex<()>,
    recent: parking_lot::Mutex<HashMap<String, (Instant, TokenPair)>>,
}

const REMEMBER_ROTATION: Duration = Duration::from_secs(60);

impl Refresher {
    async fn refresh(&self, auth: &AuthService, presented: &str) -> Option<TokenPair> {
        let _turn = self.turn.lock().await;
        {
            let mut recent = self.recent.lock();
            recent.retain(|_, (at, _)| at.elapsed() < REMEMBER_ROTATION);
            if let Some((_, pair)) = recent.get(presented) {
                return Some(pair.clone());
            }
        }
        let pair = auth.refresh(presented).await.ok()?;
        self.recent
            .lock()
            .insert(presented.to_owned(), (Instant::now(), pair.clone()));
        Some(pair)
    }
}

fn new_csrf() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The web pages' middleware: finds the viewer (refreshing an expired session), makes sure the
/// browser has an anti-forgery token, and adds the pages' security headers.
pub async fn middleware(
    State(state): State<AppState>,
    axum::Extension(refresher): axum::Extension<Arc<Refresher>>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let secure = is_https(headers);
    let mut set: Vec<HeaderValue> = Vec::new();
    let mut principal =
        cookie_value(headers, ACCESS_COOKIE).and_then(|token| state.auth.authenticate(token).ok());
    if principal.is_none()
        && let Some(refresh) = cookie_value(headers, REFRESH_COOKIE).map(str::to_owned)
    {
        match refresher.refresh(&state.auth, &refresh).await {
            Some(pair) => {
                principal = state.auth.authenticate(&pair.access_token).ok();
                set.extend(session_cookies(&pair, secure));
            }
            None => set.extend(ended_session(secure)),
        }
    }
    let csrf = match cookie_value(req.headers(), CSRF_COOKIE) {
        Some(token) if token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            token.to_owned()
        }
        _ => {
            let token = new_csrf();
            set.push(cookie(CSRF_COOKIE, &token, None, secure));
            token
        }
    };
    let staff = principal.is_some_and(|p| {
        p.role.allows(Role::Operator) && !state.auth.lacks_required_second_factor(&p)
    });
    let here = if req.method() == axum::http::Method::GET {
        req.uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned()
    } else {
        // A form posted without a session: back to the page the form was on, not to the
        // form's action (which answers only posts).
        referring_page(req.headers()).unwrap_or_else(|| "/".to_owned())
    };
    req.extensions_mut().insert(Viewer {
        principal,
        csrf: Arc::from(csrf),
        secure,
        here: Arc::from(here),
        staff,
    });
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    // A handler that opened or ended the session set its cookies itself.
    let handler_set_session = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .any(|v| v.as_bytes().starts_with(ACCESS_COOKIE.as_bytes()));
    for value in set {
        let session = value.as_bytes().starts_with(ACCESS_COOKIE.as_bytes())
            || value.as_bytes().starts_with(REFRESH_COOKIE.as_bytes());
        if !(session && handler_set_session) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    harden(headers);
    response
}

/// The path of the page on this site that `headers`' request came from (its `Referer`, when that
/// names the same host).
fn referring_page(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let referer = headers.get(header::REFERER)?.to_str().ok()?;
    let rest = referer
        .strip_prefix("https://")
        .or_else(|| referer.strip_prefix("http://"))?;
    let path = rest.strip_prefix(host)?;
    let path = if path.is_empty() { "/" } else { path };
    (local_path(Some(path), "") == path).then(|| path.to_owned())
}

/// The headers of every page.
pub fn harden(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path(Some("/orders/1?x=2"), "/"), "/orders/1?x=2");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "orders",
            "",
            "/caf\u{e9}",
            "/a b",
        ] {
            assert_eq!(local_path(Some(bad), "/"), "/", "{bad}");
        }
        assert_eq!(local_path(None, "/admin"), "/admin");
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = cookie(ACCESS_COOKIE, "t", Some(60), true);
        let c = c.to_str().unwrap_or_default();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        let plain = cookie(CSRF_COOKIE, "t", None, false);
        assert!(!plain.to_str().unwrap_or_default().contains("Secure"));
    }

    #[test]
    fn a_form_posted_without_a_session_goes_back_to_its_page() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example:8080"));
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://shop.example:8080/flash-sales/1?page=2"),
        );
        assert_eq!(referring_page(&h).as_deref(), Some("/flash-sales/1?page=2"));
        h.insert(
            header::REFERER,
            HeaderValue::from_static("https://elsewhere.example/x"),
        );
        assert_eq!(referring_page(&h), None);
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://shop.example:8080.evil/x"),
        );
        assert_eq!(referring_page(&h), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("/a b?c=d&e"), "/a%20b%3Fc%3Dd%26e");
    }
}
