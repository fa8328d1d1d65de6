//! Users, sessions and refresh tokens in PostgreSQL.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::ports::{
    AccountStore, Credentials, NewSession, RefreshTokenRecord, RevokeReason, Rotation, TokenHash,
};
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::{DisplayName, Email, Role, SessionId, User, UserId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::db::{corrupt, map_err};

/// `SELECT` of every user column, followed by the rest of the query (a macro: sqlx wants each
/// query text to be a static string).
macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT id, email, name, role, created_at, password_hash FROM users ",
            $rest
        )
    };
}

fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(map_err)?;
    let name: String = row.try_get("name").map_err(map_err)?;
    let role: String = row.try_get("role").map_err(map_err)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id").map_err(map_err)?),
        email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
        name: DisplayName::parse(&name).map_err(|e| corrupt("users.name", e))?,
        role: role.parse().map_err(|e| corrupt("users.role", e))?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

fn credentials_from_row(row: &PgRow) -> Result<Credentials, StoreError> {
    Ok(Credentials {
        user: user_from_row(row)?,
        password_hash: row.try_get("password_hash").map_err(map_err)?,
    })
}

async fn revoke(
    conn: &mut PgConnection,
    session: Uuid,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(reason.as_str())
    .bind(session)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn insert_refresh(
    conn: &mut PgConnection,
    session: SessionId,
    token: &RefreshTokenRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&token.hash.0[..])
    .bind(session.as_uuid())
    .bind(token.issued_at)
    .bind(token.expires_at)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl AccountStore for PgStore {
    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        sqlx::query(select_users!("WHERE email = $1"))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(credentials_from_row)
            .transpose()
    }

    async fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, StoreError> {
        sqlx::query(select_users!("WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(credentials_from_row)
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        Ok(self.credentials_by_id(id).await?.map(|c| c.user))
    }

    async fn list_users(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(select_users!(
            "ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(page.per_page()))
        .bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let users = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(page, users, u64::try_from(total).unwrap_or(0)))
    }

    async fn start_session(&self, session: &NewSession) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, second_factor) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(session.id.as_uuid())
        .bind(session.user_id.as_uuid())
        .bind(session.created_at)
        .bind(session.second_factor)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_refresh(&mut tx, session.id, &session.refresh).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &RefreshTokenRecord,
        now: OffsetDateTime,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The token's and its session's rows stay locked until the end: a racing presentation
        // of the same token waits here and then sees it used.
        let row = sqlx::query(
            "SELECT t.session_id, t.expires_at, t.used_at, s.revoked_at, s.second_factor, \
             u.id, u.email, u.name, u.role, u.created_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             JOIN users u ON u.id = s.user_id \
             WHERE t.token_hash = $1 FOR UPDATE OF t, s",
        )
        .bind(&presented.0[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(Rotation::Unknown);
        };
        let session_uuid: Uuid = row.try_get("session_id").map_err(map_err)?;
        let session = SessionId::from_uuid(session_uuid);
        let revoked_at: Option<OffsetDateTime> = row.try_get("revoked_at").map_err(map_err)?;
        let used_at: Option<OffsetDateTime> = row.try_get("used_at").map_err(map_err)?;
        let expires_at: OffsetDateTime = row.try_get("expires_at").map_err(map_err)?;

        let outcome = if revoked_at.is_some() {
            Rotation::Revoked { session }
        } else if used_at.is_some() {
            revoke(&mut tx, session_uuid, RevokeReason::RefreshReuse, now).await?;
            Rotation::Reused { session }
        } else if expires_at <= now {
            Rotation::Expired
        } else {
            sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
                .bind(now)
                .bind(&presented.0[..])
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            insert_refresh(&mut tx, session, next).await?;
            Rotation::Rotated {
                session,
                user: user_from_row(&row)?,
                second_factor: row.try_get("second_factor").map_err(map_err)?,
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok(outcome)
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        revoke(&mut conn, *id.as_uuid(), reason, now).await
    }

    async fn change_password(
        &self,
        user: UserId,
        new_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError> {
        let sql = "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3";
        update_ending_sessions(
            &self.pool,
            sql,
            new_hash,
            user,
            None,
            RevokeReason::PasswordChange,
            now,
        )
        .await?
        .ok_or(StoreError::NotFound)
    }

    async fn set_role(
        &self,
        user: UserId,
        from: Role,
        role: Role,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<SessionId>>, StoreError> {
        let sql = "UPDATE users SET role = $1, updated_at = $2 WHERE id = $3 AND role = $4";
        update_ending_sessions(
            &self.pool,
            sql,
            role.as_str(),
            user,
            Some((from.as_str(), audit)),
            RevokeReason::RoleChange,
            now,
        )
        .await
    }

    async fn insert_buyers(
        &self,
        buyers: &[(User, SessionId)],
        unusable_password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        // Column arrays unnested into rows: one statement per table whatever the count.
        let ids: Vec<Uuid> = buyers.iter().map(|(u, _)| *u.id.as_uuid()).collect();
        let emails: Vec<&str> = buyers.iter().map(|(u, _)| u.email.as_str()).collect();
        let names: Vec<&str> = buyers.iter().map(|(u, _)| u.name.as_str()).collect();
        let roles: Vec<&str> = buyers.iter().map(|(u, _)| u.role.as_str()).collect();
        let created: Vec<OffsetDateTime> = buyers.iter().map(|(u, _)| u.created_at).collect();
        let sessions: Vec<Uuid> = buyers.iter().map(|(_, s)| *s.as_uuid()).collect();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
             SELECT id, email, name, $4, role, created_at, created_at \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $5::text[], $6::timestamptz[]) \
                  AS b (id, email, name, role, created_at)",
        )
        .bind(&ids)
        .bind(&emails)
        .bind(&names)
        .bind(unusable_password_hash)
        .bind(&roles)
        .bind(&created)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[])",
        )
        .bind(&sessions)
        .bind(&ids)
        .bind(&created)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        crate::audit::record(&mut tx, audit).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn sessions_revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(SessionId, OffsetDateTime)>, StoreError> {
        let rows: Vec<(Uuid, OffsetDateTime)> =
            sqlx::query_as("SELECT id, revoked_at FROM sessions WHERE revoked_at >= $1")
                .bind(since)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(|(id, at)| (SessionId::from_uuid(id), at))
            .collect())
    }
}

/// Sets one field of `user` (`sql` binds the value, the time and the id, then the field's
/// expected value when `guard` gives one) and revokes every live session of theirs for `reason`,
/// in one transaction with `guard`'s audit entry. `None` when the field no longer has the value
/// expected; `NotFound` for no such user.
async fn update_ending_sessions(
    pool: &sqlx::PgPool,
    sql: &'static str,
    value: &str,
    user: UserId,
    guard: Option<(&str, &AuditEntry)>,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<Option<Vec<SessionId>>, StoreError> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let mut update = sqlx::query(sql).bind(value).bind(now).bind(user.as_uuid());
    if let Some((expected, _)) = guard {
        update = update.bind(expected);
    }
    let updated = update.execute(&mut *tx).await.map_err(map_err)?;
    if updated.rows_affected() == 0 {
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1")
            .bind(user.as_uuid())
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        return exists.map(|_| None).ok_or(StoreError::NotFound);
    }
    if let Some((_, audit)) = guard {
        crate::audit::record(&mut tx, audit).await?;
    }
    let revoked = revoke_every_session(&mut tx, user, reason, now).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(Some(revoked))
}

/// Revokes every live session of `user` for `reason`; returns the sessions it revoked.
async fn revoke_every_session(
    conn: &mut PgConnection,
    user: UserId,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<Vec<SessionId>, StoreError> {
    let revoked: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $1, revoked_reason = $2 \
         WHERE user_id = $3 AND revoked_at IS NULL RETURNING id",
    )
    .bind(now)
    .bind(reason.as_str())
    .bind(user.as_uuid())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    Ok(revoked.into_iter().map(SessionId::from_uuid).collect())
}
