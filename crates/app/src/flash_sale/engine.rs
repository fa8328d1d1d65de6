//! The engine port: what decides reservations and makes them durable, seen by the use cases
//! through one trait. Two engines serve it: the in-process one (`in_process.rs`: the ledger
//! decides, the group commit stores, the idempotency table remembers keys; one process per
//! store) and the shared one (`shared.rs`: the `SharedEngine` port, Redis, decides for every
//! instance, the group commit and the log writers store). `FlashSales` drives either without
//! knowing which.

use std::sync::Arc;

use async_trait::async_trait;
use flashmart_domain::{ReservationId, SaleId};
use time::OffsetDateTime;

use super::commit::{GroupCommit, Slot};
use super::counters::Counters;
use super::ledger::{Ledger, LiveSale};
use super::model::{
    JournalOp, JournalOutcome, LiveSaleState, PurchaseOutcome, Released, ReservationRecord,
    SaleRecord,
};
use super::reserve::Reserver;
use super::{FlashSaleSettings, Reconciled, SaleError};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::ports::FlashSaleStore;

/// What the use cases and both engines share: the records, the clock, the ledger (the engine's
/// own state in process; a mirror of the shared engine's stock for views and live events), the
/// group commit and the counters.
#[derive(Debug)]
pub(super) struct Core {
    pub store: Arc<dyn FlashSaleStore>,
    pub clock: Arc<dyn Clock>,
    pub ledger: Ledger,
    pub commit: GroupCommit,
    pub counters: Counters,
    pub settings: FlashSaleSettings,
}

impl Core {
    /// A place in the commit queue (waiting for one is the backpressure when storage falls
    /// behind).
    pub async fn commit_slot(&self) -> Result<Slot<'_>, SaleError> {
        self.commit
            .slot()
            .await
            .map_err(|e| SaleError::Unavailable(e.0))
    }

    /// A contest purchase the records decide: purchased unless it expired, the same answer
    /// every time.
    pub async fn purchase_stored(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError> {
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
}

/// The engine port. Every method that reaches a shared engine can fail; the in-process engine's
/// seldom do.
#[async_trait]
pub(super) trait Engine: Send + Sync + std::fmt::Debug {
    /// Reserves `quantity` of item `item_no` for `who`, honouring the `Idempotency-Key` (same
    /// answer replayed, another request refused). Answers once the reservation is as durable
    /// as the engine promises (`flash_sale.ack`).
    async fn reserve(
        &self,
        who: &Reserver,
        sale: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError>;

    /// A sale just stored: made known to the engine (the ledger installs it after).
    async fn load(&self, state: &LiveSaleState) -> Result<(), SaleError>;

    /// Brings the ledger's numbers for a sale up to the engine's (views, live events); a sale
    /// the engine lost is found here and rebuilt.
    async fn refresh(&self, sale: &LiveSale) -> Result<(), SaleError>;

    /// The engine's side of a reservation the records moved out of `reserved`: its units go
    /// back on sale, once (not for a purchase).
    async fn settle(
        &self,
        released: &Released,
        to: crate::ports::SettleTo,
    ) -> Result<(), StoreError>;

    /// A contest checkout was answered with this reservation.
    fn checked_out(&self, record: &Arc<ReservationRecord>);

    /// Confirms a contest reservation by its id; the same answer however often it is repeated.
    async fn purchase(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError>;

    /// Called by the expiry sweep before it expires what is due by `now` in the records: what
    /// the engine answered must be there first.
    async fn before_expiry(&self, now: OffsetDateTime);

    /// Whether a reservation can be answered before the records hold it.
    fn answers_before_storing(&self) -> bool;

    /// Returns once every reservation answered so far is in the records (at once when each is
    /// stored before its answer).
    async fn catch_up(&self) -> Result<(), StoreError>;

    /// Stores what the engine decided that no instance stored. Returns how many it wrote.
    async fn write_logged(&self) -> Result<usize, StoreError>;

    /// How each sale not ended stands between the engine and the records.
    async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError>;

    /// Forgets what is past keeping (old idempotency keys, settled contest purchases).
    fn housekeeping(&self, now: OffsetDateTime);
}
