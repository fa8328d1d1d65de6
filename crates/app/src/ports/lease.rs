use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;

/// A lease that one holder at a time may hold, for the work that must run on exactly one
/// instance (the scheduler's). Held for `ttl` from each grant; a holder that stops renewing loses
/// it when that runs out.
#[async_trait]
pub trait Lease: Send + Sync + std::fmt::Debug + 'static {
    /// Grants the lease to `holder` (when free) or renews it (when `holder` has it) for `ttl`;
    /// `false` when another holder has it.
    async fn acquire_or_renew(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives the lease up when `holder` has it, so that another may take it at once.
    async fn release(&self, holder: &str) -> Result<(), StoreError>;
}
