//! The caller's own account, and the admin's view of all accounts.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::auth::AuthService;
use flashmart_domain::UserId;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Auth, Path, Query};
use crate::state::AppState;
use crate::views::{PageOf, PageParams, UserView};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_me))
        .routes(routes!(list_users))
        .routes(routes!(get_user))
        .routes(routes!(set_role))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct RoleIn {
    /// `customer`, `operator` or `admin`.
    #[schema(pattern = "^(customer|operator|admin)$")]
    pub role: String,
}

/// Changes an account's role; the account's sessions end (their tokens carry the old role), so
/// its owner signs in again. Admins only, and never their own role (409).
#[utoipa::path(put, path = "/api/v1/admin/users/{id}/role", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    request_body = RoleIn,
    responses(
        (status = 200, description = "The account with its new role", body = Envelope<UserView>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 404, description = "No such account", body = ErrorEnvelope),
        (status = 409, description = "The caller's own role", body = ErrorEnvelope),
        (status = 422, description = "Unknown role", body = ErrorEnvelope),
    ))]
pub async fn set_role(
    State(auth): State<Arc<AuthService>>,
    AdminAuth(admin): AdminAuth,
    Path(id): Path<Uuid>,
    crate::extract::Json(body): crate::extract::Json<RoleIn>,
) -> Result<Reply<UserView>, ApiError> {
    let role = body
        .role
        .parse()
        .map_err(|e: flashmart_domain::RoleError| {
            ApiError::validation(vec![flashmart_app::FieldError::new("role", e.to_string())])
        })?;
    let user = auth.set_role(&admin, UserId::from_uuid(id), role).await?;
    Ok(ok(user.into()))
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Envelope<UserView>),
        (status = 401, description = "10003: token missing, invalid or expired", body = ErrorEnvelope),
    ))]
pub async fn get_me(
    State(auth): State<Arc<AuthService>>,
    Auth(principal): Auth,
) -> Result<Reply<UserView>, ApiError> {
    let user = auth
        .user(principal.user_id)
        .await?
        .ok_or_else(ApiError::token_invalid)?;
    Ok(ok(user.into()))
}

/// All accounts, newest first. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of accounts", body = Envelope<PageOf<UserView>>),
        (status = 401, description = "10003: token missing, invalid or expired", body = ErrorEnvelope),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn list_users(
    State(auth): State<Arc<AuthService>>,
    _admin: AdminAuth,
    Query(page): Query<PageParams>,
) -> Result<Reply<PageOf<UserView>>, ApiError> {
    let page = auth.list_users(page.into()).await?;
    Ok(ok(PageOf::from_page(page, UserView::from)))
}

/// One account. Admins only.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The account", body = Envelope<UserView>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 404, description = "No such account", body = ErrorEnvelope),
    ))]
pub async fn get_user(
    State(auth): State<Arc<AuthService>>,
    _admin: AdminAuth,
    Path(id): Path<Uuid>,
) -> Result<Reply<UserView>, ApiError> {
    let user = auth
        .user(UserId::from_uuid(id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(ok(user.into()))
}
