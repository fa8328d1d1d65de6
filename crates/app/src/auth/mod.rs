//! Accounts and authentication: registration, login, refresh-token rotation with reuse detection,
//! logout, password change, and the access-token check every authenticated request goes through.

mod guard;
mod passwords;
mod revoked;
mod second_factor;
mod tokens;
pub mod totp;
mod verified;

use std::net::IpAddr;
use std::sync::Arc;

use flashmart_domain::{DisplayName, Email, NewPassword, Role, SessionId, User, UserId};
use time::{Duration, OffsetDateTime};

pub use passwords::{HashCost, HashError, PasswordHasher};
pub use revoked::RevokedSessions;
pub use tokens::{AccessTokens, Principal, TokenError};

use crate::audit::{Actor, AuditEntry};
use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::page::{Page, PageRequest};
use crate::ports::{
    AccountStore, NewSession, RefreshTokenRecord, RevocationNews, RevokeReason, Rotation,
    SecondFactorStore, SharedLimits,
};
use crate::rate_limit::RetryAfter;
use guard::{Attempt, LoginGuard};
pub use guard::{LoginLimits, MAX_EMAIL_BYTES};
pub use second_factor::{Enrollment, RECOVERY_CODES};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("email already registered")]
    EmailTaken,
    #[error("invalid email or password")]
    BadCredentials,
    #[error("token missing, invalid or expired")]
    InvalidToken,
    #[error("refresh token reused or session revoked")]
    SessionRevoked,
    #[error("password too weak")]
    WeakPassword(Vec<FieldError>),
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("too many attempts")]
    RateLimited(RetryAfter),
    #[error("second factor required: give totp_code (or a recovery code)")]
    SecondFactorRequired,
    #[error("wrong second factor code")]
    SecondFactorWrong,
    #[error("the second factor is on already")]
    SecondFactorOn,
    #[error("no second factor is being enrolled: enroll first")]
    NoEnrollment,
    #[error("an admin cannot change their own role")]
    OwnRole,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("token signing failed: {0}")]
    Signing(String),
}

/// A registration whose fields all passed validation.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: Email,
    pub password: NewPassword,
    pub name: DisplayName,
}

impl Registration {
    /// Checks every field and reports all that fail. When only the password fails, the error is
    /// `WeakPassword` (the API's 10005); otherwise `Invalid` with every field's message.
    pub fn parse(email: &str, password: String, name: &str) -> Result<Self, AuthError> {
        let mut errors = Vec::new();
        let email = Email::parse(email)
            .map_err(|e| errors.push(FieldError::new("email", e)))
            .ok();
        let name = DisplayName::parse(name)
            .map_err(|e| errors.push(FieldError::new("name", e)))
            .ok();
        let password = email.as_ref().and_then(|email| {
            NewPassword::parse(password, email)
                .map_err(|e| errors.push(FieldError::new("password", e)))
                .ok()
        });
        match (email, password, name) {
            (Some(email), Some(password), Some(name)) => Ok(Self {
                email,
                password,
                name,
            }),
            _ if errors.iter().all(|e| e.field == "password") => {
                Err(AuthError::WeakPassword(errors))
            }
            _ => Err(AuthError::Invalid(errors)),
        }
    }
}

/// What login and refresh hand back.
#[derive(Debug, Clone)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwt_secret: Vec<u8>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub hash_cost: HashCost,
    pub max_parallel_hashes: usize,
    /// Failed logins allowed per client address, per (email, address) and per email.
    pub login_limits: LoginLimits,
    /// Keep operators and admins without a second factor off staff routes.
    pub require_staff_totp: bool,
    /// Scaled mode: failed logins counted in Redis, shared by every instance.
    pub shared_limits: Option<Arc<dyn SharedLimits>>,
    /// Scaled mode: revocations told to every instance.
    pub revocation_news: Option<Arc<dyn RevocationNews>>,
}

#[derive(Debug)]
pub struct AuthService {
    store: Arc<dyn AccountStore>,
    clock: Arc<dyn Clock>,
    tokens: AccessTokens,
    hasher: PasswordHasher,
    revoked: RevokedSessions,
    refresh_ttl: Duration,
    guard: LoginGuard,
    second: Arc<dyn SecondFactorStore>,
    require_staff_totp: bool,
    news: Option<Arc<dyn RevocationNews>>,
}

impl AuthService {
    /// Builds the service and loads the sessions revoked recently enough that their access tokens
    /// might still be presented.
    pub async fn start(
        store: Arc<dyn AccountStore>,
        second: Arc<dyn SecondFactorStore>,
        clock: Arc<dyn Clock>,
        settings: AuthSettings,
    ) -> Result<Self, AuthError> {
        let cost = settings.hash_cost;
        let parallel = settings.max_parallel_hashes;
        let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(cost, parallel))
            .await
            .map_err(|e| HashError::Task(e.to_string()))??;
        let service = Self {
            tokens: AccessTokens::new(&settings.jwt_secret, settings.access_ttl),
            hasher,
            revoked: RevokedSessions::default(),
            refresh_ttl: settings.refresh_ttl,
            guard: LoginGuard::new(settings.login_limits, settings.shared_limits),
            news: settings.revocation_news,
            second,
            require_staff_totp: settings.require_staff_totp,
            store,
            clock,
        };
        service.sync_revocations().await?;
        Ok(service)
    }

    pub async fn register(
        &self,
        registration: Registration,
        role: Role,
    ) -> Result<User, AuthError> {
        let password_hash = self.hasher.hash(registration.password.expose()).await?;
        let user = User {
            id: UserId::new(),
            email: registration.email,
            name: registration.name,
            role,
            created_at: self.clock.now(),
        };
        match self.store.insert_user(&user, &password_hash).await {
            Ok(()) => Ok(user),
            Err(StoreError::Conflict { .. }) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks the password and opens a new session. Failed attempts are limited (see `guard`)
    /// before any hashing happens, so guessing costs the guesser, not the server.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        totp_code: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<TokenPair, AuthError> {
        let attempt = Attempt::new(email, client).ok_or_else(|| {
            AuthError::Invalid(vec![FieldError::new(
                "email",
                format!("must be at most {MAX_EMAIL_BYTES} bytes"),
            )])
        })?;
        self.guard
            .admit(&attempt)
            .await
            .map_err(AuthError::RateLimited)?;

        let credentials = match Email::parse(email) {
            Ok(email) => self.store.credentials_by_email(&email).await?,
            Err(_) => None,
        };
        let Some(credentials) = credentials else {
            self.hasher.verify_dummy(password).await?;
            self.guard.failed(attempt).await;
            return Err(AuthError::BadCredentials);
        };
        if !self
            .hasher
            .verify(password, &credentials.password_hash)
            .await?
        {
            self.guard.failed(attempt).await;
            return Err(AuthError::BadCredentials);
        }
        // The password was right; a wrong code is a failed attempt like a wrong password, so
        // the six digits cannot be guessed any faster.
        let second_factor = match self
            .check_second_factor(credentials.user.id, totp_code)
            .await?
        {
            None => false,
            Some(true) => true,
            Some(false) => {
                self.guard.failed(attempt).await;
                return Err(AuthError::SecondFactorWrong);
            }
        };

        let now = self.clock.now();
        let (refresh_token, refresh) = self.new_refresh(now);
        let session = NewSession {
            id: SessionId::new(),
            user_id: credentials.user.id,
            created_at: now,
            refresh,
            second_factor,
        };
        self.store.start_session(&session).await?;
        self.token_pair(
            &credentials.user,
            session.id,
            second_factor,
            refresh_token,
            now,
        )
    }

    /// Rotates a refresh token. Presenting one that was already used revokes its whole session,
    /// including the newest refresh token and every access token of it.
    pub async fn refresh(&self, presented: &str) -> Result<TokenPair, AuthError> {
        let now = self.clock.now();
        let (refresh_token, next) = self.new_refresh(now);
        let presented = tokens::hash_refresh_token(presented.trim());
        match self
            .store
            .rotate_refresh_token(&presented, &next, now)
            .await?
        {
            Rotation::Rotated {
                session,
                user,
                second_factor,
            } => self.token_pair(&user, session, second_factor, refresh_token, now),
            Rotation::Unknown | Rotation::Expired => Err(AuthError::InvalidToken),
            Rotation::Revoked { session } => {
                // Already on the list unless it was revoked before this process started and
                // long ago; adding it again is harmless.
                self.revoke_everywhere(session, now).await;
                Err(AuthError::SessionRevoked)
            }
            Rotation::Reused { session } => {
                tracing::warn!(%session, "refresh token reused; session revoked");
                self.revoke_everywhere(session, now).await;
                Err(AuthError::SessionRevoked)
            }
        }
    }

    /// Ends the caller's session; its access token is refused from now on.
    pub async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        let now = self.clock.now();
        self.store
            .revoke_session(principal.session_id, RevokeReason::Logout, now)
            .await?;
        self.revoke_everywhere(principal.session_id, now).await;
        Ok(())
    }

    /// Needs the current password; ends every session of the user, this one included.
    /// Changes the password given the old one. A wrong old password is a failed login of the
    /// account, limited as login is: a stolen access token cannot guess the password.
    pub async fn change_password(
        &self,
        principal: &Principal,
        old_password: &str,
        new_password: String,
        client: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let credentials = self
            .store
            .credentials_by_id(principal.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let attempt = Attempt::new(credentials.user.email.as_str(), client)
            .ok_or(AuthError::BadCredentials)?;
        self.guard
            .admit(&attempt)
            .await
            .map_err(AuthError::RateLimited)?;
        if !self
            .hasher
            .verify(old_password, &credentials.password_hash)
            .await?
        {
            self.guard.failed(attempt).await;
            return Err(AuthError::BadCredentials);
        }
        let new_password = NewPassword::parse(new_password, &credentials.user.email)
            .map_err(|e| AuthError::WeakPassword(vec![FieldError::new("new_password", e)]))?;
        let hash = self.hasher.hash(new_password.expose()).await?;
        let now = self.clock.now();
        let revoked = self
            .store
            .change_password(principal.user_id, &hash, now)
            .await?;
        for session in revoked {
            self.revoke_everywhere(session, now).await;
        }
        // The caller's own session is on that list, but revoke it here too in case the store
        // saw it as revoked already.
        self.revoke_everywhere(principal.session_id, now).await;
        Ok(())
    }

    /// The access-token check: signature, expiry, and the in-memory revocation list. Reads no
    /// database row.
    pub fn authenticate(&self, access_token: &str) -> Result<Principal, AuthError> {
        let principal = self
            .tokens
            .verify(access_token, self.clock.now())
            .map_err(|_| AuthError::InvalidToken)?;
        if self.revoked.is_revoked(&principal.session_id) {
            return Err(AuthError::InvalidToken);
        }
        Ok(principal)
    }

    /// Gives `user` a new role (an admin's decision). Their sessions end, on every instance:
    /// their tokens carry the old role. An admin cannot change their own role, so the last admin
    /// cannot demote themselves by mistake.
    pub async fn set_role(
        &self,
        by: &Principal,
        user: UserId,
        role: Role,
    ) -> Result<User, AuthError> {
        if by.user_id == user {
            return Err(AuthError::OwnRole);
        }
        for _ in 0..5 {
            let current = self
                .store
                .user_by_id(user)
                .await?
                .ok_or(AuthError::Store(StoreError::NotFound))?;
            let now = self.clock.now();
            let audit = AuditEntry::new(
                Actor::User(by.user_id),
                now,
                "user.role_changed",
                user,
                Some(serde_json::json!({ "role": current.role.as_str() })),
                Some(serde_json::json!({ "role": role.as_str() })),
            );
            let Some(revoked) = self
                .store
                .set_role(user, current.role, role, now, &audit)
                .await?
            else {
                // Another admin changed it since it was read: decide on what it is now.
                continue;
            };
            for session in revoked {
                self.revoke_everywhere(session, now).await;
            }
            return Ok(User { role, ..current });
        }
        Err(AuthError::Store(StoreError::Unavailable(
            "the role kept changing under this request; try again".into(),
        )))
    }

    pub async fn user(&self, id: UserId) -> Result<Option<User>, AuthError> {
        Ok(self.store.user_by_id(id).await?)
    }

    /// Makes `count` customer accounts that cannot log in, each with a session and an access
    /// token: buyers for load tests, without paying for `count` password hashes.
    pub async fn mint_buyers(
        &self,
        by: Actor,
        count: usize,
    ) -> Result<Vec<(UserId, String)>, AuthError> {
        let now = self.clock.now();
        let buyers: Vec<(User, SessionId)> = (0..count)
            .map(|_| {
                let id = UserId::new();
                let user = User {
                    id,
                    email: Email::parse(&format!(
                        "buyer-{}@loadtest.invalid",
                        id.as_uuid().simple()
                    ))
                    .map_err(|e| AuthError::Signing(e.to_string()))?,
                    name: DisplayName::parse("Load-test buyer")
                        .map_err(|e| AuthError::Signing(e.to_string()))?,
                    role: Role::Customer,
                    created_at: now,
                };
                Ok((user, SessionId::new()))
            })
            .collect::<Result<_, AuthError>>()?;
        // "!" is no PHC string: verification always fails, so these accounts cannot log in.
        let audit = AuditEntry::new(
            by,
            now,
            "user.buyers_minted",
            "loadtest",
            None,
            Some(serde_json::json!({ "count": count })),
        );
        self.store.insert_buyers(&buyers, "!", &audit).await?;
        buyers
            .iter()
            .map(|(user, session)| {
                let token = self
                    .tokens
                    .issue(user, *session, now)
                    .map_err(|e| AuthError::Signing(e.to_string()))?;
                Ok((user.id, token))
            })
            .collect()
    }

    pub async fn list_users(&self, page: PageRequest) -> Result<Page<User>, AuthError> {
        Ok(self.store.list_users(page).await?)
    }

    /// Periodic upkeep: forgets revocations whose tokens have expired and idle rate-limit keys.
    pub fn housekeeping(&self) {
        self.revoked.prune(self.clock.now());
        self.guard.retain_recent();
    }

    pub fn access_ttl(&self) -> Duration {
        self.tokens.ttl()
    }

    fn forget_after(&self, session: SessionId, revoked_at: OffsetDateTime) {
        self.revoked.revoke(session, revoked_at + self.tokens.ttl());
    }

    /// Revokes `session` here and, in scaled mode, tells every other instance. Should the news
    /// not go out (Redis away), the others learn it from the records at their next
    /// `sync_revocations`.
    async fn revoke_everywhere(&self, session: SessionId, revoked_at: OffsetDateTime) {
        self.forget_after(session, revoked_at);
        if let Some(news) = &self.news
            && let Err(err) = news.publish(session, revoked_at + self.tokens.ttl()).await
        {
            tracing::warn!(%err, %session, "cannot tell the other instances of a revoked session; they learn it from the records");
        }
    }

    /// A revocation another instance made (its news): refused here too from now on.
    pub fn revoked_elsewhere(&self, session: SessionId, forget_after: OffsetDateTime) {
        self.revoked.revoke(session, forget_after);
    }

    /// Reads again from the records every session revoked recently enough that its access
    /// tokens may still be presented: what news of revocations missed (an instance that was
    /// not listening) is refused after this. Returns how many the records hold.
    pub async fn sync_revocations(&self) -> Result<usize, AuthError> {
        let now = self.clock.now();
        let revoked = self
            .store
            .sessions_revoked_since(now - self.tokens.ttl())
            .await?;
        for (session, revoked_at) in &revoked {
            self.forget_after(*session, *revoked_at);
        }
        Ok(revoked.len())
    }

    fn new_refresh(&self, now: OffsetDateTime) -> (String, RefreshTokenRecord) {
        let (token, hash) = tokens::new_refresh_token();
        let record = RefreshTokenRecord {
            hash,
            issued_at: now,
            expires_at: now + self.refresh_ttl,
        };
        (token, record)
    }

    fn token_pair(
        &self,
        user: &User,
        session: SessionId,
        second_factor: bool,
        refresh_token: String,
        now: OffsetDateTime,
    ) -> Result<TokenPair, AuthError> {
        let access_token = self
            .tokens
            .issue_with(user, session, second_factor, now)
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(TokenPair {
            access_token,
            refresh_token,
            expires_in: self.tokens.ttl(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_reports_every_bad_field() {
        let Err(AuthError::Invalid(errors)) = Registration::parse("nope", "short".into(), " ")
        else {
            panic!("expected Invalid");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_ref()).collect();
        assert_eq!(fields, ["email", "name"]);
    }

    #[test]
    fn a_weak_password_alone_is_its_own_error() {
        let err = Registration::parse("a@example.com", "a@example.com".into(), "A").unwrap_err();
        let AuthError::WeakPassword(errors) = err else {
            panic!("expected WeakPassword, got {err:?}");
        };
        assert_eq!(errors[0].field, "password");
        assert!(Registration::parse("a@example.com", "long enough".into(), "A").is_ok());
    }
}
