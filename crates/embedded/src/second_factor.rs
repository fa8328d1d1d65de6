//! Second factors in SQLite: TOTP secrets, the last step used, recovery codes.

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::ports::{SecondFactorStore, TokenHash, TotpRecord};
use flashmart_domain::UserId;
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::db::{from_micros, map_err, micros};

#[async_trait]
impl SecondFactorStore for SqliteStore {
    async fn totp(&self, user: UserId) -> Result<Option<TotpRecord>, StoreError> {
        let row: Option<(Vec<u8>, Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT secret, enabled_at, last_step FROM totp WHERE user_id = ?")
                .bind(user.as_uuid())
                .fetch_optional(&self.writer)
                .await
                .map_err(map_err)?;
        row.map(|(secret, enabled_at, last_step)| {
            Ok(TotpRecord {
                secret,
                enabled_at: enabled_at.map(from_micros).transpose()?,
                last_step,
            })
        })
        .transpose()
    }

    async fn begin_totp(
        &self,
        user: UserId,
        secret: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO totp (user_id, secret, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET secret = ?2, created_at = ?3, last_step = NULL \
             WHERE totp.enabled_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(secret)
        .bind(micros(now))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(written.rows_affected() == 1)
    }

    async fn enable_totp(
        &self,
        user: UserId,
        step: i64,
        recovery: &[TokenHash],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let enabled = sqlx::query(
            "UPDATE totp SET enabled_at = ?, last_step = ? WHERE user_id = ? AND enabled_at IS NULL",
        )
        .bind(micros(now))
        .bind(step)
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if enabled.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = ?")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for code in recovery {
            sqlx::query("INSERT INTO totp_recovery_codes (user_id, code_hash) VALUES (?, ?)")
                .bind(user.as_uuid())
                .bind(&code.0[..])
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE totp SET last_step = ?1 WHERE user_id = ?2 AND enabled_at IS NOT NULL \
             AND (last_step IS NULL OR last_step < ?1)",
        )
        .bind(step)
        .bind(user.as_uuid())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(used.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        code: &TokenHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE totp_recovery_codes SET used_at = ? \
             WHERE user_id = ? AND code_hash = ? AND used_at IS NULL",
        )
        .bind(micros(now))
        .bind(user.as_uuid())
        .bind(&code.0[..])
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(used.rows_affected() == 1)
    }
}
