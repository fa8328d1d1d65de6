//! The engine port: what decides reservations and makes them durable, seen by the use cases
//! through one trait. Two engines serve it: the in-process one (`in_process.rs`: the ledger
//! decides, the group commit stores, the idempotency table remembers keys; one process per
//! store) and the shared one (`shared.rs`: the `SharedEngine` port, Redis, decides for every
//! instance, the group commit and the log writers store). `FlashSales` drives either without
//! knowing which.

use std::sync::Arc;

use flashmart_domain::{ReservationId, SaleId};
use time::OffsetDateTime;

use super::commit::{GroupCommit, Slot};
use super::counters::Counters;
use super::in_process::InProcess;
use super::ledger::{Ledger, LiveSale};
use super::model::{
    JournalOp, JournalOutcome, LiveSaleState, PurchaseOutcome, Released, ReservationRecord,
    SaleRecord,
};
use super::reserve::Reserver;
use super::shared::Shared;
use super::{FlashSaleSettings, Reconciled, SaleError};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::ports::{FlashSaleStore, SettleTo};

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
/// seldom do. Native `async fn`s: the engines are known (`Engines`), so nothing is boxed on the
/// hot path.
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

    /// A sale made known to the engine: a new one before it is stored (see
    /// `FlashSales::stored_after_loading`), a stored one again when it may be missing (the
    /// ledger installs it after).
    async fn load(&self, state: &LiveSaleState) -> Result<(), SaleError>;

    /// A new sale loaded whose storing failed: dropped from the engine. Nothing of it can have
    /// been reserved, as no instance could find it in the records. A failure is logged.
    async fn unload(&self, sale: SaleId);

    /// Brings the ledger's numbers for a sale up to the engine's (views, live events); a sale
    /// the engine lost is found here and rebuilt.
    async fn refresh(&self, sale: &LiveSale) -> Result<(), SaleError>;

    /// The engine's side of a reservation the records moved out of `reserved`: its units go
    /// back on sale, once (not for a purchase).
    async fn settle(&self, released: &Released, to: SettleTo) -> Result<(), StoreError>;

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

    /// A sale this instance does not hold in memory. With a shared engine, one another instance
    /// made: held here from now on, from the records, unless it has ended. In process, none
    /// (the ledger holds every sale not long ended).
    async fn adopt(&self, sale: SaleId) -> Result<Option<Arc<LiveSale>>, StoreError>;

    /// Drops from the engine's logs what this instance's requests stored, so that no writer
    /// reads it (`write_logged` does it first; an instance that runs no writer calls this).
    async fn forget_stored(&self);

    /// How each sale not ended stands between the engine and the records.
    async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError>;

    /// Forgets what is past keeping (old idempotency keys, settled contest purchases).
    fn housekeeping(&self, now: OffsetDateTime);
}

/// The engines this binary has, dispatched without boxing: `FlashSales` holds one and calls
/// it through `Engine` alone.
#[derive(Debug)]
pub(super) enum Engines {
    InProcess(InProcess),
    Shared(Shared),
}

impl Engine for Engines {
    async fn reserve(
        &self,
        who: &Reserver,
        sale: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        match self {
            Self::InProcess(e) => {
                e.reserve(who, sale, item_no, quantity, idempotency_key)
                    .await
            }
            Self::Shared(e) => {
                e.reserve(who, sale, item_no, quantity, idempotency_key)
                    .await
            }
        }
    }

    async fn load(&self, state: &LiveSaleState) -> Result<(), SaleError> {
        match self {
            Self::InProcess(e) => e.load(state).await,
            Self::Shared(e) => e.load(state).await,
        }
    }

    async fn unload(&self, sale: SaleId) {
        match self {
            Self::InProcess(e) => e.unload(sale).await,
            Self::Shared(e) => e.unload(sale).await,
        }
    }

    async fn refresh(&self, sale: &LiveSale) -> Result<(), SaleError> {
        match self {
            Self::InProcess(e) => e.refresh(sale).await,
            Self::Shared(e) => e.refresh(sale).await,
        }
    }

    async fn settle(&self, released: &Released, to: SettleTo) -> Result<(), StoreError> {
        match self {
            Self::InProcess(e) => e.settle(released, to).await,
            Self::Shared(e) => e.settle(released, to).await,
        }
    }

    fn checked_out(&self, record: &Arc<ReservationRecord>) {
        match self {
            Self::InProcess(e) => e.checked_out(record),
            Self::Shared(e) => e.checked_out(record),
        }
    }

    async fn purchase(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError> {
        match self {
            Self::InProcess(e) => e.purchase(id).await,
            Self::Shared(e) => e.purchase(id).await,
        }
    }

    async fn before_expiry(&self, now: OffsetDateTime) {
        match self {
            Self::InProcess(e) => e.before_expiry(now).await,
            Self::Shared(e) => e.before_expiry(now).await,
        }
    }

    fn answers_before_storing(&self) -> bool {
        match self {
            Self::InProcess(e) => e.answers_before_storing(),
            Self::Shared(e) => e.answers_before_storing(),
        }
    }

    async fn catch_up(&self) -> Result<(), StoreError> {
        match self {
            Self::InProcess(e) => e.catch_up().await,
            Self::Shared(e) => e.catch_up().await,
        }
    }

    async fn write_logged(&self) -> Result<usize, StoreError> {
        match self {
            Self::InProcess(e) => e.write_logged().await,
            Self::Shared(e) => e.write_logged().await,
        }
    }

    async fn adopt(&self, sale: SaleId) -> Result<Option<Arc<LiveSale>>, StoreError> {
        match self {
            Self::InProcess(e) => e.adopt(sale).await,
            Self::Shared(e) => e.adopt(sale).await,
        }
    }

    async fn forget_stored(&self) {
        match self {
            Self::InProcess(e) => e.forget_stored().await,
            Self::Shared(e) => e.forget_stored().await,
        }
    }

    async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError> {
        match self {
            Self::InProcess(e) => e.reconcile().await,
            Self::Shared(e) => e.reconcile().await,
        }
    }

    fn housekeeping(&self, now: OffsetDateTime) {
        match self {
            Self::InProcess(e) => e.housekeeping(now),
            Self::Shared(e) => e.housekeeping(now),
        }
    }
}
