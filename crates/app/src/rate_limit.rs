//! In-process rate limits: one token bucket (GCRA) per key, held in a concurrent map. A limiter
//! built disabled lets everything through, which is how `rate_limit.enabled = false` switches
//! limits off for load tests on one machine.

use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;

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

/// The key a client address is limited by: an IPv4 address as it is, an IPv6 address by its
/// /64 (one subscriber's network: whoever holds one /64 holds all of its addresses).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Counts failures per key in windows of a minute: `check` refuses a key that failed `limit`
/// times in its current window, and only `record` counts (a success costs nothing), so a
/// budget of failures is spent by whoever fails, never by the one who knows the password.
#[derive(Debug)]
pub struct FailureCounter<K: Hash + Eq> {
    limit: u32,
    counts: DashMap<K, (Instant, u32)>,
}

/// The window failures are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

impl<K: Hash + Eq> FailureCounter<K> {
    /// `limit == 0` or `enabled == false`: no limit.
    pub fn per_minute(limit: u32, enabled: bool) -> Self {
        Self {
            limit: if enabled { limit } else { 0 },
            counts: DashMap::new(),
        }
    }

    pub fn check(&self, key: &K) -> Result<(), RetryAfter> {
        if self.limit == 0 {
            return Ok(());
        }
        let Some(entry) = self.counts.get(key) else {
            return Ok(());
        };
        let (since, failures) = *entry;
        let elapsed = since.elapsed();
        if elapsed < FAILURE_WINDOW && failures >= self.limit {
            Err(RetryAfter(FAILURE_WINDOW - elapsed))
        } else {
            Ok(())
        }
    }

    pub fn record(&self, key: K) {
        if self.limit == 0 {
            return;
        }
        let mut entry = self.counts.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= FAILURE_WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Forgets keys whose window is over.
    pub fn retain_recent(&self) {
        self.counts
            .retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_count_and_only_for_their_key() {
        let counter = FailureCounter::per_minute(2, true);
        assert!(counter.check(&"a").is_ok());
        counter.record("a");
        assert!(counter.check(&"a").is_ok());
        counter.record("a");
        let retry = counter.check(&"a").unwrap_err();
        assert!(retry.0 <= Duration::from_secs(60));
        assert!(counter.check(&"b").is_ok());
        let off = FailureCounter::per_minute(1, false);
        off.record("a");
        off.record("a");
        assert!(off.check(&"a").is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(client_key(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(client_key(mapped), v4);
    }

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
