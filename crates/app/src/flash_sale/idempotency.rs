//! `Idempotency-Key` for reservations: per buyer, for 24 hours, a repeated request gets the first
//! answer and reserves nothing more; the same key with another request is refused.
//!
//! Keys are bounded: each buyer has at most `max_per_buyer` live keys, and a refusal for a sale
//! that does not exist is not remembered (anyone could fill memory with made-up sale ids).
//!
//! A key is claimed before anything is reserved. The claim is settled by whoever learns the
//! outcome: the request itself for a refusal, the group commit for a reservation (committed: the
//! answer is kept; failed: the key is freed for a retry). A request abandoned before its
//! reservation was queued frees its key when the claim is dropped.

use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use flashmart_domain::SaleId;
use sha2::{Digest as _, Sha256};
use time::{Duration, OffsetDateTime};

use crate::flash_sale::model::{BuyerId, IdempotencyRecord, ReservationRecord};

/// How long a key is remembered.
pub const KEY_LIFETIME: Duration = Duration::DAY;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A refusal that is replayed as it was (storage failures are not: the key is freed instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SaleNotFound,
    ItemNotFound,
    NotStarted,
    Ended,
    SoldOut,
    LimitReached,
}

#[derive(Debug, Clone)]
pub enum Answer {
    Reserved(Arc<ReservationRecord>),
    Refused(Refusal),
}

#[derive(Debug)]
enum State {
    InFlight,
    Done(Answer),
}

#[derive(Debug)]
struct KeyEntry {
    buyer: BuyerId,
    fingerprint: [u8; 16],
    used_at: OffsetDateTime,
    state: State,
}

#[derive(Debug, Default)]
pub struct IdempotencyTable {
    entries: DashMap<[u8; 16], KeyEntry>,
    /// Live keys per buyer (entries removed take their count with them).
    per_buyer: DashMap<BuyerId, u32>,
    /// 0: no cap.
    max_per_buyer: u32,
}

/// What `begin` found.
#[derive(Debug)]
pub enum Begin {
    /// First use: go ahead, and settle the claim.
    Fresh(Claim),
    /// Used before with the same request: this was the answer.
    Replay(Answer),
    /// Used before with another request.
    Mismatch,
    /// The first request with this key has not been answered yet.
    InProgress,
    /// The buyer has `max_per_buyer` live keys already.
    TooMany,
}

/// The identity of one request, for comparing a repeat with the first use.
pub fn fingerprint(sale: SaleId, item_no: u32, quantity: u32) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(sale.as_uuid().as_bytes());
    h.update(item_no.to_be_bytes());
    h.update(quantity.to_be_bytes());
    first16(&h.finalize())
}

fn key_id(buyer: BuyerId, key: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(buyer.0.as_bytes());
    h.update(key.as_bytes());
    first16(&h.finalize())
}

fn first16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes[..16]);
    out
}

impl IdempotencyTable {
    /// A table that keeps at most `max_per_buyer` live keys per buyer (0: no cap).
    pub fn new(max_per_buyer: u32) -> Self {
        Self {
            max_per_buyer,
            ..Self::default()
        }
    }

    pub fn begin(
        self: &Arc<Self>,
        buyer: BuyerId,
        key: &str,
        fingerprint: [u8; 16],
        now: OffsetDateTime,
    ) -> Begin {
        let id = key_id(buyer, key);
        match self.entries.entry(id) {
            Entry::Occupied(mut e) if e.get().used_at + KEY_LIFETIME <= now => {
                // Remembered past its lifetime (not yet pruned): treat as new.
                e.insert(KeyEntry {
                    buyer,
                    fingerprint,
                    used_at: now,
                    state: State::InFlight,
                });
            }
            Entry::Occupied(e) => {
                let entry = e.get();
                if entry.fingerprint != fingerprint {
                    return Begin::Mismatch;
                }
                return match &entry.state {
                    State::InFlight => Begin::InProgress,
                    State::Done(answer) => Begin::Replay(answer.clone()),
                };
            }
            Entry::Vacant(v) => {
                let mut live = self.per_buyer.entry(buyer).or_insert(0);
                if self.max_per_buyer > 0 && *live >= self.max_per_buyer {
                    return Begin::TooMany;
                }
                *live += 1;
                drop(live);
                v.insert(KeyEntry {
                    buyer,
                    fingerprint,
                    used_at: now,
                    state: State::InFlight,
                });
            }
        }
        Begin::Fresh(Claim {
            table: Arc::clone(self),
            id,
            key: key.to_owned(),
            fingerprint,
            settled: false,
        })
    }

    /// Restores a key used before a restart.
    pub fn restore(
        &self,
        buyer: BuyerId,
        record: &IdempotencyRecord,
        reservation: ReservationRecord,
    ) {
        let previous = self.entries.insert(
            key_id(buyer, &record.key),
            KeyEntry {
                buyer,
                fingerprint: record.fingerprint,
                used_at: reservation.created_at,
                state: State::Done(Answer::Reserved(Arc::new(reservation))),
            },
        );
        if previous.is_none() {
            *self.per_buyer.entry(buyer).or_insert(0) += 1;
        }
    }

    /// Forgets keys past their lifetime.
    pub fn prune(&self, now: OffsetDateTime) {
        self.entries.retain(|_, e| {
            let live = e.used_at + KEY_LIFETIME > now;
            if !live {
                self.forget_one(e.buyer);
            }
            live
        });
    }

    /// Live keys of one buyer.
    pub fn live_keys(&self, buyer: BuyerId) -> u32 {
        self.per_buyer.get(&buyer).map_or(0, |n| *n)
    }

    fn forget_one(&self, buyer: BuyerId) {
        if let Entry::Occupied(mut n) = self.per_buyer.entry(buyer) {
            if *n.get() <= 1 {
                n.remove();
            } else {
                *n.get_mut() -= 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn settle(&self, id: &[u8; 16], answer: Option<Answer>) {
        match answer {
            Some(answer) => {
                if let Some(mut e) = self.entries.get_mut(id) {
                    e.state = State::Done(answer);
                }
            }
            None => {
                if let Some((_, e)) = self
                    .entries
                    .remove_if(id, |_, e| matches!(e.state, State::InFlight))
                {
                    self.forget_one(e.buyer);
                }
            }
        }
    }
}

/// The right to settle one key. Dropped unsettled, it frees the key.
#[derive(Debug)]
pub struct Claim {
    table: Arc<IdempotencyTable>,
    id: [u8; 16],
    key: String,
    fingerprint: [u8; 16],
    settled: bool,
}

impl Claim {
    pub fn record(&self) -> IdempotencyRecord {
        IdempotencyRecord {
            key: self.key.clone(),
            fingerprint: self.fingerprint,
        }
    }

    pub fn answer(mut self, answer: Answer) {
        self.settled = true;
        self.table.settle(&self.id, Some(answer));
    }

    pub fn abandon(mut self) {
        self.settled = true;
        self.table.settle(&self.id, None);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.settled {
            self.table.settle(&self.id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn claim(b: Begin) -> Claim {
        match b {
            Begin::Fresh(c) => c,
            other => panic!("expected Fresh, got {other:?}"),
        }
    }

    #[test]
    fn a_key_replays_its_answer_and_refuses_another_request() {
        let table = Arc::new(IdempotencyTable::default());
        let now = OffsetDateTime::now_utc();
        let buyer = BuyerId(Uuid::from_u128(1));
        let sale = SaleId::new();
        let fp = fingerprint(sale, 1, 1);
        let c = claim(table.begin(buyer, "k", fp, now));
        assert!(matches!(
            table.begin(buyer, "k", fp, now),
            Begin::InProgress
        ));
        c.answer(Answer::Refused(Refusal::SoldOut));
        assert!(matches!(
            table.begin(buyer, "k", fp, now),
            Begin::Replay(Answer::Refused(Refusal::SoldOut))
        ));
        assert!(matches!(
            table.begin(buyer, "k", fingerprint(sale, 1, 2), now),
            Begin::Mismatch
        ));
        // Keys are per buyer.
        let other = claim(table.begin(BuyerId(Uuid::from_u128(2)), "k", fp, now));
        other.abandon();
        // After the lifetime the key is new again.
        let later = now + KEY_LIFETIME;
        let _fresh = claim(table.begin(buyer, "k", fingerprint(sale, 9, 9), later));
    }

    #[test]
    fn a_buyer_has_a_bounded_number_of_live_keys() {
        let table = Arc::new(IdempotencyTable::new(2));
        let now = OffsetDateTime::now_utc();
        let (a, b) = (BuyerId(Uuid::from_u128(1)), BuyerId(Uuid::from_u128(2)));
        let fp = fingerprint(SaleId::new(), 1, 1);
        claim(table.begin(a, "k1", fp, now)).answer(Answer::Refused(Refusal::SoldOut));
        let in_flight = claim(table.begin(a, "k2", fp, now));
        assert!(matches!(table.begin(a, "k3", fp, now), Begin::TooMany));
        // Its own keys still replay; other buyers are not affected.
        assert!(matches!(table.begin(a, "k1", fp, now), Begin::Replay(_)));
        claim(table.begin(b, "k3", fp, now)).abandon();
        // A freed key makes room; so does a key past its lifetime.
        drop(in_flight);
        assert_eq!(table.live_keys(a), 1);
        claim(table.begin(a, "k3", fp, now)).abandon();
        table.prune(now + KEY_LIFETIME);
        assert_eq!(table.live_keys(a), 0);
        assert_eq!(table.live_keys(b), 0);
    }

    #[test]
    fn an_unsettled_claim_frees_its_key() {
        let table = Arc::new(IdempotencyTable::default());
        let now = OffsetDateTime::now_utc();
        let buyer = BuyerId(Uuid::from_u128(1));
        let fp = fingerprint(SaleId::new(), 1, 1);
        drop(claim(table.begin(buyer, "k", fp, now)));
        assert!(table.is_empty());
        claim(table.begin(buyer, "k", fp, now)).abandon();
        assert!(table.is_empty());
        let c = claim(table.begin(buyer, "k", fp, now));
        c.answer(Answer::Refused(Refusal::Ended));
        table.prune(now + KEY_LIFETIME);
        assert!(table.is_empty());
    }
}
