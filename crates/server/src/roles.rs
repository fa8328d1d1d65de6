//! What one `flashmart serve` process does (`--role api,worker,scheduler`, by default all three):
//!
//! - `api`: the JSON API, the sandbox's pay pages, the contest API and the live event streams.
//! - `worker`: work any number of instances may share: storing reservations from the sales' logs,
//!   asking the payment provider about pending refunds, resending the sandbox's notifications.
//! - `scheduler`: work that runs on exactly one instance at a time, the one holding the scheduler
//!   lease: scheduled sales, expiry of reservations and unpaid orders, unsold units given back,
//!   the payment closer.
//!
//! Every role serves `/healthz`, `/readyz` and `/metrics` on `http.addr`. Roles are split only
//! in scaled mode: the in-process engine keeps live stock in one process's memory.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub scheduler: bool,
}

impl Roles {
    pub const ALL: Self = Self {
        api: true,
        worker: true,
        scheduler: true,
    };

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
}

impl Default for Roles {
    fn default() -> Self {
        Self::ALL
    }
}

impl FromStr for Roles {
    type Err = String;

    /// A comma-separated list of `api`, `worker` and `scheduler` (or `all`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut roles = Self {
            api: false,
            worker: false,
            scheduler: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "api" => roles.api = true,
                "worker" => roles.worker = true,
                "scheduler" => roles.scheduler = true,
                "all" => roles = Self::ALL,
                "" => {}
                other => {
                    return Err(format!(
                        "unknown role {other:?}: the roles are api, worker and scheduler \
                         (comma-separated), or all"
                    ));
                }
            }
        }
        if !(roles.api || roles.worker || roles.scheduler) {
            return Err("name at least one role: api, worker or scheduler".into());
        }
        Ok(roles)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.api, "api"),
            (self.worker, "worker"),
            (self.scheduler, "scheduler"),
        ];
        let mut first = true;
        for (_, name) in names.iter().filter(|(on, _)| *on) {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(name)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_from_a_comma_separated_list() {
        assert_eq!("api,worker,scheduler".parse::<Roles>().unwrap(), Roles::ALL);
        assert_eq!("all".parse::<Roles>().unwrap(), Roles::ALL);
        let worker: Roles = "worker".parse().unwrap();
        assert!(worker.worker && !worker.api && !worker.scheduler);
        assert_eq!(worker.to_string(), "worker");
        let two: Roles = "scheduler, api".parse().unwrap();
        assert_eq!(two.to_string(), "api,scheduler");
        assert!("cron".parse::<Roles>().unwrap_err().contains("\"cron\""));
        assert!("".parse::<Roles>().is_err());
    }
}
