//! Flash sales: the record store for sales, items, schedules and reservations, and the journal the
//! group commit writes accepted reservations to.

use async_trait::async_trait;
use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::{ReservationId, SaleId, ScheduleId};
use time::OffsetDateTime;

use crate::audit::AuditEntry;
use crate::error::StoreError;
use crate::flash_sale::idempotency::Refusal;
use crate::flash_sale::model::{
    BuyerId, ItemRecord, JournalOp, JournalOutcome, LiveSaleState, NewItem, Released,
    ReservationRecord, SaleInsert, SaleRecord, Schedule, StoredIdempotency, StoredStats,
};
use crate::page::{Page, PageRequest};

#[async_trait]
pub trait FlashSaleStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a sale and its items in one transaction. A sale for a schedule slot that already
    /// has one is not stored (`SlotTaken`). An item with a product moves its stock out of the
    /// product's by a conditional update; a product with less is `ProductShort`, and nothing is
    /// stored. `audit` (absent for a sale a schedule made) is written in the same transaction.
    async fn insert_sale(
        &self,
        sale: &SaleRecord,
        items: &[NewItem],
        audit: Option<&AuditEntry>,
    ) -> Result<SaleInsert, StoreError>;
    async fn sale(&self, id: SaleId) -> Result<Option<SaleRecord>, StoreError>;
    /// The sale a schedule made for a slot, if any.
    async fn sale_for_slot(
        &self,
        schedule: ScheduleId,
        slot: OffsetDateTime,
    ) -> Result<Option<SaleRecord>, StoreError>;
    /// Sales in the given phase at `now` (all when `None`), soonest-starting first.
    async fn list_sales(
        &self,
        phase: Option<SalePhase>,
        now: OffsetDateTime,
        page: PageRequest,
    ) -> Result<Page<SaleRecord>, StoreError>;
    async fn items(&self, sale: SaleId, page: PageRequest) -> Result<Page<ItemRecord>, StoreError>;
    /// Every sale ending after `since`, with its stock and what is held: what the in-memory
    /// ledger is rebuilt from at start.
    async fn live_sales(&self, since: OffsetDateTime) -> Result<Vec<LiveSaleState>, StoreError>;
    /// One sale's state, as `live_sales` gives it.
    async fn live_sale(&self, id: SaleId) -> Result<Option<LiveSaleState>, StoreError>;

    async fn reservation(&self, id: ReservationId)
    -> Result<Option<ReservationRecord>, StoreError>;
    /// Which of `ids` are stored (in no particular order).
    async fn stored_reservations(
        &self,
        ids: &[ReservationId],
    ) -> Result<Vec<ReservationId>, StoreError>;
    /// A sale's reservations in the order they were made. With `after`, the page starts after
    /// that reservation (keyset paging, for walking a large sale) and `page` only sets its size.
    async fn reservations(
        &self,
        sale: SaleId,
        page: PageRequest,
        after: Option<ReservationId>,
    ) -> Result<Page<ReservationRecord>, StoreError>;
    async fn stats(&self, sale: SaleId) -> Result<StoredStats, StoreError>;
    /// Idempotency keys used since `since`, with the reservations they made.
    async fn idempotency_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<StoredIdempotency>, StoreError>;
    /// Marks up to `limit` reservations whose time ran out as expired (and their orders), in one
    /// transaction, and says what stock they held.
    async fn expire_due(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Released>, StoreError>;

    /// Gives product-backed items of sales ended by `now` back to their product: every unit
    /// not reserved or bought, and each unit a reservation releases after the end. One
    /// transaction; an item is settled (left alone) once nothing of it is held. Returns the
    /// units given back.
    async fn return_unsold(&self, now: OffsetDateTime) -> Result<u64, StoreError>;

    /// Stores a schedule and `audit` (absent for one the server made itself), in one
    /// transaction; `Conflict` when the name is taken.
    async fn insert_schedule(
        &self,
        schedule: &Schedule,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError>;
    async fn schedules(&self, page: PageRequest) -> Result<Page<Schedule>, StoreError>;
    async fn schedule_by_name(&self, name: &str) -> Result<Option<Schedule>, StoreError>;
}

/// Where the group commit makes reservations durable.
#[async_trait]
pub trait ReservationJournal: Send + Sync + std::fmt::Debug + 'static {
    /// Applies every op in one transaction: all or nothing. One outcome per op, in order.
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError>;
}

/// A reservation asked of a shared engine.
#[derive(Debug, Clone, Copy)]
pub struct SharedReserve<'a> {
    pub sale: SaleId,
    pub item_no: u32,
    pub buyer: BuyerId,
    pub quantity: u32,
    pub idempotency_key: Option<&'a str>,
    pub now: OffsetDateTime,
    /// The name the caller gave the buyer (the contest API's users, who have no account):
    /// logged with the reservation, which is then stored without an order.
    pub buyer_ref: Option<&'a str>,
    /// `Idempotency-Key`s one buyer may have remembered in the sale (0: no cap).
    pub max_keys: u32,
}

/// A reservation's entry in its sale's log (Redis: a stream entry id, `ms-seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogEntry(pub u64, pub u64);

/// What a shared engine decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    /// Reserved, now or (`replayed`) for an earlier request with the same key.
    Reserved {
        id: ReservationId,
        expires_at: OffsetDateTime,
        replayed: bool,
        /// Where the engine logged it (none for a replay): once the records hold it, the
        /// entry may go (`SharedEngine::forget_logged`).
        logged: Option<LogEntry>,
    },
    Refused {
        refusal: Refusal,
        replayed: bool,
    },
    /// The key was used before with another request.
    KeyReused,
    /// A new key, and the buyer has as many as they may in the sale.
    TooManyKeys,
    /// The engine holds nothing of this sale (never loaded, or lost).
    Missing,
    /// The engine lost this sale and waits until `at` before it is rebuilt from the records
    /// (by then every write of a reservation it decided has landed or failed).
    Rebuilding {
        at: OffsetDateTime,
    },
}

/// Where a reservation goes when it stops holding its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleTo {
    Expired,
    Cancelled,
    Purchased,
}

/// A reservation the shared engine decided, as its log carries it: what a writer needs to store
/// it when the instance that decided it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedReservation {
    /// Its place in the log, to acknowledge it by.
    pub entry: String,
    pub id: ReservationId,
    pub item_no: u32,
    pub buyer: BuyerId,
    pub quantity: u32,
    pub expires_at: OffsetDateTime,
    /// Set for the contest API's caller-named buyers.
    pub buyer_ref: Option<String>,
}

/// A reservation engine that every instance shares (Redis): it decides each reservation
/// atomically per sale (window, stock, the buyer's limit, the `Idempotency-Key`) for all of
/// them at once. Records stay in the record store; the engine holds only what deciding needs.
#[async_trait]
pub trait SharedEngine: Send + Sync + std::fmt::Debug + 'static {
    /// Makes a sale known, with its remaining stock and what each buyer holds, unless the
    /// engine already holds it, or it was marked lost and `now` is before its rebuild time
    /// (then nothing changes). Returns whether it loaded.
    async fn load(&self, state: &LiveSaleState, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Marks a sale the engine does not hold as lost, to be rebuilt no sooner than
    /// `rebuild_at` (a sale marked already keeps its first time). Returns the rebuild time, or
    /// `None` when the sale is there after all.
    async fn mark_lost(
        &self,
        sale: SaleId,
        rebuild_at: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError>;
    async fn reserve(&self, request: &SharedReserve<'_>) -> Result<SharedDecision, StoreError>;
    /// Moves a reservation (as the records hold it) out of `reserved` once; its units come
    /// back unless it was purchased, also when the engine lost it and rebuilt the sale from the
    /// records. Returns whether it changed (false: settled before).
    async fn settle(&self, released: &Released, to: SettleTo) -> Result<bool, StoreError>;
    /// Each item's remaining stock, in item order; `None` when the engine does not hold the
    /// sale.
    async fn remaining(&self, sale: SaleId) -> Result<Option<Vec<(u32, u32)>>, StoreError>;
    /// Up to `max` reservations of the sale's log for `writer` to store: entries given to a
    /// writer that has not acknowledged them for `stale_after`, and entries no writer was given
    /// yet that were logged `stale_after` ago or earlier, by the engine's clock (by then the
    /// instance that logged one has stored it and dropped it from the log, unless it died);
    /// with zero, every entry, including those another writer or the instance that logged them
    /// may still be writing (writing one twice changes nothing). Each stays the writer's until
    /// acknowledged. First, whatever their entries' age, the reservations this engine made for
    /// requests that went away before hearing the answer, which no request will store.
    async fn take_logged(
        &self,
        sale: SaleId,
        writer: &str,
        max: usize,
        stale_after: std::time::Duration,
    ) -> Result<Vec<LoggedReservation>, StoreError>;
    /// The entries are stored: they leave the log. Returns how many entries wait in the log
    /// still (given to no writer, or not acknowledged).
    async fn ack_logged(&self, sale: SaleId, entries: &[String]) -> Result<u64, StoreError>;
    /// Gives everything the engine holds of an ended sale an expiry at `at` (after the last
    /// settlement and idempotent replay it can see): the engine does not keep sales for ever.
    async fn retire(&self, sale: SaleId, at: OffsetDateTime) -> Result<(), StoreError>;
    /// Deletes everything the engine holds of a sale at once, whatever any clock says: for a
    /// sale that was loaded but never stored (no instance can have reserved from it).
    async fn remove(&self, sale: SaleId) -> Result<(), StoreError>;
    /// The sales whose keys may have no expiry yet (loaded or marked lost, not retired): a
    /// sale among them that ended while no instance held it in memory is retired late.
    async fn unretired(&self) -> Result<Vec<SaleId>, StoreError>;
    /// Drops log entries whose reservations the records hold (stored by the instance that
    /// decided them), so that no writer reads them. Returns how many went.
    async fn forget_logged(&self, sale: SaleId, entries: &[LogEntry]) -> Result<u64, StoreError>;
}
