//! The contest compatibility API: an hourly sale of 10,000 generated items, checkout by a
//! caller-named user (at most 10 per user per sale) answering a code, and purchase by code. It
//! trusts the caller's user id, so it belongs on a private network.

use std::sync::Arc;

use flashmart_domain::flash_sale::Recurrence;
use flashmart_domain::{Currency, ReservationId, SaleId, ScheduleId};
use time::OffsetDateTime;

use super::contest_book::Decision;
use super::reserve::Reserver;
use super::{FlashSales, SaleError};
use crate::error::StoreError;
use crate::flash_sale::model::{
    BuyerId, CheckoutAttempt, JournalOp, JournalOutcome, PurchaseOutcome, Released,
    ReservationRecord, Schedule, parse_reservation_code,
};
use crate::ports::{FlashSaleStore, SettleTo, SharedEngine};

/// The schedule behind the contest's hourly sale.
pub const CONTEST_SCHEDULE: &str = "contest";
const CONTEST_ITEMS: u32 = 10_000;
const CONTEST_LIMIT: u32 = 10;
const CONTEST_PRICE_CENTS: i64 = 100;
const CONTEST_TTL_SECS: i64 = 3600;
/// Longest caller-named user id accepted.
pub const MAX_USER_REF: usize = 128;

pub(super) async fn ensure_contest_schedule(
    store: &dyn FlashSaleStore,
    now: OffsetDateTime,
) -> Result<ScheduleId, StoreError> {
    if let Some(existing) = store.schedule_by_name(CONTEST_SCHEDULE).await? {
        return Ok(existing.id);
    }
    let schedule = Schedule {
        id: ScheduleId::new(),
        name: CONTEST_SCHEDULE.to_owned(),
        recurrence: Recurrence::Hourly,
        item_count: CONTEST_ITEMS,
        price_cents: CONTEST_PRICE_CENTS,
        currency: Currency::USD,
        per_user_limit: CONTEST_LIMIT,
        reservation_ttl_secs: CONTEST_TTL_SECS,
        duration_secs: Recurrence::Hourly.period().whole_seconds(),
        active: true,
        created_at: now,
    };
    match store.insert_schedule(&schedule).await {
        Ok(()) => Ok(schedule.id),
        // Another process made it first.
        Err(StoreError::Conflict { .. }) => store
            .schedule_by_name(CONTEST_SCHEDULE)
            .await?
            .map(|s| s.id)
            .ok_or(StoreError::NotFound),
        Err(e) => Err(e),
    }
}

impl FlashSales {
    /// Reserves item `item` of the current contest sale for the caller-named `user`; answers the
    /// reservation code. Every attempt is recorded, whatever its outcome.
    pub async fn contest_checkout(&self, user: &str, item: i64) -> Result<String, SaleError> {
        let schedule = self.contest.ok_or(SaleError::SaleNotFound)?;
        let now = self.clock.now();
        let sale = self.contest_sale(schedule, now).await;
        let result = match &sale {
            Ok(sale) => self.contest_reserve(*sale, user, item).await,
            Err(e) => Err(e.clone()),
        };
        let (outcome, code) = match &result {
            Ok(record) => {
                if self.shared.is_none() {
                    self.book_checkout(record);
                }
                ("reserved", Some(record.code()))
            }
            Err(e) => (attempt_label(e), None),
        };
        self.commit
            .submit_detached(JournalOp::Attempt(Box::new(CheckoutAttempt {
                sale_id: sale.ok(),
                item_no: item,
                buyer_ref: user.chars().take(MAX_USER_REF).collect(),
                at: now,
                outcome,
                code,
            })));
        result.map(|record| record.code())
    }

    /// The current hour's contest sale, made now if the scheduler has not made it yet (the hour
    /// just turned).
    async fn contest_sale(
        &self,
        schedule: ScheduleId,
        now: OffsetDateTime,
    ) -> Result<SaleId, SaleError> {
        let slot = Recurrence::Hourly.slot_start(now);
        if let Some(sale) = self.ledger.for_slot(schedule, slot) {
            return Ok(sale.record.id);
        }
        self.run_schedules().await?;
        self.ledger
            .for_slot(schedule, slot)
            .map(|s| s.record.id)
            .ok_or(SaleError::SaleNotFound)
    }

    async fn contest_reserve(
        &self,
        sale: SaleId,
        user: &str,
        item: i64,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        if user.is_empty() || user.len() > MAX_USER_REF {
            return Err(SaleError::Invalid(vec![crate::FieldError::new(
                "user_id",
                format!("must be 1 to {MAX_USER_REF} bytes"),
            )]));
        }
        let item_no = u32::try_from(item).map_err(|_| SaleError::ItemNotFound)?;
        let who = Reserver {
            buyer: BuyerId::external(user),
            user: None,
            buyer_ref: Some(user.to_owned()),
        };
        match &self.shared {
            Some(engine) => {
                self.reserve_shared(engine.as_ref(), &who, sale, item_no, 1, None)
                    .await
            }
            None => self.reserve_as(who, sale, item_no, 1, None).await,
        }
    }

    /// Enters a checkout just made in the contest book, with what its purchase answers.
    fn book_checkout(&self, record: &Arc<ReservationRecord>) {
        let Some(sale) = self.ledger.get(&record.sale_id) else {
            return;
        };
        if let Some((name, price)) = sale.item(record.item_no) {
            self.contest_book
                .add(Arc::clone(record), name, price, sale.record.currency);
        }
    }

    /// Confirms the reservation with this code; the same answer however often it is repeated.
    /// A reservation checked out since start is decided in memory and its purchase made durable
    /// by the group commit (contest_book.rs); any other is looked up in storage.
    pub async fn contest_purchase(&self, code: &str) -> Result<PurchaseOutcome, SaleError> {
        let id = parse_reservation_code(code).ok_or(SaleError::ReservationNotFound)?;
        if let Some(engine) = &self.shared {
            return self.contest_purchase_shared(engine.as_ref(), id).await;
        }
        let slot = self.commit_slot().await?;
        // Storage keeps whole microseconds: the answer must be the same after a restart.
        let now = self.clock.now();
        let now = now - time::Duration::nanoseconds(i64::from(now.nanosecond() % 1_000));
        let decision = self.contest_book.purchase(id, now, |at| {
            slot.send(JournalOp::MarkPurchased { id, at }, None)
        });
        match decision {
            Decision::Expired => return Err(SaleError::ReservationExpired),
            Decision::Purchased {
                outcome,
                at,
                queued,
            } => {
                return match queued.await {
                    Ok(Ok(_)) => {
                        self.contest_book.committed(id, at);
                        Ok(outcome)
                    }
                    Ok(Err(failed)) => {
                        self.contest_book.failed(id);
                        Err(SaleError::Unavailable(failed.0))
                    }
                    Err(_) => {
                        self.contest_book.failed(id);
                        Err(SaleError::Unavailable("the commit task has stopped".into()))
                    }
                };
            }
            Decision::Unknown => {}
        }
        self.purchase_stored(id).await
    }

    /// A purchase the records decide (a reservation the contest book does not hold, or any
    /// with a shared engine): purchased unless it expired, the same answer every time.
    async fn purchase_stored(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError> {
        let outcome = self
            .commit
            .submit(JournalOp::Purchase {
                id,
                at: self.clock.now(),
            })
            .await
            .map_err(|e| SaleError::Unavailable(e.0))?;
        match outcome {
            JournalOutcome::Purchase(PurchaseOutcome::NotFound) => {
                Err(SaleError::ReservationNotFound)
            }
            JournalOutcome::Purchase(PurchaseOutcome::Expired) => {
                Err(SaleError::ReservationExpired)
            }
            JournalOutcome::Purchase(purchased) => Ok(purchased),
            JournalOutcome::Done => Err(SaleError::Unavailable(
                "the journal did not answer the purchase".into(),
            )),
        }
    }

    /// With a shared engine: the records decide (a purchase races an expiry there, under the
    /// reservation's row lock), then the engine is told, once. A reservation answered but not
    /// stored yet (`Ack::Engine`) is stored first.
    async fn contest_purchase_shared(
        &self,
        engine: &dyn SharedEngine,
        id: ReservationId,
    ) -> Result<PurchaseOutcome, SaleError> {
        let outcome = match self.purchase_stored(id).await {
            Err(SaleError::ReservationNotFound) if self.answers_before_storing() => {
                self.catch_up().await?;
                self.purchase_stored(id).await?
            }
            other => other?,
        };
        if let PurchaseOutcome::Purchased { reservation, .. } = &outcome {
            let released = Released {
                reservation: reservation.id,
                sale_id: reservation.sale_id,
                item_no: reservation.item_no,
                buyer: reservation.buyer,
                quantity: reservation.quantity,
            };
            if let Err(err) = engine.settle(&released, SettleTo::Purchased).await {
                // Bought in the records; the engine still holds its units as reserved, which
                // keeps them off sale all the same.
                tracing::warn!(%err, reservation = %reservation.id, "a contest purchase could not be recorded in the shared engine");
            }
        }
        Ok(outcome)
    }

    pub fn contest_enabled(&self) -> bool {
        self.contest.is_some()
    }
}

fn attempt_label(err: &SaleError) -> &'static str {
    match err {
        SaleError::SaleNotFound => "no_sale",
        SaleError::NotStarted => "not_started",
        SaleError::Ended => "ended",
        SaleError::SoldOut => "sold_out",
        SaleError::LimitReached => "limit_reached",
        SaleError::ItemNotFound => "no_item",
        SaleError::Invalid(_) => "invalid",
        _ => "error",
    }
}
