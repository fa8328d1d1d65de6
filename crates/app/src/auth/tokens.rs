//! Access tokens (HS256 JWTs carrying user, role and session) and opaque refresh tokens. An access
//! token is checked by signature and expiry alone, with no database read; the session it names is
//! checked against the in-memory revocation list by the caller.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flashmart_domain::{Role, SessionId, User, UserId};
use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
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

impl Principal {
    /// The caller as the audit log names them.
    pub const fn actor(&self) -> crate::audit::Actor {
        crate::audit::Actor::User(self.user_id)
    }
}

/// Claims as issued.
#[derive(Debug, Serialize)]
struct Claims {
    iss: &'static str,
    sub: Uuid,
    sid: Uuid,
    role: Role,
    /// Opened with a second factor.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tfa: bool,
    iat: i64,
    exp: i64,
}

/// Claims as read back: exactly the issued ones (a claim this server never writes, `aud` or
/// `nbf` say, makes the token invalid rather than ignored).
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadClaims<'a> {
    #[serde(borrow)]
    iss: &'a str,
    sub: Uuid,
    sid: Uuid,
    role: Role,
    #[serde(default)]
    tfa: bool,
    #[allow(
        dead_code,
        reason = "in every token issued; only the expiry is checked"
    )]
    iat: i64,
    exp: i64,
}

/// The longest claims segment accepted, decoded (issued claims are about 200 bytes).
const MAX_CLAIMS_BYTES: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token malformed or signature invalid")]
    Invalid,
    #[error("token expired")]
    Expired,
}

pub struct AccessTokens {
    encoding: EncodingKey,
    /// The first segment of every token this server issues; no other header is accepted, so
    /// neither `alg: none` nor any other algorithm gets as far as a signature check.
    header: String,
    /// HMAC-SHA256 keyed with the secret, cloned per check (keying hashes two blocks).
    mac: Hmac<Sha256>,
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
        // The header as `jsonwebtoken::encode` writes it: its JSON, base64url without padding.
        let header = serde_json::to_vec(&Header::new(Algorithm::HS256))
            .map(|json| URL_SAFE_NO_PAD.encode(json))
            .unwrap_or_default();
        Self {
            encoding: EncodingKey::from_secret(secret),
            header,
            mac: Hmac::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
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
            iss: ISSUER,
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
        let mut buf = [0u8; MAX_CLAIMS_BYTES];
        let claims = self.check(token, &mut buf)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let principal = Principal {
            user_id: UserId::from_uuid(claims.sub),
            role: claims.role,
            session_id: SessionId::from_uuid(claims.sid),
            second_factor: claims.tfa,
        };
        self.verified.verified(token, principal, now, claims.exp);
        Ok(principal)
    }

    /// The claims of `token` if it is `header.claims.signature` with this server's header, a
    /// valid HMAC-SHA256 of `header.claims` (compared in constant time) and this issuer; expiry
    /// is the caller's, against its clock. Written for the hot path: no allocation, the key's
    /// HMAC state reused, the claims decoded into `buf` and parsed in place.
    fn check<'b>(
        &self,
        token: &str,
        buf: &'b mut [u8; MAX_CLAIMS_BYTES],
    ) -> Result<ReadClaims<'b>, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let (header, claims) = signed.split_once('.').ok_or(TokenError::Invalid)?;
        if header != self.header {
            return Err(TokenError::Invalid);
        }
        // 32 bytes are 43 characters; the buffer has room for the decoder's estimate.
        let mut sig = [0u8; 48];
        if signature.len() != 43 || URL_SAFE_NO_PAD.decode_slice(signature, &mut sig) != Ok(32) {
            return Err(TokenError::Invalid);
        }
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig[..32])
            .map_err(|_| TokenError::Invalid)?;
        let len = URL_SAFE_NO_PAD
            .decode_slice(claims, &mut buf[..])
            .map_err(|_| TokenError::Invalid)?;
        let claims = match read_as_issued(&buf[..len]) {
            Some(claims) => claims,
            None => serde_json::from_slice(&buf[..len]).map_err(|_| TokenError::Invalid)?,
        };
        if claims.iss != ISSUER {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

/// The claims of a token if they are laid out exactly as `issue` writes them (the fields in its
/// order, no space), read without a JSON parser: a first-seen token (every one of a stampede's
/// buyers) spent more on `serde_json` than on its HMAC. Anything else, a token of another
/// layout included, is left to `serde_json`, which accepts every layout this does and rules on
/// the rest; this runs only once the signature has matched.
fn read_as_issued(json: &[u8]) -> Option<ReadClaims<'static>> {
    fn field<'j>(rest: &'j [u8], name: &[u8]) -> Option<&'j [u8]> {
        rest.strip_prefix(name)
    }
    fn uuid(rest: &[u8]) -> Option<(Uuid, &[u8])> {
        let (text, rest) = rest.split_at_checked(36)?;
        Some((Uuid::try_parse_ascii(text).ok()?, rest.strip_prefix(b"\"")?))
    }
    fn int(rest: &[u8]) -> Option<(i64, &[u8])> {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (text, rest) = rest.split_at(digits);
        // JSON has no leading zeros.
        if text.len() > 1 && text[0] == b'0' {
            return None;
        }
        Some((std::str::from_utf8(text).ok()?.parse().ok()?, rest))
    }
    let rest = field(json, br#"{"iss":"flashmart","sub":""#)?;
    let (sub, rest) = uuid(rest)?;
    let (sid, rest) = uuid(field(rest, br#","sid":""#)?)?;
    let rest = field(rest, br#","role":""#)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let role: Role = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let rest = &rest[end + 1..];
    let (tfa, rest) = match rest.strip_prefix(br#","tfa":true"#) {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let (iat, rest) = int(field(rest, br#","iat":"#)?)?;
    let (exp, rest) = int(field(rest, br#","exp":"#)?)?;
    (rest == b"}").then_some(ReadClaims {
        iss: ISSUER,
        sub,
        sid,
        role,
        tfa,
        iat,
        exp,
    })
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
    fn issued_claims_are_read_as_serde_reads_them_and_nothing_else_is() {
        let now = OffsetDateTime::now_utc();
        let t = tokens();
        for (role, tfa) in [
            (Role::Customer, false),
            (Role::Operator, true),
            (Role::Admin, false),
        ] {
            let jwt = t
                .issue_with(&user(role), SessionId::new(), tfa, now)
                .unwrap();
            let claims = URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap();
            let fast = read_as_issued(&claims).expect("the issued layout");
            let slow: ReadClaims<'_> = serde_json::from_slice(&claims).unwrap();
            assert_eq!(fast, slow);
            assert_eq!((fast.role, fast.tfa), (role, tfa));
            // Any other layout is serde's to judge: spaces, another order, an extra field,
            // another issuer, a cut.
            let text = String::from_utf8(claims).unwrap();
            for other in [
                text.replacen(',', ", ", 1),
                text.replacen(r#""iss":"flashmart","#, "", 1)
                    .replacen('{', r#"{"iss":"flashmart","#, 1)
                    .replacen(r#","iat""#, r#","nbf":1,"iat""#, 1),
                text.replacen("flashmart", "flashmarx", 1),
                text[..text.len() - 1].to_owned(),
                format!("{text} "),
                text.replacen(r#""iat":"#, r#""iat":0"#, 1),
            ] {
                assert_eq!(read_as_issued(other.as_bytes()), None, "{other}");
            }
        }
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

    /// `header.claims.signature` signed with the test key, whatever the header and claims say.
    fn signed(header: &str, claims: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    #[test]
    fn only_the_issued_header_and_claims_pass_even_when_signed_with_the_key() {
        let now = OffsetDateTime::now_utc();
        let header = r#"{"typ":"JWT","alg":"HS256"}"#;
        let claims = serde_json::json!({
            "iss": "flashmart", "sub": Uuid::now_v7(), "sid": Uuid::now_v7(),
            "role": "operator", "iat": now.unix_timestamp(), "exp": now.unix_timestamp() + 600,
        });
        // The same shape as issued, made by hand: accepted, so the refusals below are each for
        // the one thing changed.
        let p = tokens().verify(&signed(header, &claims), now).unwrap();
        assert_eq!(p.role, Role::Operator);
        assert!(!p.second_factor);

        let mut other_issuer = claims.clone();
        other_issuer["iss"] = "someone-else".into();
        let mut audience = claims.clone();
        audience["aud"] = "flashmart".into();
        let mut no_expiry = claims.clone();
        no_expiry.as_object_mut().unwrap().remove("exp");
        let mut long = claims.clone();
        long["role"] = "x".repeat(MAX_CLAIMS_BYTES).into();
        for (why, token) in [
            (
                "another algorithm named",
                signed(r#"{"typ":"JWT","alg":"HS384"}"#, &claims),
            ),
            (
                "a key id added",
                signed(r#"{"typ":"JWT","alg":"HS256","kid":"1"}"#, &claims),
            ),
            (
                "the header's fields reordered",
                signed(r#"{"alg":"HS256","typ":"JWT"}"#, &claims),
            ),
            ("another issuer", signed(header, &other_issuer)),
            ("a claim never issued", signed(header, &audience)),
            ("no expiry", signed(header, &no_expiry)),
            ("claims too long", signed(header, &long)),
        ] {
            assert_eq!(
                tokens().verify(&token, now),
                Err(TokenError::Invalid),
                "{why}"
            );
        }

        let genuine = signed(header, &claims);
        let (rest, signature) = genuine.rsplit_once('.').unwrap();
        for token in [
            format!("{rest}.{signature}.x"),
            format!("{rest}.{}", &signature[..42]),
            format!("{rest}.{signature}A"),
            format!("{rest}."),
            rest.to_owned(),
        ] {
            assert_eq!(
                tokens().verify(&token, now),
                Err(TokenError::Invalid),
                "{token}"
            );
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
