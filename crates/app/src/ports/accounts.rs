//! Users, credentials and sessions.

use async_trait::async_trait;
use flashmart_domain::{Email, Role, SessionId, User, UserId};
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::page::{Page, PageRequest};

/// A user as stored, with the password hash the login check needs.
#[derive(Clone)]
pub struct Credentials {
    pub user: User,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a refresh token: the token itself is never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[derive(Debug, Clone)]
pub struct RefreshTokenRecord {
    pub hash: TokenHash,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: OffsetDateTime,
    pub refresh: RefreshTokenRecord,
    /// Opened with a second factor.
    pub second_factor: bool,
}

/// What presenting a refresh token led to. The store decides this and applies it in one
/// transaction, so two racing presentations of one token cannot both rotate it.
#[derive(Debug, Clone)]
pub enum Rotation {
    /// The token was live: it is now used, and `next` is the session's new refresh token.
    Rotated {
        session: SessionId,
        user: User,
        /// The session was opened with a second factor.
        second_factor: bool,
    },
    /// No such token.
    Unknown,
    /// The token is past its expiry; nothing changed.
    Expired,
    /// The session had already been revoked (logout, password change, earlier reuse).
    Revoked { session: SessionId },
    /// The token had been used before: the whole session is now revoked.
    Reused { session: SessionId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    RefreshReuse,
    PasswordChange,
    /// An admin changed the user's role: tokens carry the role, so its sessions end.
    RoleChange,
}

impl RevokeReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RefreshReuse => "refresh_reuse",
            Self::PasswordChange => "password_change",
            Self::RoleChange => "role_change",
        }
    }
}

/// Users, credentials and sessions.
#[async_trait]
pub trait AccountStore: Send + Sync + std::fmt::Debug + 'static {
    /// Fails with `Conflict { constraint: "users.email" }` when the email is taken.
    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError>;
    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError>;
    async fn credentials_by_id(&self, id: UserId) -> Result<Option<Credentials>, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Newest first.
    async fn list_users(&self, page: PageRequest) -> Result<Page<User>, StoreError>;

    async fn start_session(&self, session: &NewSession) -> Result<(), StoreError>;
    /// Presents `presented`; when it is live, marks it used and stores `next` in its place.
    async fn rotate_refresh_token(
        &self,
        presented: &TokenHash,
        next: &RefreshTokenRecord,
        now: OffsetDateTime,
    ) -> Result<Rotation, StoreError>;
    /// Revokes one session; revoking a revoked session changes nothing.
    async fn revoke_session(
        &self,
        id: SessionId,
        reason: RevokeReason,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Sets a new password hash and revokes every live session of the user, in one transaction.
    /// Returns the sessions it revoked.
    async fn change_password(
        &self,
        user: UserId,
        new_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Gives the user `role` and revokes every live session of theirs (their tokens carry the
    /// old role), in one transaction with `audit`, if the user still has the role `audit.before`
    /// was read with (`from`): `None` when they do not (someone changed it meanwhile). Returns
    /// the sessions it revoked; `NotFound` for no user.
    async fn set_role(
        &self,
        user: UserId,
        from: Role,
        role: Role,
        now: OffsetDateTime,
        audit: &AuditEntry,
    ) -> Result<Option<Vec<SessionId>>, StoreError>;
    /// Stores accounts that cannot log in (the password hash given is no valid hash), each with
    /// one session: load-test buyers. One transaction, with `audit`.
    async fn insert_buyers(
        &self,
        buyers: &[(User, SessionId)],
        unusable_password_hash: &str,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Sessions revoked at or after `since`: what the in-memory revocation list must know at start.
    async fn sessions_revoked_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(SessionId, OffsetDateTime)>, StoreError>;
}
