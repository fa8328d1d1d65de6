//! SIGHUP: the configuration is read again (the same file and environment as at start) and what
//! can change while the server runs is put in force: `log.level` and `rate_limit.*`. Each change
//! is logged by its key (`log.level: info -> debug`); keys that only a restart applies are named
//! when they changed; a file that no longer parses or validates changes nothing and says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use flashmart_app::webhooks::Webhooks;
use flashmart_http::limits::RateLimits;
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::{Config, Secret};

/// One key whose value differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted, as in the file: `rate_limit.public.per_ip_per_minute`.
    pub key: String,
    pub from: String,
    pub to: String,
}

/// Whether a change of `key` is put in force without a restart.
pub fn applies_live(key: &str) -> bool {
    key == "log.level" || key.starts_with("rate_limit.") || key.starts_with("webhooks.")
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), "(unset)".to_owned());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn secret_text(s: Option<&Secret>) -> Option<&str> {
    s.map(Secret::expose)
}

/// Every key whose value differs, in key order. Secrets are compared but never shown.
pub fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(
        "",
        &serde_json::to_value(old).unwrap_or(Value::Null),
        &mut a,
    );
    flatten(
        "",
        &serde_json::to_value(new).unwrap_or(Value::Null),
        &mut b,
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let unset = "(unset)".to_owned();
    let mut out: Vec<Change> = keys
        .into_iter()
        .filter_map(|k| {
            let (from, to) = (a.get(k).unwrap_or(&unset), b.get(k).unwrap_or(&unset));
            (from != to).then(|| Change {
                key: k.clone(),
                from: from.clone(),
                to: to.clone(),
            })
        })
        .collect();
    // Secrets serialise as "***" whatever they hold: compare what they hold.
    let secrets = [
        (
            "auth.jwt_secret",
            secret_text(old.auth.jwt_secret.as_ref()),
            secret_text(new.auth.jwt_secret.as_ref()),
        ),
        (
            "payments.sandbox_secret",
            secret_text(old.payments.sandbox_secret.as_ref()),
            secret_text(new.payments.sandbox_secret.as_ref()),
        ),
        (
            "database.url",
            secret_text(old.database.url.as_ref()),
            secret_text(new.database.url.as_ref()),
        ),
        (
            "redis.url",
            secret_text(old.redis.url.as_ref()),
            secret_text(new.redis.url.as_ref()),
        ),
    ];
    for (key, from, to) in secrets {
        if from != to && !out.iter().any(|c| c.key == key) {
            let shown = |s: Option<&str>| if s.is_some() { "***" } else { "(unset)" }.to_owned();
            out.push(Change {
                key: key.to_owned(),
                from: shown(from),
                to: shown(to),
            });
        }
    }
    out.sort_by(|x, y| x.key.cmp(&y.key));
    out
}

/// What one reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Changes now in force.
    pub applied: Vec<Change>,
    /// Changed keys that only a restart applies.
    pub pending: Vec<String>,
}

/// Reads the configuration again on request and applies what it can.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    /// The configuration in force: as started, with the live keys of every reload since.
    running: Mutex<Config>,
    limits: Arc<RateLimits>,
    webhooks: Arc<Webhooks>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        running: Config,
        limits: Arc<RateLimits>,
        webhooks: Arc<Webhooks>,
    ) -> Self {
        Self {
            path,
            running: Mutex::new(running),
            limits,
            webhooks,
        }
    }

    /// Reads the configuration and puts its live keys in force; logs what it did. A
    /// configuration that cannot be read or is invalid changes nothing.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let next = match Config::load(self.path.as_deref()) {
            Ok(next) => next,
            Err(err) => {
                let why = err.to_string();
                tracing::error!(error = %why, "configuration not reloaded: the running configuration stays");
                return Err(why);
            }
        };
        if let Err(why) = crate::logging::check_level(&next.log.level) {
            let why = format!("log.level: {why}");
            tracing::error!(error = %why, "configuration not reloaded: the running configuration stays");
            return Err(why);
        }
        let mut running = self.running.lock();
        let all = changes(&running, &next);
        let mut done = Reloaded::default();
        if all.iter().any(|c| c.key == "log.level")
            && let Err(why) = crate::logging::set_level(&next.log.level)
        {
            tracing::error!(error = %why, "log.level could not be applied");
        }
        if all.iter().any(|c| c.key.starts_with("rate_limit.")) {
            self.limits.reload(&crate::wiring::limit_settings(&next));
        }
        if all.iter().any(|c| c.key.starts_with("webhooks.")) {
            self.webhooks.set_settings(next.webhooks.settings());
        }
        for change in all {
            if applies_live(&change.key) {
                tracing::info!(key = %change.key, "{}: {} -> {}", change.key, change.from, change.to);
                done.applied.push(change);
            } else {
                done.pending.push(change.key);
            }
        }
        running.log.level = next.log.level.clone();
        running.rate_limit = next.rate_limit.clone();
        running.webhooks = next.webhooks.clone();
        if !done.pending.is_empty() {
            tracing::warn!(
                keys = %done.pending.join(", "),
                "changed in the configuration, applied only by a restart: {}",
                done.pending.join(", ")
            );
        }
        tracing::info!(
            applied = done.applied.len(),
            pending = done.pending.len(),
            "configuration reloaded"
        );
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_by_their_dotted_keys() {
        let old = Config::default();
        let mut new = Config::default();
        new.log.level = "debug".into();
        new.rate_limit.public.per_ip_per_minute = 7;
        new.http.request_timeout_secs += 1;
        let got = changes(&old, &new);
        let keys: Vec<&str> = got.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request_timeout_secs",
                "log.level",
                "rate_limit.public.per_ip_per_minute"
            ]
        );
        let level = &got[1];
        assert_eq!((level.from.as_str(), level.to.as_str()), ("info", "debug"));
        assert!(applies_live("log.level") && applies_live("rate_limit.public.per_ip_per_minute"));
        assert!(!applies_live("http.request_timeout_secs"));
    }

    #[test]
    fn secrets_are_compared_but_never_shown() {
        let mut old = Config::default();
        old.auth.jwt_secret = Some(Secret::new("a".repeat(32)));
        let mut new = old.clone();
        new.auth.jwt_secret = Some(Secret::new("b".repeat(32)));
        let got = changes(&old, &new);
        assert_eq!(
            got,
            [Change {
                key: "auth.jwt_secret".into(),
                from: "***".into(),
                to: "***".into()
            }]
        );
        assert!(changes(&old, &old).is_empty());
    }
}
