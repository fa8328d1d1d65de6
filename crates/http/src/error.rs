//! `ApiError`: every failure a handler or extractor can produce, mapped to an HTTP status and a
//! stable numeric code (the table in docs/API.md, "Error codes"). Server-side failures are
//! opaque to the client; their cause travels to the request middleware in a response extension
//! and is logged there, once, with the trace id.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashmart_app::auth::AuthError;
use flashmart_app::catalog::CatalogError;
use flashmart_app::flash_sale::SaleError;
use flashmart_app::payments::{PaymentError, ProviderError};
use flashmart_app::shop::ShopError;
use flashmart_app::uploads::UploadError;
use flashmart_app::{FieldError, StoreError};

use serde::Serialize;

use crate::envelope::{FieldIssue, TraceId, json_response};

/// The stable codes of the API contract.
pub mod codes {
    pub const EMAIL_TAKEN: u32 = 10001;
    pub const BAD_CREDENTIALS: u32 = 10002;
    pub const TOKEN_INVALID: u32 = 10003;
    pub const SESSION_REVOKED: u32 = 10004;
    pub const WEAK_PASSWORD: u32 = 10005;
    pub const SECOND_FACTOR_REQUIRED: u32 = 10006;
    pub const SECOND_FACTOR_WRONG: u32 = 10007;
    pub const SECOND_FACTOR_ON: u32 = 10008;
    pub const NO_ENROLLMENT: u32 = 10009;
    pub const ADDRESS_NOT_FOUND: u32 = 10010;
    pub const PRODUCT_NOT_FOUND: u32 = 20001;
    pub const ORDER_NOT_FOUND: u32 = 30001;
    pub const ORDER_NOT_CANCELLABLE: u32 = 30002;
    pub const TOO_MANY_OPEN_ORDERS: u32 = 30003;
    pub const COUPON_NOT_FOUND: u32 = 30010;
    pub const COUPON_REFUSED: u32 = 30011;
    pub const PAYMENT_NOT_FOUND: u32 = 40001;
    pub const NOTIFICATION_REFUSED: u32 = 40002;
    pub const AMOUNT_MISMATCH: u32 = 40003;
    pub const NOT_PAYABLE: u32 = 40004;
    pub const REFUND_REFUSED: u32 = 40005;
    pub const PROVIDER_REFUSED: u32 = 40006;
    pub const REFUND_IN_PROGRESS: u32 = 40007;
    pub const REFUND_PENDING: u32 = 40008;
    pub const CART_LINE_NOT_FOUND: u32 = 50001;
    pub const CART_EMPTY: u32 = 50002;
    pub const OUT_OF_STOCK: u32 = 50003;
    pub const PRODUCT_UNAVAILABLE: u32 = 50004;
    pub const MIXED_CURRENCIES: u32 = 50005;
    pub const TOO_MANY_UNITS: u32 = 50006;
    pub const UPLOAD_TOO_LARGE: u32 = 70001;
    pub const UPLOAD_TYPE: u32 = 70002;
    pub const UPLOAD_MISSING: u32 = 70003;
    pub const SALE_NOT_FOUND: u32 = 60001;
    pub const SALE_NOT_STARTED: u32 = 60002;
    pub const SALE_ENDED: u32 = 60003;
    pub const SOLD_OUT: u32 = 60004;
    pub const LIMIT_REACHED: u32 = 60005;
    pub const IDEMPOTENCY_KEY_REUSED: u32 = 60006;
    pub const ITEM_NOT_FOUND: u32 = 60007;
    pub const RESERVATION_NOT_FOUND: u32 = 60008;
    pub const RESERVATION_EXPIRED: u32 = 60009;
    pub const PRODUCT_SHORT: u32 = 60010;
    pub const TOO_MANY_KEYS: u32 = 60011;
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: Cow<'static, str>,
    details: Vec<FieldError>,
    retry_after_secs: Option<u64>,
    /// What went wrong inside, for the log; never sent to the client.
    cause: Option<String>,
}

/// The cause of a server error, handed from `IntoResponse` to the middleware that logs it.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub Arc<str>);

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
            cause: None,
        }
    }

    /// A generic error whose code is its HTTP status.
    pub fn status(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(status, u32::from(status.as_u16()), message)
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::status(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found() -> Self {
        Self::status(StatusCode::NOT_FOUND, "not found")
    }

    pub fn forbidden() -> Self {
        Self::status(StatusCode::FORBIDDEN, "forbidden")
    }

    pub fn validation(details: Vec<FieldError>) -> Self {
        Self::status(StatusCode::UNPROCESSABLE_ENTITY, "validation failed").with_details(details)
    }

    pub fn token_invalid() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_INVALID,
            "token missing, invalid or expired",
        )
    }

    pub fn payload_too_large() -> Self {
        Self::status(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::status(StatusCode::TOO_MANY_REQUESTS, "too many requests")
        }
    }

    /// A failure on our side: the client sees only "internal error" and the trace id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::status(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::status(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
        }
    }

    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> u32 {
        self.code
    }
}

/// What `ErrorEnvelope` describes, as written.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u32,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<FieldIssue>>,
    trace_id: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = TraceId::current();
        let details = (!self.details.is_empty()).then(|| {
            self.details
                .into_iter()
                .map(|d| FieldIssue {
                    field: d.field.into_owned(),
                    message: d.message,
                })
                .collect()
        });
        // `ErrorEnvelope`'s fields, borrowed: a refusal (a sold-out answer, say) copies neither
        // its message nor the trace id on the way out.
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
            details,
            trace_id: trace_id.as_str(),
        };
        let mut bytes = Vec::with_capacity(128);
        if serde_json::to_writer(&mut bytes, &body).is_err() {
            bytes = br#"{"code":500,"message":"internal error","trace_id":""}"#.to_vec();
        }
        let mut response = json_response(self.status, bytes);
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause.into()));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::not_found(),
            StoreError::Unavailable(_) => Self::unavailable(err),
            StoreError::Conflict { .. } | StoreError::Other(_) => Self::internal(err),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::EmailTaken => Self::new(
                StatusCode::CONFLICT,
                codes::EMAIL_TAKEN,
                "email already registered",
            ),
            AuthError::BadCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                codes::BAD_CREDENTIALS,
                "invalid email or password",
            ),
            AuthError::InvalidToken => Self::token_invalid(),
            AuthError::SessionRevoked => Self::new(
                StatusCode::UNAUTHORIZED,
                codes::SESSION_REVOKED,
                "refresh token reused or session revoked",
            ),
            AuthError::WeakPassword(details) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::WEAK_PASSWORD,
                "password too weak",
            )
            .with_details(details),
            AuthError::Invalid(details) => Self::validation(details),
            AuthError::RateLimited(retry) => Self::too_many_requests(retry.as_secs_ceil()),
            e @ AuthError::SecondFactorRequired => Self::new(
                StatusCode::UNAUTHORIZED,
                codes::SECOND_FACTOR_REQUIRED,
                e.to_string(),
            ),
            e @ AuthError::SecondFactorWrong => Self::new(
                StatusCode::UNAUTHORIZED,
                codes::SECOND_FACTOR_WRONG,
                e.to_string(),
            ),
            e @ AuthError::SecondFactorOn => {
                Self::new(StatusCode::CONFLICT, codes::SECOND_FACTOR_ON, e.to_string())
            }
            e @ AuthError::NoEnrollment => {
                Self::new(StatusCode::CONFLICT, codes::NO_ENROLLMENT, e.to_string())
            }
            e @ AuthError::OwnRole => Self::status(StatusCode::CONFLICT, e.to_string()),
            AuthError::Store(e) => e.into(),
            AuthError::Hash(e) => Self::internal(e),
            AuthError::Signing(e) => Self::internal(e),
        }
    }
}

impl From<SaleError> for ApiError {
    fn from(err: SaleError) -> Self {
        use StatusCode as S;
        match err {
            SaleError::SaleNotFound => {
                Self::new(S::NOT_FOUND, codes::SALE_NOT_FOUND, "flash sale not found")
            }
            SaleError::NotStarted => Self::new(
                S::CONFLICT,
                codes::SALE_NOT_STARTED,
                "the sale has not started",
            ),
            SaleError::Ended => Self::new(S::CONFLICT, codes::SALE_ENDED, "the sale has ended"),
            SaleError::SoldOut => Self::new(S::CONFLICT, codes::SOLD_OUT, "sold out"),
            SaleError::LimitReached => {
                Self::new(S::CONFLICT, codes::LIMIT_REACHED, "per-user limit reached")
            }
            SaleError::KeyReused => Self::new(
                S::UNPROCESSABLE_ENTITY,
                codes::IDEMPOTENCY_KEY_REUSED,
                "idempotency key reused with another request",
            ),
            SaleError::KeyInProgress => Self::status(
                S::CONFLICT,
                "a request with this Idempotency-Key is still in progress; retry shortly",
            ),
            SaleError::TooManyKeys => Self::new(
                S::TOO_MANY_REQUESTS,
                codes::TOO_MANY_KEYS,
                "too many Idempotency-Keys in use: reuse one, or wait until one is a day old",
            ),
            SaleError::ItemNotFound => {
                Self::new(S::NOT_FOUND, codes::ITEM_NOT_FOUND, "item not found")
            }
            SaleError::ReservationNotFound => Self::new(
                S::NOT_FOUND,
                codes::RESERVATION_NOT_FOUND,
                "reservation not found",
            ),
            SaleError::ReservationExpired => Self::new(
                S::CONFLICT,
                codes::RESERVATION_EXPIRED,
                "reservation expired",
            ),
            SaleError::Invalid(details) => Self::validation(details),
            e @ SaleError::ScheduleNameTaken => Self::status(S::CONFLICT, e.to_string()),
            e @ SaleError::ProductShort { .. } => {
                Self::new(S::CONFLICT, codes::PRODUCT_SHORT, e.to_string())
            }
            SaleError::Unavailable(cause) => Self::unavailable(cause),
            SaleError::Store(e) => match e.as_ref() {
                StoreError::NotFound => Self::not_found(),
                StoreError::Unavailable(_) => Self::unavailable(e),
                _ => Self::internal(e),
            },
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        match err {
            CatalogError::NotFound => Self::new(
                StatusCode::NOT_FOUND,
                codes::PRODUCT_NOT_FOUND,
                "product not found",
            ),
            CatalogError::Invalid(details) => Self::validation(details),
            CatalogError::Busy => Self::status(
                StatusCode::CONFLICT,
                "the product kept changing while it was edited; try again",
            ),
            CatalogError::Store(e) => e.into(),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(err: UploadError) -> Self {
        match err {
            UploadError::TooLarge(max) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::UPLOAD_TOO_LARGE,
                format!("the file is larger than {max} bytes"),
            ),
            UploadError::UnsupportedType => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UPLOAD_TYPE,
                "not a JPEG, PNG, GIF or WebP image",
            ),
            UploadError::Empty => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                codes::UPLOAD_MISSING,
                "the file is empty",
            ),
            UploadError::Io(e) => Self::internal(e),
        }
    }
}

impl From<ShopError> for ApiError {
    fn from(err: ShopError) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        match err {
            ShopError::AddressNotFound => {
                Self::new(S::NOT_FOUND, codes::ADDRESS_NOT_FOUND, message)
            }
            ShopError::ProductNotFound => {
                Self::new(S::NOT_FOUND, codes::PRODUCT_NOT_FOUND, message)
            }
            ShopError::CartLineNotFound => {
                Self::new(S::NOT_FOUND, codes::CART_LINE_NOT_FOUND, message)
            }
            // The cart's state, not the request, stands in the way.
            ShopError::EmptyCart => Self::new(S::CONFLICT, codes::CART_EMPTY, message),
            ShopError::Unavailable { product_id, .. } => {
                Self::new(S::CONFLICT, codes::PRODUCT_UNAVAILABLE, message.clone()).with_details(
                    vec![FieldError::new(format!("items.{product_id}"), message)],
                )
            }
            ShopError::OutOfStock { product_id, .. } => {
                Self::new(S::CONFLICT, codes::OUT_OF_STOCK, message.clone()).with_details(vec![
                    FieldError::new(format!("items.{product_id}"), message),
                ])
            }
            ShopError::MixedCurrencies => {
                Self::new(S::UNPROCESSABLE_ENTITY, codes::MIXED_CURRENCIES, message)
            }
            ShopError::CouponNotFound => Self::new(S::NOT_FOUND, codes::COUPON_NOT_FOUND, message),
            ShopError::Coupon(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, codes::COUPON_REFUSED, message)
            }
            ShopError::OrderNotFound => Self::new(S::NOT_FOUND, codes::ORDER_NOT_FOUND, message),
            ShopError::NotCancellable(_) => {
                Self::new(S::CONFLICT, codes::ORDER_NOT_CANCELLABLE, message)
            }
            ShopError::Invalid(details) => Self::validation(details),
            ShopError::Conflict(m) => Self::status(S::CONFLICT, m),
            ShopError::TooManyOpenOrders(_) => {
                Self::new(S::CONFLICT, codes::TOO_MANY_OPEN_ORDERS, message)
            }
            ShopError::TooManyUnits { .. } => {
                Self::new(S::CONFLICT, codes::TOO_MANY_UNITS, message)
            }
            ShopError::Store(e) => e.into(),
        }
    }
}

impl From<PaymentError> for ApiError {
    fn from(err: PaymentError) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        match err {
            PaymentError::OrderNotFound => Self::new(S::NOT_FOUND, codes::ORDER_NOT_FOUND, message),
            PaymentError::PaymentNotFound => {
                Self::new(S::NOT_FOUND, codes::PAYMENT_NOT_FOUND, message)
            }
            PaymentError::NotPayable(_) => Self::new(S::CONFLICT, codes::NOT_PAYABLE, message),
            // The sender could not prove it is the provider: unauthenticated.
            PaymentError::Notify(_) => {
                Self::new(S::UNAUTHORIZED, codes::NOTIFICATION_REFUSED, message)
            }
            PaymentError::AmountMismatch => {
                Self::new(S::BAD_REQUEST, codes::AMOUNT_MISMATCH, message)
            }
            PaymentError::Refund(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, codes::REFUND_REFUSED, message)
            }
            PaymentError::RefundRace => Self::status(S::CONFLICT, message),
            PaymentError::RefundInProgress => {
                Self::new(S::CONFLICT, codes::REFUND_IN_PROGRESS, message)
            }
            PaymentError::RefundPending => {
                Self::new(S::SERVICE_UNAVAILABLE, codes::REFUND_PENDING, message)
            }
            PaymentError::Provider(ProviderError::Refused(_)) => {
                Self::new(S::CONFLICT, codes::PROVIDER_REFUSED, message)
            }
            PaymentError::Provider(e @ ProviderError::Unavailable(_)) => Self::unavailable(e),
            PaymentError::Store(e) => e.into(),
        }
    }
}
