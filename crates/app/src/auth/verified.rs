//! Access tokens verified recently, so that a buyer pressing "buy" again (or an admin page making
//! a dozen calls) does not pay for the HMAC, the base64 and the JSON of its token every time.
//!
//! A hit needs the very same token text (compared in full, never by hash alone) and is good until
//! the token's own expiry or for `FRESH_FOR` after it was verified, whichever is sooner. Revocation
//! is not cached: the caller checks the session against the revocation list on every request. The
//! map holds at most `capacity` tokens; when it is full it is emptied and fills again from the
//! tokens in use (a burst of one-time tokens costs the cache its hits for a while, never memory).

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::tokens::Principal;

/// How long a verification is trusted without repeating it.
const FRESH_FOR_SECS: i64 = 60;

#[derive(Debug, Clone, Copy)]
struct Verified {
    principal: Principal,
    /// Unix seconds after which the entry no longer answers.
    until: i64,
}

#[derive(Debug)]
pub(super) struct VerifiedTokens {
    map: DashMap<Box<str>, Verified>,
    len: AtomicUsize,
    capacity: usize,
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// The principal of `token` if it was verified lately and has not expired by `now`.
    pub(super) fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let hit = self.map.get(token)?;
        (now < hit.until).then_some(hit.principal)
    }

    /// Remembers a token just verified, good until `expires_at` (unix seconds) at the latest.
    pub(super) fn insert(&self, token: &str, principal: Principal, now: i64, expires_at: i64) {
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.map.clear();
            self.len.store(1, Ordering::Relaxed);
        }
        let until = expires_at.min(now.saturating_add(FRESH_FOR_SECS));
        self.map.insert(token.into(), Verified { principal, until });
    }
}

#[cfg(test)]
mod tests {
    use flashmart_domain::{Role, SessionId, UserId};

    use super::*;

    fn principal() -> Principal {
        Principal {
            user_id: UserId::new(),
            role: Role::Customer,
            session_id: SessionId::new(),
            second_factor: false,
        }
    }

    #[test]
    fn a_hit_needs_the_same_token_and_ends_with_its_expiry_or_freshness() {
        let cache = VerifiedTokens::new(8);
        let p = principal();
        cache.insert("a.b.c", p, 1_000, 1_030);
        assert_eq!(cache.get("a.b.c", 1_029), Some(p));
        assert_eq!(cache.get("a.b.c", 1_030), None, "expired with the token");
        assert_eq!(cache.get("a.b.d", 1_001), None, "another token text");
        cache.insert("x.y.z", p, 1_000, 10_000);
        assert_eq!(cache.get("x.y.z", 1_000 + FRESH_FOR_SECS - 1), Some(p));
        assert_eq!(
            cache.get("x.y.z", 1_000 + FRESH_FOR_SECS),
            None,
            "verified again"
        );
    }

    #[test]
    fn the_map_never_holds_more_than_its_capacity() {
        let cache = VerifiedTokens::new(4);
        for i in 0..100 {
            cache.insert(&format!("token-{i}"), principal(), 0, 100);
            assert!(cache.map.len() <= 4);
        }
        assert!(cache.get("token-99", 1).is_some(), "the newest is kept");
    }
}
