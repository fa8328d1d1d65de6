//! Flash sales: creating sales and recurring schedules, the reservation hot path on the in-memory
//! ledger with its group commit, expiry, live events, and the contest compatibility API.

mod admin;
pub mod commit;
mod compat;
mod contest_book;
mod counters;
pub mod idempotency;
pub mod ledger;
pub mod model;
mod reserve;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use flashmart_domain::flash_sale::{FlashSaleError, SalePhase};
use flashmart_domain::{SaleId, ScheduleId};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use admin::{ItemDraft, ItemsDraft, SaleDraft, SaleStats, SaleView, ScheduleDraft};
pub use compat::CONTEST_SCHEDULE;

use crate::clock::Clock;
use crate::error::{FieldError, StoreError};
use crate::flash_sale::commit::GroupCommit;
use crate::flash_sale::contest_book::ContestBook;
use crate::flash_sale::counters::Counters;
use crate::flash_sale::idempotency::{IdempotencyTable, KEY_LIFETIME, Refusal};
use crate::flash_sale::ledger::{HoldError, Ledger, SaleSnapshot};
use crate::flash_sale::model::{JournalOp, SaleRecord};
use crate::page::PageRequest;
use crate::ports::{FlashSaleStore, LogEntry, ReservationJournal, SettleTo, SharedEngine};

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

/// How long a log entry given to a writer may stay unacknowledged before another writer takes
/// it over (the first is taken to have died; if it was only slow, the entry is written twice,
/// which changes nothing).
const WRITER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

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

/// The flash-sale use cases over the embedded engine.
#[derive(Debug)]
pub struct FlashSales {
    store: Arc<dyn FlashSaleStore>,
    clock: Arc<dyn Clock>,
    ledger: Ledger,
    commit: GroupCommit,
    keys: Arc<IdempotencyTable>,
    /// The contest reservations made since start, for purchases decided in memory.
    contest_book: ContestBook,
    counters: Counters,
    settings: FlashSaleSettings,
    contest: Option<ScheduleId>,
    /// The shared engine that decides reservations, when there is one; the ledger then only
    /// mirrors its stock for views and live events.
    shared: Option<Arc<dyn SharedEngine>>,
    /// This instance's name among the engine's log writers, and its turn: one pass at a time
    /// (the worker's, or a read's catching up).
    writer: String,
    writing: tokio::sync::Mutex<CatchUps>,
    /// Catch-up passes begun (under `writing`); read without it by a caller arriving.
    catch_ups_begun: std::sync::atomic::AtomicU64,
}

/// The catch-up passes done, so that a read arriving while others wait needs no pass of its
/// own once one that began after it has finished.
#[derive(Debug, Default)]
struct CatchUps {
    done: u64,
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
        let shared = settings.shared_engine.clone();
        let ledger = Ledger::default();
        // With a shared engine the ledger only mirrors its stock; a sale the engine lost is
        // found by the first look at its stock or reservation for it, and rebuilt after the
        // grace (`restore`).
        for state in store.live_sales(now - settings.keep_ended_for).await? {
            ledger.install(state, now);
        }
        let keys = Arc::new(IdempotencyTable::new(
            settings.max_idempotency_keys_per_user,
        ));
        if shared.is_none() {
            for stored in store.idempotency_since(now - KEY_LIFETIME).await? {
                keys.restore(stored.buyer, &stored.record, stored.reservation);
            }
        }
        let contest = if settings.contest {
            Some(compat::ensure_contest_schedule(store.as_ref(), now).await?)
        } else {
            None
        };
        let (commit, task) = GroupCommit::start(journal, settings.commit_queue);
        tracing::info!(
            sales = ledger.len(),
            idempotency_keys = keys.len(),
            "flash-sale ledger rebuilt from storage"
        );
        Ok((
            Self {
                store,
                clock,
                ledger,
                commit,
                keys,
                contest_book: ContestBook::default(),
                counters: Counters::default(),
                settings,
                contest,
                shared,
                writer: format!("flashmart-{}", uuid::Uuid::new_v4().simple()),
                writing: tokio::sync::Mutex::new(CatchUps::default()),
                catch_ups_begun: std::sync::atomic::AtomicU64::new(0),
            },
            task,
        ))
    }

    /// A place in the commit queue (waiting for one is the backpressure when storage falls
    /// behind).
    async fn commit_slot(&self) -> Result<commit::Slot<'_>, SaleError> {
        self.commit
            .slot()
            .await
            .map_err(|e| SaleError::Unavailable(e.0))
    }

    /// The group commit's heartbeat, for readiness.
    pub fn commit_heartbeat(&self) -> Arc<crate::health::Heartbeat> {
        self.commit.heartbeat()
    }

    /// A sale's numbers now, and a receiver of the numbers `publish_all` pushes from then on.
    /// (With a shared engine, the numbers now are read from it; if it cannot answer, the last
    /// ones read.)
    pub async fn subscribe(
        &self,
        sale: SaleId,
    ) -> Option<(SaleSnapshot, watch::Receiver<SaleSnapshot>)> {
        let live = self.ledger.get(&sale)?;
        if let Err(err) = self.mirror(&live).await {
            tracing::warn!(%err, %sale, "cannot read the sale's stock from the shared engine");
        }
        let mut rx = live.subscribe();
        rx.mark_unchanged();
        Some((live.snapshot(self.clock.now()), rx))
    }

    /// Pushes each sale's current numbers to its subscribers, where they changed (with a shared
    /// engine, live sales' numbers are read from it first).
    pub async fn publish_all(&self) {
        let now = self.clock.now();
        for sale in self.ledger.all() {
            if self.shared.is_some()
                && sale.record.rules.window().phase(now) != SalePhase::Ended
                && let Err(err) = self.mirror(&sale).await
            {
                tracing::warn!(%err, sale = %sale.record.id, "cannot read the sale's stock from the shared engine");
            }
            sale.publish(now);
        }
    }

    /// With a shared engine, sets the ledger's copy of a sale's stock to the engine's.
    pub(crate) async fn mirror(&self, sale: &ledger::LiveSale) -> Result<(), SaleError> {
        let Some(engine) = &self.shared else {
            return Ok(());
        };
        match engine.remaining(sale.record.id).await? {
            Some(remaining) => sale.mirror(&remaining),
            // Not in the engine (lost, or never loaded): marked lost, and rebuilt from the
            // records once the grace has passed, by this or the next look (every publish), or
            // by the first reservation after it.
            None => {
                self.restore(engine.as_ref(), sale.record.id, self.clock.now())
                    .await?;
            }
        }
        Ok(())
    }

    /// A sale the engine does not hold: marked lost (unless it is there after all), and
    /// loaded from the records once the grace since it was first found missing has passed, so
    /// that every reservation decided before the loss has landed in the records or failed.
    /// Returns the rebuild time while it is still to come.
    pub(crate) async fn restore(
        &self,
        engine: &dyn SharedEngine,
        sale: SaleId,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, SaleError> {
        let unavailable = |e: StoreError| SaleError::Unavailable(e.to_string().into());
        let Some(rebuild_at) = engine
            .mark_lost(sale, now + self.settings.rebuild_grace)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        if now < rebuild_at {
            return Ok(Some(rebuild_at));
        }
        let state = self
            .store
            .live_sale(sale)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        if engine.load(&state, now).await.map_err(unavailable)? {
            tracing::warn!(%sale, "a sale the reservation engine had lost was rebuilt from the records");
        }
        Ok(None)
    }

    /// Expires reservations whose time ran out and puts their stock back on sale. Returns how
    /// many expired.
    pub async fn sweep_expired(&self) -> Result<usize, StoreError> {
        const BATCH: u32 = 1000;
        // One time for the whole sweep: the contest book marks what is due by it, and storage
        // expires only what is due by it, after every purchase decided before the mark is
        // committed (contest_book.rs).
        let now = self.clock.now();
        if self.contest.is_some() {
            self.contest_book.expire_due(now);
            self.commit.flush().await;
        }
        // Reservations this instance answered before storing them expire with the others
        // (another instance's are stored by it or the log writers long before they expire).
        if self.answers_before_storing() {
            self.commit.flush().await;
        }
        let mut total = 0;
        loop {
            let released = self.store.expire_due(now, BATCH).await?;
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
        // What is held counts only once it is stored: nothing answered may be left out.
        self.catch_up().await?;
        let given = self.store.return_unsold(self.clock.now()).await?;
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
        match &self.shared {
            None => {
                self.ledger.release(released);
                Ok(())
            }
            Some(engine) => engine.settle(released, to).await.map(|_| ()),
        }
    }

    /// Forgets old idempotency keys and sales long ended.
    pub fn housekeeping(&self) {
        let now = self.clock.now();
        self.keys.prune(now);
        self.contest_book.prune(now - Duration::MINUTE);
        self.ledger.drop_ended(now - self.settings.keep_ended_for);
    }

    /// Waits until every write queued so far is durable (shutdown).
    pub async fn flush(&self) {
        self.commit.flush().await;
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

impl FlashSales {
    /// With a shared engine: stores the reservations its logs hold that no instance stored (the
    /// one that decided them died before its write, or the write failed), and acknowledges
    /// them. Every instance runs it under a writer name of its own, one pass at a time: each
    /// log entry goes to one writer, and one that dies leaves its entries to the others. Entries
    /// whose reservation is stored already (most: by the request that made it) are only
    /// acknowledged; writing one stored meanwhile changes nothing. Returns how many reservations
    /// it wrote.
    pub async fn write_logged(&self) -> Result<usize, StoreError> {
        self.write_logged_taking(WRITER_IDLE, None).await
    }

    /// `write_logged`, taking over entries another writer has held for `stale_after`. For a
    /// catch-up (`arrived`: the catch-up passes begun when its caller came), nothing is done
    /// when a catch-up pass that began later has finished while it waited.
    async fn write_logged_taking(
        &self,
        stale_after: std::time::Duration,
        arrived: Option<u64>,
    ) -> Result<usize, StoreError> {
        const BATCH: usize = 500;
        let Some(engine) = &self.shared else {
            return Ok(0);
        };
        let writer = self.writer.as_str();
        let mut turn = self.writing.lock().await;
        let pass = match arrived {
            Some(arrived) if turn.done > arrived => return Ok(0),
            Some(_) => Some(self.catch_ups_begun.fetch_add(1, Ordering::SeqCst) + 1),
            None => None,
        };
        // What this instance's requests stored is dropped from the logs first: most entries,
        // which no writer then reads.
        let mut stored: std::collections::HashMap<SaleId, Vec<LogEntry>> = Default::default();
        for (sale, entry) in self.commit.stored_log() {
            stored.entry(sale).or_default().push(entry);
        }
        for (sale, entries) in stored {
            if let Err(err) = engine.forget_logged(sale, &entries).await {
                // Left in the log: read below, found stored, acknowledged.
                tracing::warn!(%err, %sale, "stored reservations could not be dropped from the log");
            }
        }
        // Sales made on other instances since this one started have logs too.
        let now = self.clock.now();
        let mut page = PageRequest::new(Some(1), Some(PageRequest::MAX_PER_PAGE));
        loop {
            let live = self
                .store
                .list_sales(Some(SalePhase::Live), now, page)
                .await?;
            for sale in live
                .items
                .iter()
                .filter(|s| self.ledger.get(&s.id).is_none())
            {
                if let Some(state) = self.store.live_sale(sale.id).await? {
                    self.ledger.install(state, now);
                }
            }
            if u64::from(page.page()) * u64::from(page.per_page()) >= live.total {
                break;
            }
            page = PageRequest::new(Some(page.page() + 1), Some(page.per_page()));
        }
        let mut written = 0;
        let mut waiting = 0;
        for sale in self.ledger.all() {
            let ended_at = sale.record.rules.window().ends_at();
            if now >= ended_at && !sale.retired() {
                // Nothing reserves any more; settlements can come until the last reservation
                // expires, and replays of an idempotency key for a day after it was used.
                let at = ended_at + sale.record.rules.reservation_ttl() + KEY_LIFETIME;
                match engine.retire(sale.record.id, at).await {
                    Ok(()) => sale.set_retired(),
                    Err(err) => {
                        tracing::warn!(%err, sale = %sale.record.id, "an ended sale's keys could not be given their expiry; will retry");
                    }
                }
            }
            loop {
                let logged = engine
                    .take_logged(sale.record.id, writer, BATCH, stale_after)
                    .await?;
                if logged.is_empty() {
                    break;
                }
                // Most were stored by the request that made them: only the others are written.
                let ids: Vec<_> = logged.iter().map(|l| l.id).collect();
                let stored: std::collections::HashSet<_> = self
                    .store
                    .stored_reservations(&ids)
                    .await?
                    .into_iter()
                    .collect();
                let mut writes = Vec::with_capacity(logged.len());
                for entry in logged.iter().filter(|l| !stored.contains(&l.id)) {
                    let decided = reserve::decided_reservation(
                        &sale,
                        entry.id,
                        entry.item_no,
                        entry.buyer,
                        entry.quantity,
                        entry.expires_at,
                        None,
                        entry.buyer_ref.clone(),
                    )
                    .ok_or_else(|| {
                        StoreError::Other(
                            format!(
                                "a logged reservation names no item of sale {}",
                                sale.record.id
                            )
                            .into(),
                        )
                    })?;
                    writes.push(self.commit.submit(JournalOp::Record(Box::new(decided))));
                }
                written += writes.len();
                for done in futures_util::future::join_all(writes).await {
                    done.map_err(|e| StoreError::Unavailable(e.0.to_string()))?;
                }
                let entries: Vec<String> = logged.iter().map(|l| l.entry.clone()).collect();
                let left = engine.ack_logged(sale.record.id, &entries).await?;
                if logged.len() < BATCH {
                    waiting += left;
                    break;
                }
            }
        }
        metrics::gauge!("flash_sale_log_waiting").set(waiting as f64);
        if let Some(pass) = pass {
            turn.done = pass;
        }
        Ok(written)
    }

    /// With `Ack::Engine`, a reservation may be answered before it is stored: a read that
    /// finds no reservation or order by an id calls this, then reads again (`read_through`),
    /// and so do lists of orders and reservations, a sale's numbers and the return of unsold
    /// units before they read. It returns once what this instance queued is committed and
    /// everything the logs held when it was called is stored, entries another writer is still
    /// writing included (taken over at once and written a second time, which changes nothing):
    /// by a pass of its own, or by one that began after it came (many reads missing at once
    /// share passes). Otherwise it returns at once.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        if !self.answers_before_storing() {
            return Ok(());
        }
        let arrived = self.catch_ups_begun.load(Ordering::SeqCst);
        self.commit.flush().await;
        self.write_logged_taking(std::time::Duration::ZERO, Some(arrived))
            .await
            .map(|_| ())
    }

    /// Whether a reservation can be answered before the records hold it (`Ack::Engine`).
    fn answers_before_storing(&self) -> bool {
        self.shared.is_some() && self.settings.ack == Ack::Engine
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
        if found.is_some() || !self.answers_before_storing() {
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
        let Some(engine) = &self.shared else {
            return Err(StoreError::Other(
                "reconcile compares the shared engine (redis.url) with the records; none is set"
                    .into(),
            ));
        };
        self.write_logged().await?;
        let now = self.clock.now();
        let mut report = Vec::new();
        for state in self.store.live_sales(now).await? {
            let id = state.sale.id;
            let outcome = match engine.remaining(id).await? {
                None => match engine
                    .mark_lost(id, now + self.settings.rebuild_grace)
                    .await?
                {
                    Some(rebuild_at) => Reconciled::Lost { rebuild_at },
                    None => continue,
                },
                Some(remaining) => {
                    let differs = state.items.iter().find_map(|item| {
                        let records = item.stock.saturating_sub(item.held);
                        let engine = remaining
                            .iter()
                            .find(|(no, _)| *no == item.no)
                            .map_or(0, |(_, left)| *left);
                        (engine != records).then_some(Reconciled::Differs {
                            item_no: item.no,
                            engine,
                            records,
                        })
                    });
                    differs.unwrap_or(Reconciled::Agrees {
                        remaining: remaining.iter().map(|(_, left)| u64::from(*left)).sum(),
                    })
                }
            };
            report.push((state.sale, outcome));
        }
        Ok(report)
    }
}
