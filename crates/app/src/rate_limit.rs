//! In-process rate limits: one token bucket (GCRA) per key, held in a concurrent map. A limiter
//! built disabled lets everything through, which is how `rate_limit.enabled = false` switches
//! limits off for load tests on one machine.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A request over its limit, and how long until the next one would be let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up, as the `Retry-After` header wants them.
    pub fn as_secs_ceil(&self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    inner: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Allows `per_minute` requests a minute per key, all of which may come at once.
    /// `per_minute == 0` or `enabled == false` means no limit.
    pub fn per_minute(per_minute: u32, enabled: bool) -> Self {
        let inner = NonZeroU32::new(per_minute)
            .filter(|_| enabled)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        Self {
            inner,
            clock: DefaultClock::default(),
        }
    }

    pub fn disabled() -> Self {
        Self::per_minute(0, false)
    }

    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        match &self.inner {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(key)
                .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now()))),
        }
    }

    /// Forgets keys whose buckets are full again; call now and then so the map does not grow
    /// with every client ever seen.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_quota_per_key() {
        let limiter = KeyedLimiter::per_minute(3, true);
        for _ in 0..3 {
            assert!(limiter.check(&"a").is_ok());
        }
        let retry = limiter.check(&"a").unwrap_err();
        assert!(retry.0 > Duration::ZERO && retry.0 <= Duration::from_secs(20));
        assert!(retry.as_secs_ceil() >= 1);
        assert!(
            limiter.check(&"b").is_ok(),
            "other keys have their own bucket"
        );
    }

    #[test]
    fn disabled_lets_everything_through() {
        for limiter in [KeyedLimiter::per_minute(1, false), KeyedLimiter::disabled()] {
            for _ in 0..100 {
                assert!(limiter.check(&1u8).is_ok());
            }
        }
    }
}
