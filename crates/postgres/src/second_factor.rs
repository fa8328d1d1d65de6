//! Second factors in PostgreSQL: TOTP secrets, the last step used, recovery codes.

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::ports::{SecondFactorStore, TokenHash, TotpRecord};
use flashmart_domain::UserId;
use time::OffsetDateTime;

use crate::PgStore;
use crate::db::map_err;

#[async_trait]
impl SecondFactorStore for PgStore {
    async fn totp(&self, user: UserId) -> Result<Option<TotpRecord>, StoreError> {
        let row: Option<(Vec<u8>, Option<OffsetDateTime>, Option<i64>)> =
            sqlx::query_as("SELECT secret, enabled_at, last_step FROM totp WHERE user_id = $1")
                .bind(user.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(row.map(|(secret, enabled_at, last_step)| TotpRecord {
            secret,
            enabled_at,
            last_step,
        }))
    }

    async fn begin_totp(
        &self,
        user: UserId,
        secret: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO totp (user_id, secret, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET secret = $2, created_at = $3, last_step = NULL \
             WHERE totp.enabled_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(secret)
        .bind(now)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let enabled = sqlx::query(
            "UPDATE totp SET enabled_at = $1, last_step = $2 \
             WHERE user_id = $3 AND enabled_at IS NULL",
        )
        .bind(now)
        .bind(step)
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if enabled.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM totp_recovery_codes WHERE user_id = $1")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let hashes: Vec<&[u8]> = recovery.iter().map(|c| &c.0[..]).collect();
        sqlx::query(
            "INSERT INTO totp_recovery_codes (user_id, code_hash) \
             SELECT $1, code FROM UNNEST($2::bytea[]) AS c (code)",
        )
        .bind(user.as_uuid())
        .bind(&hashes)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, StoreError> {
        let used = sqlx::query(
            "UPDATE totp SET last_step = $1 WHERE user_id = $2 AND enabled_at IS NOT NULL \
             AND (last_step IS NULL OR last_step < $1)",
        )
        .bind(step)
        .bind(user.as_uuid())
        .execute(&self.pool)
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
            "UPDATE totp_recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(user.as_uuid())
        .bind(&code.0[..])
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(used.rows_affected() == 1)
    }
}
