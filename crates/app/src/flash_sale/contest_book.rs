//! The contest reservations this process made, so that a purchase is decided in memory and made
//! durable by the group commit like a reservation, instead of a transaction that needs the
//! reservation's row in the tables first.
//!
//! Each entry is `reserved`, `purchased` (at a time, the same answer for every repeat) or
//! `expired`. A purchase decides under the entry's lock and queues its record before letting go
//! of it; the sweeper marks due entries expired under the same lock and then waits for the commit
//! queue before it expires rows in storage. So a purchase that was decided is in storage before
//! the sweeper looks at the row, and one that comes after the sweeper marked the entry is
//! refused: a reservation is never both purchased (answered) and expired (stock given back).
//! A code not in the book (made before a restart, or by the other API) is looked up in storage.

use std::sync::Arc;

use dashmap::DashMap;
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{Currency, ReservationId};
use time::OffsetDateTime;

use crate::flash_sale::model::{PurchaseOutcome, ReservationRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reserved,
    /// Purchased at this time; `durable` once a record of it was committed.
    Purchased {
        at: OffsetDateTime,
        durable: bool,
    },
    Expired,
}

#[derive(Debug, Clone)]
struct Entry {
    record: Arc<ReservationRecord>,
    item_name: Arc<str>,
    unit_price_cents: i64,
    currency: Currency,
    state: State,
}

/// What the book says of a purchase.
#[derive(Debug)]
pub(super) enum Decision<T> {
    /// Not in the book: storage decides.
    Unknown,
    Expired,
    /// Purchased (now or before): `queued` is what the caller's `queue` returned.
    Purchased {
        outcome: PurchaseOutcome,
        at: OffsetDateTime,
        queued: T,
    },
}

#[derive(Debug, Default)]
pub(super) struct ContestBook {
    entries: DashMap<ReservationId, Entry>,
}

impl ContestBook {
    /// A contest checkout was answered with this reservation.
    pub(super) fn add(
        &self,
        record: Arc<ReservationRecord>,
        item_name: Arc<str>,
        unit_price_cents: i64,
        currency: Currency,
    ) {
        self.entries.insert(
            record.id,
            Entry {
                record,
                item_name,
                unit_price_cents,
                currency,
                state: State::Reserved,
            },
        );
    }

    /// Decides a purchase of `id` at `now` (whole microseconds, as storage keeps times). When it
    /// is purchased, `queue` is called with the purchase time while the entry is still locked:
    /// the caller queues the purchase's record there, with no await.
    pub(super) fn purchase<T>(
        &self,
        id: ReservationId,
        now: OffsetDateTime,
        queue: impl FnOnce(OffsetDateTime) -> T,
    ) -> Decision<T> {
        let Some(mut entry) = self.entries.get_mut(&id) else {
            return Decision::Unknown;
        };
        let at = match entry.state {
            State::Expired => return Decision::Expired,
            State::Purchased { at, .. } => at,
            State::Reserved if now >= entry.record.expires_at => return Decision::Expired,
            State::Reserved => {
                entry.state = State::Purchased {
                    at: now,
                    durable: false,
                };
                now
            }
        };
        let queued = queue(at);
        let mut record = (*entry.record).clone();
        record.status = ReservationStatus::Purchased;
        record.purchased_at = Some(at);
        Decision::Purchased {
            outcome: PurchaseOutcome::Purchased {
                reservation: Box::new(record),
                item_name: entry.item_name.to_string(),
                unit_price_cents: entry.unit_price_cents,
                currency: entry.currency,
            },
            at,
            queued,
        }
    }

    /// The purchase of `id` at `at` was committed.
    pub(super) fn committed(&self, id: ReservationId, at: OffsetDateTime) {
        if let Some(mut entry) = self.entries.get_mut(&id)
            && entry.state == (State::Purchased { at, durable: false })
        {
            entry.state = State::Purchased { at, durable: true };
        }
    }

    /// The purchase of `id` could not be committed: whether a repeat's record was is not known
    /// here, so storage decides from now on.
    pub(super) fn failed(&self, id: ReservationId) {
        self.entries.remove(&id);
    }

    /// Marks every reserved entry whose time is up by `now` expired; what was purchased stays.
    pub(super) fn expire_due(&self, now: OffsetDateTime) {
        for mut entry in self.entries.iter_mut() {
            if entry.state == State::Reserved && entry.record.expires_at <= now {
                entry.state = State::Expired;
            }
        }
    }

    /// Forgets entries settled in storage for good: expired, or purchased with the purchase
    /// committed, and over since `before`.
    pub(super) fn prune(&self, before: OffsetDateTime) {
        self.entries.retain(|_, e| {
            let settled = matches!(
                e.state,
                State::Expired | State::Purchased { durable: true, .. }
            );
            !(settled && e.record.expires_at < before)
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flashmart_domain::SaleId;
    use time::macros::datetime;

    use super::*;
    use crate::flash_sale::model::BuyerId;

    fn reserved(expires_at: OffsetDateTime) -> Arc<ReservationRecord> {
        Arc::new(ReservationRecord {
            id: ReservationId::new(),
            sale_id: SaleId::new(),
            item_no: 3,
            buyer: BuyerId::external("u"),
            buyer_ref: Some("u".into()),
            quantity: 1,
            status: ReservationStatus::Reserved,
            created_at: expires_at - time::Duration::hours(1),
            expires_at,
            order_id: None,
            purchased_at: None,
        })
    }

    fn book_with(record: &Arc<ReservationRecord>) -> ContestBook {
        let book = ContestBook::default();
        book.add(Arc::clone(record), "Item 3".into(), 100, Currency::USD);
        book
    }

    #[test]
    fn a_purchase_is_queued_once_decided_and_repeats_answer_the_same() {
        let end = datetime!(2026-12-03 11:00 UTC);
        let r = reserved(end);
        let book = book_with(&r);
        let first_at = datetime!(2026-12-03 10:30 UTC);
        let Decision::Purchased {
            outcome,
            at,
            queued,
        } = book.purchase(r.id, first_at, |at| at)
        else {
            panic!("purchased")
        };
        assert_eq!((at, queued), (first_at, first_at));
        // A repeat later (even past the end) answers the first purchase, and queues its time.
        let Decision::Purchased {
            outcome: again,
            queued,
            ..
        } = book.purchase(r.id, end + time::Duration::minutes(1), |at| at)
        else {
            panic!("purchased")
        };
        assert_eq!(again, outcome);
        assert_eq!(queued, first_at);
        let PurchaseOutcome::Purchased { reservation, .. } = outcome else {
            panic!()
        };
        assert_eq!(reservation.status, ReservationStatus::Purchased);
        assert_eq!(reservation.purchased_at, Some(first_at));
    }

    #[test]
    fn past_its_time_or_swept_a_reservation_is_expired_and_nothing_is_queued() {
        let end = datetime!(2026-12-03 11:00 UTC);
        let r = reserved(end);
        let book = book_with(&r);
        assert!(matches!(
            book.purchase(r.id, end, |_| panic!("not queued")),
            Decision::Expired
        ));
        let s = reserved(end);
        book.add(Arc::clone(&s), "x".into(), 1, Currency::USD);
        book.expire_due(end);
        // The sweeper's mark holds even for a purchase whose clock reads earlier.
        assert!(matches!(
            book.purchase(s.id, end - time::Duration::minutes(5), |_| panic!(
                "not queued"
            )),
            Decision::Expired
        ));
    }

    #[test]
    fn the_sweeper_leaves_purchases_alone_and_unknown_codes_go_to_storage() {
        let end = datetime!(2026-12-03 11:00 UTC);
        let r = reserved(end);
        let book = book_with(&r);
        assert!(matches!(
            book.purchase(r.id, end - time::Duration::minutes(1), |_| ()),
            Decision::Purchased { .. }
        ));
        book.expire_due(end + time::Duration::hours(1));
        assert!(matches!(
            book.purchase(r.id, end + time::Duration::hours(1), |_| ()),
            Decision::Purchased { .. }
        ));
        assert!(matches!(
            book.purchase(ReservationId::new(), end, |_| ()),
            Decision::Unknown
        ));
    }

    #[test]
    fn only_settled_entries_are_pruned_and_a_failed_commit_hands_the_code_to_storage() {
        let end = datetime!(2026-12-03 11:00 UTC);
        let (a, b, c) = (reserved(end), reserved(end), reserved(end));
        let book = ContestBook::default();
        for r in [&a, &b, &c] {
            book.add(Arc::clone(r), "x".into(), 1, Currency::USD);
        }
        let at = end - time::Duration::minutes(1);
        book.purchase(a.id, at, |_| ());
        book.purchase(b.id, at, |_| ());
        book.committed(a.id, at);
        book.expire_due(end);
        book.prune(end + time::Duration::minutes(1));
        // a: purchased and committed; c: expired. b's purchase is not known to be durable.
        assert_eq!(book.len(), 1);
        assert!(matches!(
            book.purchase(b.id, end, |_| ()),
            Decision::Purchased { .. }
        ));
        book.failed(b.id);
        assert!(matches!(
            book.purchase(b.id, end, |_| ()),
            Decision::Unknown
        ));
    }
}
