//! Time as a port: use cases ask the clock instead of the system, so tests can move time forward
//! (token expiry, payment windows) without sleeping.

use std::fmt;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> OffsetDateTime;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until told to move; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Starts at the current system time, truncated to whole seconds.
    pub fn starting_now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self::new(now.replace_nanosecond(0).unwrap_or(now))
    }

    /// Starts at twenty past the current hour (UTC): far from an hour's edge, so that hourly
    /// schedules behave the same whenever a test runs.
    pub fn starting_mid_hour() -> Self {
        let now = OffsetDateTime::now_utc();
        let hour = now.unix_timestamp() - now.unix_timestamp().rem_euclid(3600);
        Self::new(OffsetDateTime::from_unix_timestamp(hour + 20 * 60).unwrap_or(now))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = lock(&self.0);
        *now += by;
    }

    pub fn set(&self, to: OffsetDateTime) {
        *lock(&self.0) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *lock(&self.0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave a timestamp half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
