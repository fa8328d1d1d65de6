//! Users, sessions and refresh tokens in SQLite.

use async_trait::async_trait;
use flashmart_app::audit::AuditEntry;
use flashmart_app::ports::{
    AccountStore, Credentials, NewSession, RefreshTokenRecord, RevokeReason, Rotation, TokenHash,
};
use flashmart_app::{Page, PageRequest, StoreError};
use flashmart_domain::{DisplayName, Email, Role, SessionId, User, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqliteConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::db::{corrupt, from_micros, map_err, micros};

/// `SELECT` of every user column, followed by the rest of the query; a macro so that the SQL
/// stays a static string, which sqlx requires of every query text.
macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT id, email, name, role, created_at, password_hash FROM users ",
            $rest
        )
    };
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    let email: String = row.try_get("email").map_err(map_err)?;
    let name: String = row.try_get("name").map_err(map_err)?;
    let role: String = row.try_get("role").map_err(map_err)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id").map_err(map_err)?),
        email: Email::parse(&email).map_err(|e| corrupt("users.email", e))?,
        name: DisplayName::parse(&name).map_err(|e| corrupt("users.name", e))?,
        role: role.parse().map_err(|e| corrupt("users.role", e))?,
        created_at: from_micros(row.try_get("created_at").map_err(map_err)?)?,
    })
}

fn credentials_from_row(row: &SqliteRow) -> Result<Credentials, StoreError> {
    Ok(Credentials {
        user: user_from_row(row)?,
        password_hash: row.try_get("password_hash").map_err(map_err)?,
    })
}

async fn user_in_tx(conn: &mut SqliteConnection, id: Uuid) -> Result<User, StoreError> {
    let row = sqlx::query(select_users!("WHERE id = ?"))
        .bind(id)
        .fetch_one(conn)
        .await
        .map_err(map_err)?;
    user_from_row(&row)
}

async fn revoke(
    conn: &mut SqliteConnection,
    session: Uuid,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ? \
         WHERE id = ? AND revoked_at IS NULL",
    )
    .bind(micros(now))
    .bind(reason.as_str())
    .bind(session)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let now = micros(user.created_at);
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.name.as_str())
        .bind(password_hash)
        .bind(user.role.as_str())
        .bind(now)
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        sqlx::query(select_users!("WHERE email = ?"))
            .bind(email.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(credentials_from_row)
            .transpose()
    }

    async fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, StoreError> {
        sqlx::query(select_users!("WHERE id = ?"))
            .bind(id.as_uuid())
            .fetch_optional(&self.reader)
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
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(select_users!(
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .bind(i64::from(page.per_page()))
        .bind(i64::try_from(page.offset()).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        let users = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        Ok(Page::new(page, users, u64::try_from(total).unwrap_or(0)))
    }

    async fn start_session(&self, session: &NewSession) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, second_factor) VALUES (?, ?, ?, ?)",
        )
        .bind(session.id.as_uuid())
        .bind(session.user_id.as_uuid())
        .bind(micros(session.created_at))
        .bind(i64::from(session.second_factor))
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT t.session_id, t.expires_at, t.used_at, s.revoked_at, s.user_id, \
             s.second_factor \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             WHERE t.token_hash = ?",
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
        let revoked_at: Option<i64> = row.try_get("revoked_at").map_err(map_err)?;
        let used_at: Option<i64> = row.try_get("used_at").map_err(map_err)?;
        let expires_at: i64 = row.try_get("expires_at").map_err(map_err)?;

        let outcome = if revoked_at.is_some() {
            Rotation::Revoked { session }
        } else if used_at.is_some() {
            revoke(&mut tx, session_uuid, RevokeReason::RefreshReuse, now).await?;
            Rotation::Reused { session }
        } else if expires_at <= micros(now) {
            Rotation::Expired
        } else {
            sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?")
                .bind(micros(now))
                .bind(&presented.0[..])
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            insert_refresh(&mut tx, session, next).await?;
            let user = user_in_tx(&mut tx, row.try_get("user_id").map_err(map_err)?).await?;
            let second_factor: i64 = row.try_get("second_factor").map_err(map_err)?;
            Rotation::Rotated {
                session,
                user,
                second_factor: second_factor != 0,
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
        let mut conn = self.writer.acquire().await.map_err(map_err)?;
        revoke(&mut conn, *id.as_uuid(), reason, now).await
    }

    async fn change_password(
        &self,
        user: UserId,
        new_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError> {
        let sql = "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?";
        update_ending_sessions(
            &self.writer,
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
        let sql = "UPDATE users SET role = ?, updated_at = ? WHERE id = ? AND role = ?";
        update_ending_sessions(
            &self.writer,
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        crate::audit::record(&mut tx, audit).await?;
        for chunk in crate::flash_sale::chunks(buyers) {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO users (id, email, name, password_hash, role, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, (user, _)| {
                b.push_bind(user.id.as_uuid())
                    .push_bind(user.email.as_str())
                    .push_bind(user.name.as_str())
                    .push_bind(unusable_password_hash)
                    .push_bind(user.role.as_str())
                    .push_bind(micros(user.created_at))
                    .push_bind(micros(user.created_at));
            });
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO sessions (id, user_id, created_at) ",
            );
            qb.push_values(chunk, |mut b, (user, session)| {
                b.push_bind(session.as_uuid())
                    .push_bind(user.id.as_uuid())
                    .push_bind(micros(user.created_at));
            });
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn sessions_revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(SessionId, OffsetDateTime)>, StoreError> {
        let rows: Vec<(Uuid, i64)> =
            sqlx::query_as("SELECT id, revoked_at FROM sessions WHERE revoked_at >= ?")
                .bind(micros(since))
                .fetch_all(&self.reader)
                .await
                .map_err(map_err)?;
        rows.into_iter()
            .map(|(id, at)| Ok((SessionId::from_uuid(id), from_micros(at)?)))
            .collect()
    }
}

async fn insert_refresh(
    conn: &mut SqliteConnection,
    session: SessionId,
    token: &RefreshTokenRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
         VALUES (?, ?, ?, ?)",
    )
    .bind(&token.hash.0[..])
    .bind(session.as_uuid())
    .bind(micros(token.issued_at))
    .bind(micros(token.expires_at))
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Sets one field of `user` (`sql` binds the value, the time and the id, then the field's
/// expected value when `guard` gives one) and revokes every live session of theirs for `reason`,
/// in one transaction with `guard`'s audit entry. `None` when the field no longer has the value
/// expected; `NotFound` for no such user.
async fn update_ending_sessions(
    pool: &sqlx::SqlitePool,
    sql: &'static str,
    value: &str,
    user: UserId,
    guard: Option<(&str, &AuditEntry)>,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<Option<Vec<SessionId>>, StoreError> {
    let mut tx = pool.begin().await.map_err(map_err)?;
    let mut update = sqlx::query(sql)
        .bind(value)
        .bind(micros(now))
        .bind(user.as_uuid());
    if let Some((expected, _)) = guard {
        update = update.bind(expected);
    }
    let updated = update.execute(&mut *tx).await.map_err(map_err)?;
    if updated.rows_affected() == 0 {
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = ?")
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
    conn: &mut SqliteConnection,
    user: UserId,
    reason: RevokeReason,
    now: OffsetDateTime,
) -> Result<Vec<SessionId>, StoreError> {
    let revoked: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ? \
         WHERE user_id = ? AND revoked_at IS NULL RETURNING id",
    )
    .bind(micros(now))
    .bind(reason.as_str())
    .bind(user.as_uuid())
    .fetch_all(conn)
    .await
    .map_err(map_err)?;
    Ok(revoked.into_iter().map(SessionId::from_uuid).collect())
}
