//! Access tokens verified recently, so that a buyer pressing "buy" again (or an admin page making
//! a dozen calls) does not pay for the HMAC, the base64 and the JSON of its token every time.
//!
//! A hit needs the very same token text, compared in full, never by a hash alone. Entries are
//! found by the token's signature (its last 43 characters, an HMAC and so already random): the
//! map hashes 8 bytes of it instead of the whole token with SipHash, and keeps the rest of the
//! token beside the entry to compare. A hit is good until the token's own expiry or for
//! `FRESH_FOR` after it was verified, whichever is sooner. Revocation is not cached: the caller
//! checks the session against the revocation list on every request.
//!
//! A token enters the map the second time it is verified, not the first: a table of one word
//! per slot remembers the signatures verified lately (a newer one takes an older one's slot).
//! A stampede's buyers each send one request with a token of their own; those tokens cost one
//! atomic swap each instead of an allocation and an insert under a shard's lock, and never push
//! out the tokens in use. A token used again is verified twice before it hits. The map holds at
//! most `capacity` tokens; when it is full it is emptied and fills again from the tokens in use.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use super::tokens::Principal;

/// How long a verification is trusted without repeating it.
const FRESH_FOR_SECS: i64 = 60;

/// An HS256 signature in base64url without padding: 32 bytes are 43 characters.
const SIGNATURE_LEN: usize = 43;

#[derive(Debug, Clone)]
struct Verified {
    /// The token before its signature (header, claims and the dot after them).
    signed: Box<str>,
    principal: Principal,
    /// Unix seconds after which the entry no longer answers.
    until: i64,
}

/// A token's signature, as found at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature([u8; SIGNATURE_LEN]);

/// `token` as what comes before its signature and the signature.
fn split(token: &str) -> Option<(&str, Signature)> {
    let at = token.len().checked_sub(SIGNATURE_LEN)?;
    let (signed, signature) = (token.get(..at)?, token.get(at..)?);
    if !signed.ends_with('.') {
        return None;
    }
    Some((signed, Signature(signature.as_bytes().try_into().ok()?)))
}

impl Signature {
    /// Its first 8 bytes as a word: random, since the signature is an HMAC.
    fn head(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(head)
    }
}

impl Hash for Signature {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.head());
    }
}

/// Spreads the 8 signature bytes it is given over the whole word. They are random already, and
/// only tokens that verified are stored, so nobody can choose what collides with them.
#[derive(Debug, Default, Clone, Copy)]
struct SignatureHasher(u64);

impl Hasher for SignatureHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

#[derive(Debug)]
pub(super) struct VerifiedTokens {
    map: DashMap<Signature, Verified, BuildHasherDefault<SignatureHasher>>,
    len: AtomicUsize,
    capacity: usize,
    /// The heads of signatures verified once lately, each in the slot its head names.
    seen: Box<[AtomicU64]>,
}

impl VerifiedTokens {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::default(),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            seen: (0..capacity.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The principal of `token` if it was verified lately and has not expired by `now`.
    pub(super) fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let (signed, signature) = split(token)?;
        let hit = self.map.get(&signature)?;
        (*hit.signed == *signed && now < hit.until).then_some(hit.principal)
    }

    /// Tells the cache that `token` was just verified: it is kept (good until `expires_at`, unix
    /// seconds, at the latest) if it was verified lately before, and noted otherwise.
    pub(super) fn verified(&self, token: &str, principal: Principal, now: i64, expires_at: i64) {
        let Some((_, signature)) = split(token) else {
            return;
        };
        let head = signature.head();
        let slot = &self.seen[(head % self.seen.len() as u64) as usize];
        if slot.swap(head, Ordering::Relaxed) == head {
            self.insert(token, principal, now, expires_at);
        }
    }

    /// Remembers a token just verified, good until `expires_at` (unix seconds) at the latest.
    fn insert(&self, token: &str, principal: Principal, now: i64, expires_at: i64) {
        let Some((signed, signature)) = split(token) else {
            return;
        };
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.map.clear();
            self.len.store(1, Ordering::Relaxed);
        }
        let until = expires_at.min(now.saturating_add(FRESH_FOR_SECS));
        self.map.insert(
            signature,
            Verified {
                signed: signed.into(),
                principal,
                until,
            },
        );
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

    /// A token-shaped text: `head.body.` and a 43-character signature made from `sig`.
    fn token(head: &str, body: &str, sig: &str) -> String {
        format!("{head}.{body}.{sig:x<43}")
    }

    #[test]
    fn a_hit_needs_the_same_token_and_ends_with_its_expiry_or_freshness() {
        let cache = VerifiedTokens::new(8);
        let p = principal();
        let t = token("a", "b", "c");
        cache.insert(&t, p, 1_000, 1_030);
        assert_eq!(cache.get(&t, 1_029), Some(p));
        assert_eq!(cache.get(&t, 1_030), None, "expired with the token");
        assert_eq!(
            cache.get(&token("a", "b", "d"), 1_001),
            None,
            "another signature"
        );
        assert_eq!(
            cache.get(&token("a", "B", "c"), 1_001),
            None,
            "the same signature on other claims"
        );
        assert_eq!(cache.get(&token("aa", "b", "c"), 1_001), None);
        let u = token("x", "y", "z");
        cache.insert(&u, p, 1_000, 10_000);
        assert_eq!(cache.get(&u, 1_000 + FRESH_FOR_SECS - 1), Some(p));
        assert_eq!(
            cache.get(&u, 1_000 + FRESH_FOR_SECS),
            None,
            "verified again"
        );
    }

    #[test]
    fn a_token_is_kept_the_second_time_it_is_verified() {
        let cache = VerifiedTokens::new(8);
        let p = principal();
        let t = token("a", "b", "c");
        cache.verified(&t, p, 1_000, 2_000);
        assert_eq!(cache.get(&t, 1_001), None, "seen once: not kept");
        assert_eq!(cache.map.len(), 0);
        cache.verified(&t, p, 1_001, 2_000);
        assert_eq!(cache.get(&t, 1_002), Some(p), "seen twice: kept");

        // One-time tokens pass through without touching what is kept.
        for i in 0..100 {
            cache.verified(&token("once", "c", &format!("s{i}")), p, 1_002, 2_000);
        }
        assert_eq!(cache.map.len(), 1);
        assert_eq!(cache.get(&t, 1_003), Some(p));
    }

    #[test]
    fn what_is_not_token_shaped_is_neither_kept_nor_found() {
        let cache = VerifiedTokens::new(8);
        for odd in [
            "",
            "a.b.c",
            &"x".repeat(43),
            &format!("ab{}", "x".repeat(43)),
        ] {
            cache.insert(odd, principal(), 0, 100);
            cache.verified(odd, principal(), 0, 100);
            cache.verified(odd, principal(), 0, 100);
            assert_eq!(cache.get(odd, 1), None, "{odd:?}");
        }
        assert_eq!(cache.map.len(), 0);
        // Not on a character boundary: no panic, no hit.
        assert_eq!(cache.get(&format!("a.b.{}é", "x".repeat(42)), 1), None);
    }

    #[test]
    fn the_map_never_holds_more_than_its_capacity() {
        let cache = VerifiedTokens::new(4);
        for i in 0..100 {
            cache.insert(&token("h", "c", &format!("s{i}")), principal(), 0, 100);
            assert!(cache.map.len() <= 4);
        }
        assert!(
            cache.get(&token("h", "c", "s99"), 1).is_some(),
            "the newest is kept"
        );
    }
}
