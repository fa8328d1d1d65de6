//! What stands between a password guesser and an account, without locking its owner out: failed
//! logins are counted per (email, client address), per client address (an IPv6 client by its
//! /64) and, far higher, per email from everywhere. A success costs nothing, so the owner who
//! knows the password is refused only when the account is under attack from many networks at
//! once. A wrong old password on a password change counts as a failed login of that account.
//!
//! One process counts in memory; the instances of a scaled shop count in Redis
//! (`SharedLimits`), so that a guesser's budget is the same whichever instance it reaches.

use std::net::IpAddr;
use std::sync::Arc;

use crate::ports::SharedLimits;
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
    /// Counted in Redis instead of the counters above, with these limits.
    shared: Option<(Arc<dyn SharedLimits>, LoginLimits)>,
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
    pub(super) fn new(limits: LoginLimits, shared: Option<Arc<dyn SharedLimits>>) -> Self {
        let local = shared.is_none() && limits.enabled;
        Self {
            by_ip: FailureCounter::per_minute(limits.per_ip, local),
            by_email_ip: FailureCounter::per_minute(limits.per_email_ip, local),
            by_email: FailureCounter::per_minute(limits.per_email, local),
            shared: shared
                .filter(|_| limits.enabled)
                .map(|shared| (shared, limits)),
        }
    }

    /// Whether this attempt may be checked at all (before any hashing).
    pub(super) async fn admit(&self, attempt: &Attempt) -> Result<(), RetryAfter> {
        if let Some((shared, limits)) = &self.shared {
            for (key, limit) in shared_keys(attempt, limits) {
                match shared.failures(&key).await {
                    Ok((failures, left)) if failures >= limit => return Err(RetryAfter(left)),
                    Ok(_) => {}
                    // Redis away: the attempt is let through rather than every login refused.
                    Err(err) => tracing::warn!(%err, "cannot read the shared login limits"),
                }
            }
            return Ok(());
        }
        if let Some(ip) = attempt.ip {
            self.by_ip.check(&ip)?;
        }
        self.by_email_ip
            .check(&(attempt.email.clone(), attempt.ip))?;
        self.by_email.check(&attempt.email)
    }

    pub(super) async fn failed(&self, attempt: Attempt) {
        if let Some((shared, limits)) = &self.shared {
            for (key, _) in shared_keys(&attempt, limits) {
                if let Err(err) = shared.record_failure(&key).await {
                    tracing::warn!(%err, "cannot count a failed login in the shared limits");
                }
            }
            return;
        }
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

/// The shared counters an attempt is checked against, each with its limit (those set to 0, no
/// limit, left out).
fn shared_keys(attempt: &Attempt, limits: &LoginLimits) -> Vec<(String, u32)> {
    let ip = attempt
        .ip
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let mut keys = Vec::with_capacity(3);
    if attempt.ip.is_some() {
        keys.push((format!("login:ip:{ip}"), limits.per_ip));
    }
    keys.push((
        format!("login:email_ip:{}|{ip}", attempt.email),
        limits.per_email_ip,
    ));
    keys.push((format!("login:email:{}", attempt.email), limits.per_email));
    keys.retain(|(_, limit)| *limit > 0);
    keys
}
