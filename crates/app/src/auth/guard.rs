//! What stands between a password guesser and an account, without locking its owner out: failed
//! logins are counted per (email, client address), per client address (an IPv6 client by its
//! /64) and, far higher, per email from everywhere. A success costs nothing, so the owner who
//! knows the password is refused only when the account is under attack from many networks at
//! once. A wrong old password on a password change counts as a failed login of that account.

use std::net::IpAddr;

use crate::rate_limit::{FailureCounter, RetryAfter, client_key};

/// The longest email anyone can have (RFC 5321's path limit less its angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// Failed logins allowed a minute.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub enabled: bool,
    pub per_ip: u32,
    pub per_email_ip: u32,
    pub per_email: u32,
}

#[derive(Debug)]
pub(super) struct LoginGuard {
    by_ip: FailureCounter<IpAddr>,
    by_email_ip: FailureCounter<(String, Option<IpAddr>)>,
    by_email: FailureCounter<String>,
}

/// One login attempt's keys.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    email: String,
    ip: Option<IpAddr>,
}

impl Attempt {
    /// `None` for an email no account can have: it is refused before any key is made.
    pub(super) fn new(email: &str, client: Option<IpAddr>) -> Option<Self> {
        let email = email.trim();
        (email.len() <= MAX_EMAIL_BYTES).then(|| Self {
            email: email.to_lowercase(),
            ip: client.map(client_key),
        })
    }
}

impl LoginGuard {
    pub(super) fn new(limits: LoginLimits) -> Self {
        Self {
            by_ip: FailureCounter::per_minute(limits.per_ip, limits.enabled),
            by_email_ip: FailureCounter::per_minute(limits.per_email_ip, limits.enabled),
            by_email: FailureCounter::per_minute(limits.per_email, limits.enabled),
        }
    }

    /// Whether this attempt may be checked at all (before any hashing).
    pub(super) fn admit(&self, attempt: &Attempt) -> Result<(), RetryAfter> {
        if let Some(ip) = attempt.ip {
            self.by_ip.check(&ip)?;
        }
        self.by_email_ip
            .check(&(attempt.email.clone(), attempt.ip))?;
        self.by_email.check(&attempt.email)
    }

    pub(super) fn failed(&self, attempt: Attempt) {
        if let Some(ip) = attempt.ip {
            self.by_ip.record(ip);
        }
        self.by_email.record(attempt.email.clone());
        self.by_email_ip.record((attempt.email, attempt.ip));
    }

    pub(super) fn retain_recent(&self) {
        self.by_ip.retain_recent();
        self.by_email_ip.retain_recent();
        self.by_email.retain_recent();
    }
}
