//! Extractors whose failures answer in the envelope: JSON bodies (with per-field details on a
//! shape error), query strings, path parameters, the caller's identity and role, and the client
//! address used for rate limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use flashmart_app::FieldError;
use flashmart_app::auth::{AuthService, Principal};
use flashmart_domain::Role;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body. Malformed JSON is a 400; JSON of the wrong shape is a 422 naming the
/// field; a body over the limit is a 413; a non-JSON content type is a 415.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else {
                ApiError::bad_request("could not read the request body")
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

fn is_json(content_type: Option<&axum::http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.len() > 5
                    && mime[..mime.len() - 5].starts_with("application/")
                    && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match parse_json_as_sent(bytes) {
        // JSON has one number type: `3.0` is the integer 3 to JSON Schema, so a body that says
        // it for an integer field is read again with integral floats as integers. Only bodies
        // that failed pay for the second reading.
        Err(first) => match integral_floats_as_integers(bytes) {
            Some(normal) => parse_json_as_sent(&normal).map_err(|_| first),
            None => Err(first),
        },
        ok => ok,
    }
}

/// `bytes` with every float that is a whole number within `i64` written as an integer, or
/// `None` when there is none (or the body is no JSON at all).
fn integral_floats_as_integers(bytes: &[u8]) -> Option<Vec<u8>> {
    fn walk(v: &mut serde_json::Value, changed: &mut bool) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                if let Some(f) = n.as_f64()
                    && f.fract() == 0.0
                    && (-9.2e18..=9.2e18).contains(&f)
                {
                    // In range and whole, so the conversion is exact.
                    #[allow(clippy::cast_possible_truncation)]
                    let i = f as i64;
                    *v = serde_json::Value::from(i);
                    *changed = true;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, changed)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|i| walk(i, changed)),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let mut changed = false;
    walk(&mut value, &mut changed);
    changed.then(|| serde_json::to_vec(&value).ok()).flatten()
}

fn parse_json_as_sent<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path copies every key read; only a body that fails is read again to say
    // where.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // A shape error can be reported before a syntax error further on ("{} trailing"):
        // only well-formed JSON counts as a validation failure.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        match inner.classify() {
            serde_json::error::Category::Data if well_formed => {
                let message = inner.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_owned();
                let field = if path == "." {
                    missing_field_name(&message).unwrap_or_else(|| "body".to_owned())
                } else {
                    path
                };
                ApiError::validation(vec![FieldError::new(field, message)])
            }
            _ => ApiError::bad_request(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// serde reports a missing field at the parent's path with the name only in the message.
fn missing_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}

/// A query string; a value of the wrong type is a 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

/// Path parameters. One that does not parse (an id that is not a UUID) names nothing that could
/// exist, so it is a 404.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::not_found()),
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub(crate) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The authenticated caller, proven by a bearer access token. Reads no database row.
#[derive(Debug, Clone, Copy)]
pub struct Auth(pub Principal);

impl<S> FromRequestParts<S> for Auth
where
    S: Send + Sync,
    Arc<AuthService>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Verified already by the rate-limit middleware: no second check.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(Auth(*principal));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::token_invalid)?;
        let auth = Arc::<AuthService>::from_ref(state);
        Ok(Auth(auth.authenticate(token)?))
    }
}

/// Generates an extractor that lets through only callers whose role allows `$role`.
macro_rules! role_gate {
    ($(#[$meta:meta])* $name:ident, $role:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name(pub Principal);

        impl<S> FromRequestParts<S> for $name
        where
            S: Send + Sync,
            Arc<AuthService>: FromRef<S>,
        {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                let Auth(principal) = Auth::from_request_parts(parts, state).await?;
                if !principal.role.allows($role) {
                    return Err(ApiError::forbidden());
                }
                if Arc::<AuthService>::from_ref(state).lacks_required_second_factor(&principal) {
                    return Err(ApiError::status(
                        axum::http::StatusCode::FORBIDDEN,
                        "staff routes need a session opened with a second factor: enrol at \
                         /api/v1/auth/totp/enroll, then log in with totp_code",
                    ));
                }
                Ok(Self(principal))
            }
        }
    };
}

role_gate!(
    /// An admin.
    AdminAuth,
    Role::Admin
);
role_gate!(
    /// An operator or an admin: catalog and sales.
    OperatorAuth,
    Role::Operator
);

/// The address of the client, for per-IP limits: behind a trusted proxy, the one it forwarded
/// for; absent when the server was not given the connection info.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Resolved through the trusted proxies by the rate-limit middleware.
        if let Some(crate::limits::ResolvedClient(ip)) = parts.extensions.get() {
            return Ok(ClientIp(Some(*ip)));
        }
        Ok(ClientIp(
            ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
                .await
                .ok()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: u32,
    }

    #[test]
    fn json_errors_are_classified() {
        let err = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        let err = parse_json::<Body>(br#"{"items": []}"#).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        let err =
            parse_json::<Body>(br#"{"email": "x", "items": [{"quantity": -1}]}"#).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        let err = parse_json::<Body>(br#"{"email": "x", "items": []} trailing"#).unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        assert!(parse_json::<Body>(br#"{"email": "x", "items": []}"#).is_ok());
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(&HeaderValue::from_static(ok))), "{ok}");
        }
        for bad in ["text/plain", "application/jsonx", "+json"] {
            assert!(!is_json(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!is_json(None));
    }
}
