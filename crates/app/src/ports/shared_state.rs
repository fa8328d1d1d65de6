use std::time::Duration;

use async_trait::async_trait;
use flashmart_domain::SessionId;
use time::OffsetDateTime;

use crate::error::StoreError;

/// Budgets every instance of a scaled shop shares (Redis), so that a client gets the same
/// budget whichever instance it reaches: request rates and failed logins.
#[async_trait]
pub trait SharedLimits: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one request from the bucket `key`, which lets `per_minute` through a minute (all at
    /// once, at most): `None` when let through, else how long until one more would be.
    async fn take(&self, key: &str, per_minute: u32) -> Result<Option<Duration>, StoreError>;

    /// The failures counted against `key` in its current window of a minute, and how long that
    /// window has left (zero when none is open).
    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError>;

    /// Counts one failure against `key`, opening a window of a minute when none is open.
    async fn record_failure(&self, key: &str) -> Result<(), StoreError>;
}

/// News of revoked sessions, carried to every instance of a scaled shop: an access token of a
/// session revoked on one instance is refused on every other at once, not only once it
/// expires.
#[async_trait]
pub trait RevocationNews: Send + Sync + std::fmt::Debug + 'static {
    /// Tells every instance (this one included) that `session` is revoked and may be forgotten
    /// after `forget_after`.
    async fn publish(
        &self,
        session: SessionId,
        forget_after: OffsetDateTime,
    ) -> Result<(), StoreError>;
}
