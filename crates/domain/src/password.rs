//! The password policy. A `NewPassword` exists only if it passed the policy, so a weak password
//! cannot reach the hasher by accident. The plaintext never shows up in `Debug` output.

use std::fmt;

use crate::Email;

pub const MIN_CHARS: usize = 8;
/// Argon2 takes any length, but an unbounded input is a cheap way to burn the server's CPU.
pub const MAX_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {MIN_CHARS} characters")]
    TooShort,
    #[error("must be at most {MAX_CHARS} characters")]
    TooLong,
    #[error("must not be the email address")]
    SameAsEmail,
}

#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: String, email: &Email) -> Result<Self, PasswordError> {
        let chars = raw.chars().count();
        if chars < MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if chars > MAX_CHARS {
            return Err(PasswordError::TooLong);
        }
        let lowered = raw.trim().to_lowercase();
        if lowered == email.as_str() || lowered == email.local_part() {
            return Err(PasswordError::SameAsEmail);
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn email() -> Email {
        Email::parse("grace@example.com").unwrap()
    }

    #[test]
    fn accepts_a_reasonable_password() {
        let pw = NewPassword::parse("correct horse battery".into(), &email()).unwrap();
        assert_eq!(pw.expose(), "correct horse battery");
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        assert_eq!(
            NewPassword::parse("ééééééé".into(), &email()).unwrap_err(),
            PasswordError::TooShort
        );
        assert!(NewPassword::parse("éééééééé".into(), &email()).is_ok());
        assert_eq!(
            NewPassword::parse("x".repeat(MAX_CHARS + 1), &email()).unwrap_err(),
            PasswordError::TooLong
        );
    }

    #[test]
    fn refuses_the_email_in_any_case() {
        for raw in [
            "grace@example.com",
            "GRACE@Example.com",
            " grace@example.com ",
        ] {
            assert_eq!(
                NewPassword::parse(raw.into(), &email()).unwrap_err(),
                PasswordError::SameAsEmail
            );
        }
        let short_local = Email::parse("longname1@example.com").unwrap();
        assert_eq!(
            NewPassword::parse("LongName1".into(), &short_local).unwrap_err(),
            PasswordError::SameAsEmail
        );
    }

    #[test]
    fn debug_hides_the_plaintext() {
        let pw = NewPassword::parse("hunter2hunter2".into(), &email()).unwrap();
        assert!(!format!("{pw:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn anything_shorter_than_the_minimum_is_refused(raw in "\\PC{0,7}") {
            prop_assert_eq!(NewPassword::parse(raw, &email()).unwrap_err(), PasswordError::TooShort);
        }
    }
}
