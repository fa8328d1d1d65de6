//! Access tokens (HS256 JWTs carrying user, role and session) and opaque refresh tokens. An access
//! token is checked by signature and expiry alone, with no database read; the session it names is
//! checked against the in-memory revocation list by the caller.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashmart_domain::{Role, SessionId, User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::verified::VerifiedTokens;
use crate::ports::TokenHash;

const ISSUER: &str = "flashmart";
const REFRESH_TOKEN_BYTES: usize = 32;
/// Tokens kept verified at most (about 300 bytes each).
const VERIFIED_CAPACITY: usize = 16_384;

/// Who is calling, as proven by a valid access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub session_id: SessionId,
    /// The session was opened with a second factor (TOTP or a recovery code).
    pub second_factor: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: Uuid,
    sid: Uuid,
    role: Role,
    /// Opened with a second factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tfa: bool,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed or signature invalid")]
    Invalid,
    #[error("token expired")]
    Expired,
}

pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    verified: VerifiedTokens,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the injected clock below, not the system's.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            verified: VerifiedTokens::new(VERIFIED_CAPACITY),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(
        &self,
        user: &User,
        session: SessionId,
        now: OffsetDateTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.issue_with(user, session, false, now)
    }

    /// A token for a session opened with a second factor (`second_factor`) or without.
    pub fn issue_with(
        &self,
        user: &User,
        session: SessionId,
        second_factor: bool,
        now: OffsetDateTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: *user.id.as_uuid(),
            sid: *session.as_uuid(),
            role: user.role,
            tfa: second_factor,
            iat: now.unix_timestamp(),
            exp: (now + self.ttl).unix_timestamp(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The token's principal: from the cache of tokens verified lately, or by its signature and
    /// expiry (and then cached).
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Principal, TokenError> {
        let now = now.unix_timestamp();
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| TokenError::Invalid)?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let principal = Principal {
            user_id: UserId::from_uuid(claims.sub),
            role: claims.role,
            session_id: SessionId::from_uuid(claims.sid),
            second_factor: claims.tfa,
        };
        self.verified.insert(token, principal, now, claims.exp);
        Ok(principal)
    }
}

/// A new opaque refresh token and the hash under which it is stored.
pub fn new_refresh_token() -> (String, TokenHash) {
    let mut bytes = [0u8; REFRESH_TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashmart_domain::{DisplayName, Email};

    fn user(role: Role) -> User {
        User {
            id: UserId::new(),
            email: Email::parse("t@example.com").unwrap(),
            name: DisplayName::parse("T").unwrap(),
            role,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn tokens() -> AccessTokens {
        AccessTokens::new(b"0123456789abcdef0123456789abcdef", Duration::minutes(15))
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let t = tokens();
        let u = user(Role::Operator);
        let sid = SessionId::new();
        let now = OffsetDateTime::now_utc();
        let jwt = t.issue(&u, sid, now).unwrap();
        let p = t.verify(&jwt, now + Duration::minutes(14)).unwrap();
        assert_eq!(
            p,
            Principal {
                user_id: u.id,
                role: Role::Operator,
                session_id: sid,
                second_factor: false,
            }
        );
        assert_eq!(
            t.verify(&jwt, now + Duration::minutes(15)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn another_key_or_a_tampered_payload_is_refused() {
        let now = OffsetDateTime::now_utc();
        let jwt = tokens()
            .issue(&user(Role::Customer), SessionId::new(), now)
            .unwrap();
        let other = AccessTokens::new(b"another-secret-another-secret-xx", Duration::minutes(15));
        assert_eq!(other.verify(&jwt, now), Err(TokenError::Invalid));

        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let payload = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
        let forged = String::from_utf8(payload)
            .unwrap()
            .replace("\"customer\"", "\"admin\"");
        parts[1] = URL_SAFE_NO_PAD.encode(forged);
        assert_eq!(
            tokens().verify(&parts.join("."), now),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let now = OffsetDateTime::now_utc();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": "flashmart", "sub": Uuid::now_v7(), "sid": Uuid::now_v7(),
            "role": "admin", "iat": now.unix_timestamp(), "exp": now.unix_timestamp() + 600,
        });
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert_eq!(tokens().verify(&token, now), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let (a, ha) = new_refresh_token();
        let (b, hb) = new_refresh_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_refresh_token(&a), ha);
    }
}
