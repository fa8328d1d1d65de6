//! The audit log: every change an operator or admin makes (products and prices, coupons, sales,
//! schedules, refunds, roles, webhooks) as who, when, what, and the fields before and after.
//!
//! The use case builds the entry, since it knows the record before and after; the adapter writes
//! it in the same transaction as the change, so the log holds exactly the changes that happened.

use std::fmt;
use std::sync::Arc;

use flashmart_domain::UserId;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::StoreError;
use crate::page::{Page, PageRequest};
use crate::ports::AuditStore;

/// Who made a change: a signed-in operator or admin, or a command run on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    User(UserId),
    /// `flashmart seed` and other commands: whoever can run the binary on the server.
    Command(&'static str),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "{id}"),
            Self::Command(name) => write!(f, "command:{name}"),
        }
    }
}

/// One change, as stored and as `GET /api/v1/admin/audit` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: OffsetDateTime,
    /// A user id, or `command:<name>` (see [`Actor`]).
    pub actor: String,
    /// `<entity>.<verb>`: `product.updated`, `user.role_changed`, ...
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    /// The record's fields before the change; `None` for a creation.
    pub before: Option<Value>,
    /// The record's fields after the change; `None` for a deletion.
    pub after: Option<Value>,
}

impl AuditEntry {
    /// An entry for `action` (`<entity>.<verb>`) on the entity with id `entity_id`.
    pub fn new(
        actor: Actor,
        at: OffsetDateTime,
        action: &str,
        entity_id: impl fmt::Display,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Self {
        let entity = action.split_once('.').map_or(action, |(entity, _)| entity);
        Self {
            id: Uuid::now_v7(),
            at,
            actor: actor.to_string(),
            action: action.to_owned(),
            entity: entity.to_owned(),
            entity_id: entity_id.to_string(),
            before,
            after,
        }
    }
}

/// A time as the audit log's fields hold it: RFC 3339, like the API.
pub fn time_field(at: OffsetDateTime) -> Value {
    at.format(&time::format_description::well_known::Rfc3339)
        .map_or(Value::Null, Value::String)
}

/// Which entries to list; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
}

/// Reading the log (writing it is part of each audited change).
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }

    /// Matching entries, newest first.
    pub async fn entries(
        &self,
        filter: &AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditEntry>, StoreError> {
        self.store.audit_entries(filter, page).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entity_is_the_actions_prefix() {
        let user = UserId::new();
        let e = AuditEntry::new(
            Actor::User(user),
            OffsetDateTime::UNIX_EPOCH,
            "product.updated",
            42,
            None,
            Some(serde_json::json!({"name": "x"})),
        );
        assert_eq!(e.entity, "product");
        assert_eq!(e.entity_id, "42");
        assert_eq!(e.actor, user.to_string());
        assert_eq!(Actor::Command("seed").to_string(), "command:seed");
    }
}
