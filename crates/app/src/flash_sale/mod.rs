//! Flash sales: creating sales and recurring schedules, the reservation hot path through the
//! engine port (`engine.rs`: the in-process engine, or the shared one on Redis), expiry, live
//! events, and the contest compatibility API.

mod admin;
pub mod commit;
mod compat;
mod contest_book;
mod counters;
mod engine;
pub mod idempotency;
mod in_process;
pub mod ledger;
pub mod model;
mod reserve;
mod shared;

use std::sync::Arc;

use flashmart_domain::flash_sale::{FlashSaleError, SalePhase};
use flashmart_domain::{SaleId, ScheduleId};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admin::{
    ItemDraft, ItemsDraft, SCHEDULE_LEAD, SaleDraft, SaleStats, SaleView, ScheduleDraft,
};
pub use compat::CONTEST_SCHEDULE;

use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::flash_sale::commit::GroupCommit;
use crate::flash_sale::counters::Counters;
use crate::flash_sale::engine::{Core, Engine, Engines};
use crate::flash_sale::idempotency::Refusal;
use crate::flash_sale::in_process::InProcess;
use crate::flash_sale::ledger::{HoldError, Ledger, SaleSnapshot};
use crate::flash_sale::model::SaleRecord;
use crate::flash_sale::shared::Shared;
use crate::ports::{FlashSaleStore, ReservationJournal, SettleTo, SharedEngine};

#[derive(Debug, Clone, thiserror::Error)]
pub enum SaleError {
    #[error("flash sale not found")]
    SaleNotFound,
    #[error("the sale has not started")]
    NotStarted,
    #[error("the sale has ended")]
    Ended,
    #[error("sold out")]
    SoldOut,
    #[error("per-user limit reached")]
    LimitReached,
    #[error("idempotency key reused with another request")]
    KeyReused,
    #[error("a request with this idempotency key is still in progress")]
    KeyInProgress,
    #[error("too many idempotency keys in use: reuse one, or wait until one is a day old")]
    TooManyKeys,
    #[error("item not found")]
    ItemNotFound,
    #[error("reservation not found")]
    ReservationNotFound,
    #[error("reservation expired")]
    ReservationExpired,
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    #[error("a schedule with this name exists")]
    ScheduleNameTaken,
    #[error("product {product_id} has only {available} in stock")]
    ProductShort {
        product_id: uuid::Uuid,
        available: u32,
    },
    /// The reservation could not be made durable; nothing was reserved.
    #[error("storage unavailable: {0}")]
    Unavailable(Arc<str>),
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for SaleError {
    fn from(err: StoreError) -> Self {
        Self::Store(Arc::new(err))
    }
}

impl From<Refusal> for SaleError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::SaleNotFound => Self::SaleNotFound,
            Refusal::ItemNotFound => Self::ItemNotFound,
            Refusal::NotStarted => Self::NotStarted,
            Refusal::Ended => Self::Ended,
            Refusal::SoldOut => Self::SoldOut,
            Refusal::LimitReached => Self::LimitReached,
        }
    }
}

impl From<HoldError> for Refusal {
    fn from(e: HoldError) -> Self {
        match e {
            HoldError::NoSuchItem => Self::ItemNotFound,
            HoldError::Rule(FlashSaleError::NotStarted) => Self::NotStarted,
            HoldError::Rule(FlashSaleError::Ended) => Self::Ended,
            HoldError::Rule(FlashSaleError::SoldOut) => Self::SoldOut,
            HoldError::Rule(FlashSaleError::LimitReached) => Self::LimitReached,
        }
    }
}

impl Refusal {
    /// The `result` label of `flash_sale_reservations_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::SaleNotFound => "no_sale",
            Self::ItemNotFound => "no_item",
            Self::NotStarted => "not_started",
            Self::Ended => "ended",
            Self::SoldOut => "sold_out",
            Self::LimitReached => "limit_reached",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FlashSaleSettings {
    /// Writes that may wait for the group commit before new reservations wait for room.
    pub commit_queue: usize,
    /// How long after its end a sale stays in memory.
    pub keep_ended_for: Duration,
    /// Make the contest schedule (compatibility API) if it is missing.
    pub contest: bool,
    /// Live `Idempotency-Key`s a buyer may have (0: no cap); on a shared engine, in each sale.
    pub max_idempotency_keys_per_user: u32,
    /// A reservation engine shared by every instance (Redis). Unset: the in-process engine (the
    /// ledger decides, the group commit makes it durable), for one process per store.
    pub shared_engine: Option<Arc<dyn SharedEngine>>,
    /// How long after the shared engine is found to have lost a sale it is rebuilt from the
    /// records (503 meanwhile): longer than a reservation's write can take to land.
    pub rebuild_grace: Duration,
    /// When a reservation decided by the shared engine is answered (`flash_sale.ack`).
    pub ack: Ack,
}

/// When a reservation decided by the shared engine is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ack {
    /// Once it and its order are committed in the records (the instance's group commit).
    #[default]
    Database,
    /// Once the engine has decided and logged it: its write to the records is queued without
    /// waiting, and the log writers store it should this instance die first. As durable as the
    /// engine's own storage. Reads of a reservation or order not stored yet wait for what this
    /// instance queued and for what the logs hold (`FlashSales::catch_up`).
    Engine,
}

impl Default for FlashSaleSettings {
    fn default() -> Self {
        Self {
            commit_queue: 65_536,
            keep_ended_for: Duration::HOUR,
            contest: false,
            max_idempotency_keys_per_user: 1_000,
            shared_engine: None,
            rebuild_grace: Duration::seconds(10),
            ack: Ack::Database,
        }
    }
}

/// The flash-sale use cases, over whichever engine the settings name (`engine.rs`).
#[derive(Debug)]
pub struct FlashSales {
    core: Arc<Core>,
    engine: Engines,
    contest: Option<ScheduleId>,
}

impl FlashSales {
    /// Rebuilds the in-memory ledger and the idempotency keys from storage, starts the group
    /// commit, and (with `contest`) makes sure the contest schedule exists. Returns the service
    /// and the commit task, which ends once the service is dropped.
    pub async fn start(
        store: Arc<dyn FlashSaleStore>,
        journal: Arc<dyn ReservationJournal>,
        clock: Arc<dyn Clock>,
        settings: FlashSaleSettings,
    ) -> Result<(Self, JoinHandle<()>), StoreError> {
        let now = clock.now();
        let ledger = Ledger::default();
        // With a shared engine the ledger only mirrors its stock; a sale the engine lost is
        // found by the first look at its stock or reservation for it, and rebuilt after the
        // grace (`Shared::restore`).
        for state in store.live_sales(now - settings.keep_ended_for).await? {
            ledger.install(state, now);
        }
        let contest = if settings.contest {
            Some(compat::ensure_contest_schedule(store.as_ref(), now).await?)
        } else {
            None
        };
        let (commit, task) = GroupCommit::start(journal, settings.commit_queue);
        tracing::info!(
            sales = ledger.len(),
            "flash-sale ledger rebuilt from storage"
        );
        let shared = settings.shared_engine.clone();
        let core = Arc::new(Core {
            store,
            clock,
            ledger,
            commit,
            counters: Counters::default(),
            settings,
        });
        let engine = match shared {
            Some(engine) => Engines::Shared(Shared::new(Arc::clone(&core), engine)),
            None => Engines::InProcess(InProcess::start(Arc::clone(&core)).await?),
        };
        Ok((
            Self {
                core,
                engine,
                contest,
            },
            task,
        ))
    }

    /// The group commit's heartbeat, for readiness.
    pub fn commit_heartbeat(&self) -> Arc<crate::health::Heartbeat> {
        self.core.commit.heartbeat()
    }

    /// A sale's numbers now, and a receiver of the numbers `publish_all` pushes from then on.
    /// (With a shared engine, the numbers now are read from it; if it cannot answer, the last
    /// ones read.)
    pub async fn subscribe(
        &self,
        sale: SaleId,
    ) -> Option<(SaleSnapshot, watch::Receiver<SaleSnapshot>)> {
        let live = match self.mirrored(sale).await {
            Ok(live) => live?,
            Err(err) => {
                tracing::warn!(%err, %sale, "cannot read the sale from the records");
                self.core.ledger.get(&sale)?
            }
        };
        if let Err(err) = self.engine.refresh(&live).await {
            tracing::warn!(%err, %sale, "cannot read the sale's stock from the shared engine");
        }
        let mut rx = live.subscribe();
        rx.mark_unchanged();
        Some((live.snapshot(self.core.clock.now()), rx))
    }

    /// Pushes each sale's current numbers to its subscribers, where they changed (with a shared
    /// engine, live sales' numbers are read from it first).
    pub async fn publish_all(&self) {
        let now = self.core.clock.now();
        for sale in self.core.ledger.all() {
            if sale.record.rules.window().phase(now) != SalePhase::Ended
                && let Err(err) = self.engine.refresh(&sale).await
            {
                tracing::warn!(%err, sale = %sale.record.id, "cannot read the sale's stock from the shared engine");
            }
            sale.publish(now);
        }
    }

    /// Expires reservations whose time ran out and puts their stock back on sale. Returns how
    /// many expired.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        const BATCH: u32 = 1000;
        // One time for the whole sweep: what the engine answered and decided by then is in
        // the records before they expire what is due by it.
        let now = self.core.clock.now();
        self.engine.before_expiry(now).await;
        let mut total = 0;
        loop {
            let released = self.core.store.expire_due(now, BATCH).await?;
            for r in &released {
                self.give_back(r, SettleTo::Expired).await?;
            }
            total += released.len();
            if released.len() < BATCH as usize {
                break;
            }
        }
        if total > 0 {
            metrics::counter!("flash_sale_reservations_expired_total").increment(total as u64);
            tracing::info!(expired = total, "expired reservations released their stock");
        }
        Ok(total)
    }

    /// Gives product-backed items of ended sales back to their products (what did not sell, and
    /// what reservations release after the end). Returns the units given back.
    pub async fn return_unsold_stock(&self) -> Result<u64, StoreError> {
        // What is held counts only once it is stored: nothing answered may be left out. Only an
        // ended sale's units go back, so only then is there anything to catch up with (a
        // catch-up while sales are live would read back every reservation still on its way to
        // the records, at every sweep).
        let now = self.core.clock.now();
        if self
            .core
            .ledger
            .all()
            .iter()
            .any(|sale| sale.record.rules.window().phase(now) == SalePhase::Ended)
        {
            self.catch_up().await?;
        }
        // The same moment as the check: a sale that ends during the catch-up is left for the
        // next sweep, not returned without it.
        let given = self.core.store.return_unsold(now).await?;
        if given > 0 {
            tracing::info!(
                units = given,
                "unsold flash-sale units went back to their products"
            );
        }
        Ok(given)
    }

    /// Puts back what a cancelled reservation held (the store has already marked it cancelled).
    /// With a shared engine this reaches it, and can fail.
    pub async fn release(
        &self,
        released: &crate::flash_sale::model::Released,
    ) -> Result<(), StoreError> {
        self.give_back(released, SettleTo::Cancelled).await
    }

    /// The engine's side of a reservation the records have moved out of `reserved`: its units
    /// go back on sale, once.
    async fn give_back(
        &self,
        released: &crate::flash_sale::model::Released,
        to: SettleTo,
    ) -> Result<(), StoreError> {
        self.engine.settle(released, to).await
    }

    /// Forgets old idempotency keys and sales long ended.
    pub fn housekeeping(&self) {
        let now = self.core.clock.now();
        self.engine.housekeeping(now);
        self.core
            .ledger
            .drop_ended(now - self.core.settings.keep_ended_for);
    }

    /// Waits until every write queued so far is durable (shutdown).
    pub async fn flush(&self) {
        self.core.commit.flush().await;
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.core.clock
    }

    /// Every sale this instance holds in memory (live ones, and ended ones until housekeeping
    /// lets them go), with its remaining units.
    pub fn in_memory(&self) -> Vec<(SaleRecord, u64)> {
        self.core
            .ledger
            .all()
            .into_iter()
            .map(|live| (live.record.clone(), live.remaining()))
            .collect()
    }
}

impl FlashSales {
    /// With a shared engine: stores the reservations its logs hold that no instance stored (the
    /// one that decided them died before its write, or the write failed), and acknowledges
    /// them. Every instance runs it under a writer name of its own, one pass at a time: each
    /// log entry goes to one writer, and one that dies leaves its entries to the others.
    /// Returns how many reservations it wrote (always none in process).
    pub async fn write_logged(&self) -> Result<usize, StoreError> {
        self.engine.write_logged().await
    }

    /// With a shared engine: drops from the logs what this instance's requests stored, so that
    /// no writer reads it (`write_logged` does it first; an `api` instance that runs no writer
    /// calls this instead).
    pub async fn forget_stored(&self) {
        self.engine.forget_stored().await;
    }

    /// With `flash_sale.ack = redis`, a reservation may be answered before it is stored: a
    /// read that finds no reservation or order by an id calls this, then reads again
    /// (`read_through`), and so do lists of orders and reservations, a sale's numbers and the
    /// return of unsold units before they read. It returns once everything answered when it was
    /// called is stored; otherwise at once.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        self.engine.catch_up().await
    }

    /// What `read` finds by an id; when it finds nothing and the reservation behind the id may
    /// have been answered before it was stored, it reads again once `catch_up` has run.
    pub async fn read_through<T, E, F, Fut>(&self, read: F) -> Result<Option<T>, E>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, E>>,
        E: From<StoreError>,
    {
        let found = read().await?;
        if found.is_some() || !self.engine.answers_before_storing() {
            return Ok(found);
        }
        self.catch_up().await?;
        read().await
    }

    /// `catch_up` for a read that can do without it (a list, a sale's numbers): a failure is
    /// logged, and the read shows what is stored.
    pub async fn try_catch_up(&self) {
        if let Err(err) = self.catch_up().await {
            tracing::warn!(%err, "reading without catching up with the sales' logs");
        }
    }
}

/// How one live sale stands between the shared engine and the records (`flashmart reconcile`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// What remains of each item in the engine is the stock less what the records hold.
    Agrees { remaining: u64 },
    /// The engine does not hold the sale: marked lost, it is rebuilt from the records at the
    /// first reservation after `rebuild_at`.
    Lost { rebuild_at: OffsetDateTime },
    /// Item `item_no`: the engine has `engine` left where the records leave `records`.
    Differs {
        item_no: u32,
        engine: u32,
        records: u32,
    },
}

impl FlashSales {
    /// With a shared engine: stores what its logs hold first (`write_logged`), then compares,
    /// for every sale not ended, the stock the engine has left with the stock less what the
    /// records hold, and marks a sale the engine lost for rebuilding. Run while reservations
    /// are being made, a difference can be one in flight; run again, it is gone.
    pub async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError> {
        self.engine.reconcile().await
    }
}
