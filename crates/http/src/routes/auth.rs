//! Registration, login, token refresh, logout and password change.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::auth::{AuthService, Registration, TokenPair};
use flashmart_domain::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, created, ok};
use crate::error::ApiError;
use crate::extract::{Auth, ClientIp, Json};
use crate::state::AppState;
use crate::views::{Empty, UserView};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_user))
        .routes(routes!(login))
        .routes(routes!(refresh_tokens))
        .routes(routes!(logout))
        .routes(routes!(change_password))
        .routes(routes!(totp_enroll))
        .routes(routes!(totp_confirm))
}

/// Fields other than these (a `role`, an `id`) are ignored: a new account is always a customer.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// At least 8 characters, and not the email address.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
}

/// Creates a customer account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = Envelope<UserView>),
        (status = 409, description = "10001: email already registered", body = ErrorEnvelope),
        (status = 422, description = "Invalid field, or 10005: password too weak", body = ErrorEnvelope),
    ))]
pub async fn register_user(
    State(auth): State<Arc<AuthService>>,
    Json(body): Json<RegisterRequest>,
) -> Result<Reply<UserView>, ApiError> {
    let registration = Registration::parse(&body.email, body.password, &body.name)?;
    let user = auth.register(registration, Role::Customer).await?;
    Ok(created(user.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The current code of the account's authenticator app, or one of its recovery codes;
    /// needed once the account has a second factor.
    pub totp_code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// A JWT for `Authorization: Bearer …`.
    pub access_token: String,
    /// Opaque; exchange it at `/auth/refresh`. Each one works once.
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

impl From<TokenPair> for TokenView {
    fn from(pair: TokenPair) -> Self {
        Self {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer",
            expires_in: pair.expires_in.whole_seconds(),
        }
    }
}

/// Opens a session. Failed attempts are limited per (email, client address), per client
/// address and, far higher, per email (429 with `Retry-After`); a success costs nothing.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = Envelope<TokenView>),
        (status = 401, description = "10002: invalid email or password; 10006: second factor required (totp_code); 10007: wrong second factor code", body = ErrorEnvelope),
        (status = 422, description = "An email longer than 254 bytes", body = ErrorEnvelope),
        (status = 429, description = "Too many failed attempts", body = ErrorEnvelope),
    ))]
pub async fn login(
    State(auth): State<Arc<AuthService>>,
    ClientIp(ip): ClientIp,
    Json(body): Json<LoginRequest>,
) -> Result<Reply<TokenView>, ApiError> {
    let pair = auth
        .login(&body.email, &body.password, body.totp_code.as_deref(), ip)
        .await?;
    Ok(ok(pair.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new pair. A token works once: presenting a used one again
/// revokes its whole session (10004).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "Rotated", body = Envelope<TokenView>),
        (status = 401, description = "10003: unknown or expired token; 10004: reused token or revoked session", body = ErrorEnvelope),
    ))]
pub async fn refresh_tokens(
    State(auth): State<Arc<AuthService>>,
    Json(body): Json<RefreshRequest>,
) -> Result<Reply<TokenView>, ApiError> {
    let pair = auth.refresh(&body.refresh_token).await?;
    Ok(ok(pair.into()))
}

/// Ends the caller's session: its access token and refresh tokens stop working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Logged out", body = Envelope<Empty>),
        (status = 401, description = "10003: token missing, invalid or expired", body = ErrorEnvelope),
    ))]
pub async fn logout(
    State(auth): State<Arc<AuthService>>,
    Auth(principal): Auth,
) -> Result<Reply<Empty>, ApiError> {
    auth.logout(&principal).await?;
    Ok(ok(Empty {}))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub old_password: String,
    pub new_password: String,
}

/// Changes the password. Every session of the user ends, this one included: log in again.
#[utoipa::path(put, path = "/api/v1/auth/password", tag = "auth",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Changed; all sessions ended", body = Envelope<Empty>),
        (status = 401, description = "10002: old password wrong; 10003: token invalid", body = ErrorEnvelope),
        (status = 422, description = "10005: new password too weak", body = ErrorEnvelope),
        (status = 429, description = "Too many wrong old passwords (they count as failed logins)", body = ErrorEnvelope),
    ))]
pub async fn change_password(
    State(auth): State<Arc<AuthService>>,
    Auth(principal): Auth,
    ClientIp(ip): ClientIp,
    Json(body): Json<ChangePasswordRequest>,
) -> Result<Reply<Empty>, ApiError> {
    auth.change_password(&principal, &body.old_password, body.new_password, ip)
        .await?;
    Ok(ok(Empty {}))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// The secret in base32 (RFC 4648, no padding), for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/flashmart:<email>?secret=...&issuer=flashmart&algorithm=SHA1&digits=6&period=30`,
    /// for a QR code.
    pub otpauth_uri: String,
}

/// Starts enrolling a second factor (TOTP: SHA-1, 6 digits, 30 s): a new secret, shown once,
/// that waits for its first code at `/auth/totp/confirm`. Enrolling again before confirming
/// replaces the secret.
#[utoipa::path(post, path = "/api/v1/auth/totp/enroll", tag = "auth", security(("bearer" = [])),
    responses(
        (status = 200, description = "The secret to enrol", body = Envelope<TotpEnrollment>),
        (status = 401, description = "10003: token invalid", body = ErrorEnvelope),
        (status = 409, description = "10008: the second factor is on already", body = ErrorEnvelope),
    ))]
pub async fn totp_enroll(
    State(auth): State<Arc<AuthService>>,
    Auth(principal): Auth,
) -> Result<Reply<TotpEnrollment>, ApiError> {
    let enrollment = auth.totp_enroll(&principal).await?;
    Ok(ok(TotpEnrollment {
        secret: enrollment.secret,
        otpauth_uri: enrollment.otpauth_uri,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TotpConfirmRequest {
    /// The current 6-digit code of the enrolled secret.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten single-use codes that stand in for the app at login (`totp_code`); shown this once.
    pub recovery_codes: Vec<String>,
}

/// Switches the second factor on with a first code; from then on login needs `totp_code`.
/// Tokens issued before carry no second factor: log in again to get one that does.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", security(("bearer" = [])),
    request_body = TotpConfirmRequest,
    responses(
        (status = 200, description = "On; the recovery codes", body = Envelope<RecoveryCodes>),
        (status = 401, description = "10003: token invalid; 10007: `code` is not the current code", body = ErrorEnvelope),
        (status = 409, description = "10008: on already; 10009: nothing enrolled", body = ErrorEnvelope),
    ))]
pub async fn totp_confirm(
    State(auth): State<Arc<AuthService>>,
    Auth(principal): Auth,
    Json(body): Json<TotpConfirmRequest>,
) -> Result<Reply<RecoveryCodes>, ApiError> {
    let recovery_codes = auth.totp_confirm(&principal, &body.code).await?;
    Ok(ok(RecoveryCodes { recovery_codes }))
}
