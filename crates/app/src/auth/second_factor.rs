//! The second factor: enrolling a TOTP secret (shown once, as base32 and an `otpauth://` URI),
//! switching it on with a first code (which hands out ten single-use recovery codes), and
//! checking a login's code. Meant for operators and admins; `auth.require_staff_totp` makes it
//! a must for them.

use flashmart_domain::Role;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use super::totp::{self, SECRET_BYTES};
use super::{AuthError, AuthService, Principal};
use crate::ports::TokenHash;

/// Recovery codes handed out when the second factor is switched on.
pub const RECOVERY_CODES: usize = 10;

/// What enrolling shows the user, once.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The secret in base32, for typing into an authenticator app.
    pub secret: String,
    /// The same as an `otpauth://totp/...` URI, for a QR code.
    pub otpauth_uri: String,
}

/// A recovery code as stored: SHA-256 of its letters and digits, uppercased, dashes dropped.
fn hash_recovery(code: &str) -> TokenHash {
    let normal: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    TokenHash(Sha256::digest(normal.as_bytes()).into())
}

fn new_recovery_code() -> String {
    let mut bytes = [0u8; 7];
    rand::rng().fill_bytes(&mut bytes);
    let letters = totp::base32(&bytes);
    format!("{}-{}", &letters[..5], &letters[5..10]).to_ascii_lowercase()
}

impl AuthService {
    /// Starts (or restarts) enrolling: a new secret, waiting for its first code. Refused when
    /// the second factor is on already.
    pub async fn totp_enroll(&self, principal: &Principal) -> Result<Enrollment, AuthError> {
        let user = self
            .store
            .user_by_id(principal.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let mut secret = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        if !self
            .second
            .begin_totp(user.id, &secret, self.clock.now())
            .await?
        {
            return Err(AuthError::SecondFactorOn);
        }
        let encoded = totp::base32(&secret);
        let label = format!("flashmart:{}", user.email.as_str()).replace('@', "%40");
        Ok(Enrollment {
            otpauth_uri: format!(
                "otpauth://totp/{label}?secret={encoded}&issuer=flashmart&algorithm=SHA1&digits={}&period={}",
                totp::DIGITS,
                totp::STEP_SECS
            ),
            secret: encoded,
        })
    }

    /// Switches the second factor on with a first code from the enrolled secret; returns the
    /// recovery codes (shown this once).
    pub async fn totp_confirm(
        &self,
        principal: &Principal,
        code: &str,
    ) -> Result<Vec<String>, AuthError> {
        let record = self.second.totp(principal.user_id).await?;
        let Some(record) = record.filter(|r| r.enabled_at.is_none()) else {
            return Err(match self.second.totp(principal.user_id).await? {
                Some(_) => AuthError::SecondFactorOn,
                None => AuthError::NoEnrollment,
            });
        };
        let now = self.clock.now();
        let step = totp::matching_step(&record.secret, code, now.unix_timestamp())
            .ok_or(AuthError::SecondFactorWrong)?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<TokenHash> = codes.iter().map(|c| hash_recovery(c)).collect();
        if !self
            .second
            .enable_totp(principal.user_id, step, &hashes, now)
            .await?
        {
            return Err(AuthError::NoEnrollment);
        }
        Ok(codes)
    }

    /// Whether a user with the second factor on gave a good one: a current TOTP code not used
    /// before, or an unused recovery code (used up by this). `Ok(None)` when the user has none
    /// on (nothing to check).
    pub(super) async fn check_second_factor(
        &self,
        user: flashmart_domain::UserId,
        given: Option<&str>,
    ) -> Result<Option<bool>, AuthError> {
        let Some(record) = self
            .second
            .totp(user)
            .await?
            .filter(|r| r.enabled_at.is_some())
        else {
            return Ok(None);
        };
        let Some(given) = given.map(str::trim).filter(|g| !g.is_empty()) else {
            return Err(AuthError::SecondFactorRequired);
        };
        let now = self.clock.now();
        if given.len() == totp::DIGITS as usize {
            let good = match totp::matching_step(&record.secret, given, now.unix_timestamp()) {
                Some(step) => self.second.use_totp_step(user, step).await?,
                None => false,
            };
            return Ok(Some(good));
        }
        Ok(Some(
            self.second
                .use_recovery_code(user, &hash_recovery(given), now)
                .await?,
        ))
    }

    /// Whether staff without a second factor are kept off staff routes
    /// (`auth.require_staff_totp`), and this principal is such a one.
    pub fn lacks_required_second_factor(&self, principal: &Principal) -> bool {
        self.require_staff_totp && principal.role != Role::Customer && !principal.second_factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_matched_however_they_are_typed() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(hash_recovery(&code), hash_recovery(&code.to_uppercase()));
        assert_eq!(hash_recovery(&code), hash_recovery(&code.replace('-', "")));
        assert_ne!(hash_recovery(&code), hash_recovery(&new_recovery_code()));
    }
}
