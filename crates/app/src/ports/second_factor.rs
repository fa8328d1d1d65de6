//! A user's second factor: a TOTP secret (waiting for its first code, then on), the last step a
//! code was accepted for (so no code works twice), and single-use recovery codes kept as hashes.

use async_trait::async_trait;
use flashmart_domain::UserId;
use time::OffsetDateTime;

use crate::error::StoreError;
use crate::ports::TokenHash;

#[derive(Clone, PartialEq, Eq)]
pub struct TotpRecord {
    pub secret: Vec<u8>,
    /// `None` while the secret waits for its first code.
    pub enabled_at: Option<OffsetDateTime>,
    pub last_step: Option<i64>,
}

impl std::fmt::Debug for TotpRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRecord")
            .field("enabled_at", &self.enabled_at)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait SecondFactorStore: Send + Sync + std::fmt::Debug + 'static {
    async fn totp(&self, user: UserId) -> Result<Option<TotpRecord>, StoreError>;
    /// Stores a secret waiting for its first code, replacing one that waits; `false` (nothing
    /// written) when the user's second factor is on already.
    async fn begin_totp(
        &self,
        user: UserId,
        secret: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Switches the waiting secret on, with `step` used and `recovery` (hashes) as the recovery
    /// codes, in one transaction; `false` when no secret waits.
    async fn enable_totp(
        &self,
        user: UserId,
        step: i64,
        recovery: &[TokenHash],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Uses a step of the user's code: `false` when it, or a later one, was used before.
    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError>;
    /// Uses a recovery code: `false` when it is not one of the user's or was used.
    async fn use_recovery_code(
        &self,
        user: UserId,
        code: &TokenHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
}
