//! Email addresses, parsed once at the edge and stored in one canonical (lower-case) form so that
//! uniqueness and login do not depend on how a user typed the address.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest address SMTP can carry (RFC 5321 path limit minus the angle brackets).
const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_LABEL_LEN: usize = 63;

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_LEN} characters")]
    TooLong,
    #[error("must contain exactly one @")]
    At,
    #[error("the part before @ is not valid")]
    Local,
    #[error("the domain is not valid")]
    Domain,
}

impl Email {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.chars().count() > MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let lower = trimmed.to_lowercase();
        let mut parts = lower.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(EmailError::At);
        };
        if !valid_local(local) {
            return Err(EmailError::Local);
        }
        if !valid_domain(domain) {
            return Err(EmailError::Domain);
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }
}

fn valid_local(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"\"(),:;<>[\\]".contains(c))
}

fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL_LEN
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

impl TryFrom<String> for Email {
    type Error = EmailError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalises_ordinary_addresses() {
        let email = Email::parse("  Ada.Lovelace+shop@Example.CO.uk ").unwrap();
        assert_eq!(email.as_str(), "ada.lovelace+shop@example.co.uk");
        assert_eq!(email.local_part(), "ada.lovelace+shop");
    }

    #[test]
    fn accepts_international_domains() {
        assert!(Email::parse("kunde@bücher.de").is_ok());
    }

    #[test]
    fn refuses_malformed_addresses() {
        let cases = [
            ("", EmailError::Empty),
            ("   ", EmailError::Empty),
            ("plainaddress", EmailError::At),
            ("a@b@example.com", EmailError::At),
            ("@example.com", EmailError::Local),
            (".ada@example.com", EmailError::Local),
            ("ada.@example.com", EmailError::Local),
            ("a..b@example.com", EmailError::Local),
            ("a b@example.com", EmailError::Local),
            ("ada@", EmailError::Domain),
            ("ada@localhost", EmailError::Domain),
            ("ada@example..com", EmailError::Domain),
            ("ada@-example.com", EmailError::Domain),
            ("ada@example.123", EmailError::Domain),
            ("ada@exa_mple.com", EmailError::Domain),
        ];
        for (raw, want) in cases {
            assert_eq!(Email::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn refuses_overlong_addresses() {
        let raw = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&raw), Err(EmailError::TooLong));
        let local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(Email::parse(&local), Err(EmailError::Local));
    }

    #[test]
    fn deserialising_validates() {
        let ok: Email = serde_json::from_str("\"X@Example.com\"").unwrap();
        assert_eq!(ok.as_str(), "x@example.com");
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn parsing_is_idempotent(local in "[a-zA-Z0-9+_-]{1,20}", domain in "[a-z]{1,10}\\.[a-z]{2,6}") {
            let first = Email::parse(&format!("{local}@{domain}")).unwrap();
            let second = Email::parse(first.as_str()).unwrap();
            prop_assert_eq!(first, second);
        }

        #[test]
        fn never_panics(raw in "\\PC{0,300}") {
            let _ = Email::parse(&raw);
        }
    }
}
