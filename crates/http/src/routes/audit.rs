//! The audit log: who changed what, when, with the fields before and after. Admins.

use std::sync::Arc;

use axum::extract::State;
use flashmart_app::audit::{AuditEntry, AuditFilter, AuditLog};
use flashmart_app::page::PageRequest;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::envelope::{Envelope, ErrorEnvelope, Reply, ok};
use crate::error::ApiError;
use crate::extract::{AdminAuth, Query};
use crate::state::AppState;
use crate::views::PageOf;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only changes by this actor: a user id, or `command:seed` for the demo data.
    pub actor: Option<String>,
    /// Only changes to this kind of record: `product`, `coupon`, `flash_sale`, `schedule`,
    /// `order` (refunds), `user` (roles), `webhook`.
    pub entity: Option<String>,
    /// Only changes to the record with this id (with or without `entity`).
    pub entity_id: Option<String>,
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 10_000_000)]
    #[serde(default, deserialize_with = "crate::views::page_number")]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::views::per_page")]
    pub per_page: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryOut {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The user who made the change, or `command:<name>` for a command run on the server.
    pub actor: String,
    /// `<entity>.<verb>`, such as `product.updated` or `user.role_changed`.
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    /// The record's fields before the change; null for a creation.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    /// The record's fields after the change; null for a deletion.
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditEntryOut {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            entity: e.entity,
            entity_id: e.entity_id,
            before: e.before,
            after: e.after,
        }
    }
}

/// Every change operators and admins made (products and prices, coupons, sales, schedules,
/// refunds, roles, webhooks), newest first, each written in the same transaction as the change
/// itself. Admins.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit entries", body = Envelope<PageOf<AuditEntryOut>>),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
    ))]
pub async fn list_audit(
    State(audit): State<Arc<AuditLog>>,
    _admin: AdminAuth,
    Query(params): Query<AuditParams>,
) -> Result<Reply<PageOf<AuditEntryOut>>, ApiError> {
    let given = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = AuditFilter {
        actor: given(params.actor),
        entity: given(params.entity),
        entity_id: given(params.entity_id),
    };
    let entries = audit
        .entries(&filter, PageRequest::new(params.page, params.per_page))
        .await?;
    Ok(ok(PageOf::from_page(entries, AuditEntryOut::from)))
}
