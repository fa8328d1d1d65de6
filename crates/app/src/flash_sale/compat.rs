//! The contest compatibility API: an hourly sale of 10,000 generated items, checkout by a
//! caller-named user (at most 10 per user per sale) answering a code, and purchase by code. It
//! trusts the caller's user id, so it belongs on a private network.

use std::sync::Arc;

use flashmart_domain::flash_sale::Recurrence;
use flashmart_domain::{Currency, SaleId, ScheduleId};
use time::OffsetDateTime;

use super::engine::Engine;
use super::reserve::Reserver;
use super::{FlashSales, SaleError};
use crate::error::StoreError;
use crate::flash_sale::model::{
    BuyerId, CheckoutAttempt, JournalOp, PurchaseOutcome, ReservationRecord, Schedule,
    parse_reservation_code,
};
use crate::ports::FlashSaleStore;

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
    // Made by the server itself, not by an operator: nothing to audit.
    match store.insert_schedule(&schedule, None).await {
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
        let now = self.core.clock.now();
        let sale = self.contest_sale(schedule, now).await;
        let result = match &sale {
            Ok(sale) => self.contest_reserve(*sale, user, item).await,
            Err(e) => Err(e.clone()),
        };
        let (outcome, code) = match &result {
            Ok(record) => {
                self.engine.checked_out(record);
                ("reserved", Some(record.code()))
            }
            Err(e) => (attempt_label(e), None),
        };
        self.core
            .commit
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
        if let Some(sale) = self.core.ledger.for_slot(schedule, slot) {
            return Ok(sale.record.id);
        }
        self.run_schedules().await?;
        self.core
            .ledger
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
        self.engine.reserve(&who, sale, item_no, 1, None).await
    }

    /// Confirms the reservation with this code; the same answer however often it is repeated
    /// (decided by the engine: `InProcess::purchase`, `Shared::purchase`).
    pub async fn contest_purchase(&self, code: &str) -> Result<PurchaseOutcome, SaleError> {
        let id = parse_reservation_code(code).ok_or(SaleError::ReservationNotFound)?;
        self.engine.purchase(id).await
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
