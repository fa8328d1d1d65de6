//! The shared engine's side of the use cases: a reservation decided by the `SharedEngine` port
//! (Redis) for every instance at once, written to the records by this instance's group commit
//! (before the answer with `flash_sale.ack = database`, after it with `redis`), and the log
//! writers that store what an instance decided but did not store. The ledger only mirrors the
//! engine's stock here, for views and live events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flashmart_domain::flash_sale::SalePhase;
use flashmart_domain::{ReservationId, SaleId};
use time::OffsetDateTime;

use super::counters::Counted;
use super::engine::{Core, Engine};
use super::idempotency::{self, KEY_LIFETIME, Refusal};
use super::ledger::LiveSale;
use super::model::{
    IdempotencyRecord, JournalOp, LiveSaleState, PurchaseOutcome, Released, ReservationRecord,
    SaleRecord,
};
use super::reserve::{Reserver, decided_reservation, unavailable};
use super::{Ack, Reconciled, SaleError};
use crate::error::StoreError;
use crate::page::PageRequest;
use crate::ports::{LogEntry, SettleTo, SharedDecision, SharedEngine, SharedReserve};

/// How long a log entry given to a writer may stay unacknowledged before another writer takes
/// it over (the first is taken to have died; if it was only slow, the entry is written twice,
/// which changes nothing).
const WRITER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct Shared {
    core: Arc<Core>,
    engine: Arc<dyn SharedEngine>,
    /// This instance's name among the engine's log writers, and its turn: one pass at a time
    /// (the worker's, or a read's catching up).
    writer: String,
    writing: tokio::sync::Mutex<CatchUps>,
    /// Catch-up passes begun (under `writing`); read without it by a caller arriving.
    catch_ups_begun: AtomicU64,
}

/// The catch-up passes done, so that a read arriving while others wait needs no pass of its
/// own once one that began after it has finished.
#[derive(Debug, Default)]
struct CatchUps {
    done: u64,
}

impl Shared {
    pub fn new(core: Arc<Core>, engine: Arc<dyn SharedEngine>) -> Self {
        Self {
            core,
            engine,
            writer: format!("flashmart-{}", uuid::Uuid::new_v4().simple()),
            writing: tokio::sync::Mutex::new(CatchUps::default()),
            catch_ups_begun: AtomicU64::new(0),
        }
    }

    /// A reservation decided by the shared engine (Redis), then written to the records (with its
    /// order, unless the buyer is the contest's caller-named one) by the group commit before the
    /// answer (`Ack::Database`), or queued for it and answered at once (`Ack::Engine`). A
    /// replayed answer is written again (a write of the same rows changes nothing), so the answer
    /// for a key is always one the records hold, even when the first request's write failed.
    async fn reserve_decided(
        &self,
        who: &Reserver,
        sale_id: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let sale = match self.core.ledger.get(&sale_id) {
            Some(sale) => sale,
            // Made by another instance: mirrored here, ended or not (a key's answer from
            // before the end is replayed by the engine).
            None => match self.hold_stored(sale_id, true).await? {
                Some(sale) => sale,
                None => {
                    self.core
                        .counters
                        .count(Counted::Refused(Refusal::SaleNotFound));
                    return Err(Refusal::SaleNotFound.into());
                }
            },
        };
        let buyer = who.buyer;
        let now = self.core.clock.now();
        // Not started and ended are answered here, from the sale's window (which never
        // changes, and which the engine compares with this same clock's `now`): the rush
        // before a drop opens costs the engine nothing, and its copy of an ended sale expires
        // (see `retire`). Except to a key, whose answer the engine remembers (or may replay
        // from before the end).
        let phase = sale.record.rules.window().phase(now);
        let ended = phase == SalePhase::Ended;
        if idempotency_key.is_none() {
            let refusal = match phase {
                SalePhase::Upcoming => Some(Refusal::NotStarted),
                SalePhase::Ended => Some(Refusal::Ended),
                // Sold out a moment ago by the engine's own answer: said again without
                // asking it.
                SalePhase::Live => sale
                    .sold_out_lately(item_no, quantity, now)
                    .then_some(Refusal::SoldOut),
            };
            if let Some(refusal) = refusal {
                self.core.counters.count(Counted::Refused(refusal));
                return Err(refusal.into());
            }
        }
        let returns_seen = sale.returns_seen();
        // Room in the commit queue before the engine decides: a reservation decided is then
        // written at the next batch, never held back behind a full queue (the grace before a
        // lost sale is rebuilt counts on its write landing soon).
        let slot = self.core.commit_slot().await?;
        let request = SharedReserve {
            sale: sale_id,
            item_no,
            buyer,
            quantity,
            idempotency_key,
            now,
            buyer_ref: who.buyer_ref.as_deref(),
            max_keys: self.core.settings.max_idempotency_keys_per_user,
        };
        // Asked again after a sale is loaded or rebuilt; a third time is not needed.
        let engine = self.engine.as_ref();
        let mut decision = engine.reserve(&request).await.map_err(unavailable)?;
        for _ in 0..2 {
            match decision {
                // Expired with the rest of an ended sale: nothing to rebuild.
                SharedDecision::Missing if ended => {
                    self.core.counters.count(Counted::Refused(Refusal::Ended));
                    return Err(Refusal::Ended.into());
                }
                // Made on another instance whose load failed, or lost by the engine with
                // reservations whose writes may still be on their way: marked lost, and rebuilt
                // from the records once they have all landed.
                SharedDecision::Missing | SharedDecision::Rebuilding { .. } => {
                    if self.restore(sale_id, request.now).await?.is_some() {
                        self.core.counters.count(Counted::Unavailable);
                        return Err(SaleError::Unavailable(
                            "the sale is being rebuilt after the reservation engine lost it; \
                             retry in a few seconds"
                                .into(),
                        ));
                    }
                    decision = engine.reserve(&request).await.map_err(unavailable)?;
                }
                _ => break,
            }
        }
        let (id, expires_at, replayed, logged) = match decision {
            SharedDecision::Reserved {
                id,
                expires_at,
                replayed,
                logged,
            } => (id, expires_at, replayed, logged),
            SharedDecision::Refused { refusal, replayed } => {
                if refusal == Refusal::SoldOut && !replayed {
                    sale.remember_sold_out(item_no, quantity, now, returns_seen);
                }
                self.core.counters.count(if replayed {
                    Counted::Replayed
                } else {
                    Counted::Refused(refusal)
                });
                return Err(refusal.into());
            }
            SharedDecision::KeyReused => return Err(SaleError::KeyReused),
            SharedDecision::TooManyKeys => return Err(SaleError::TooManyKeys),
            SharedDecision::Missing | SharedDecision::Rebuilding { .. } => {
                self.core.counters.count(Counted::Unavailable);
                return Err(SaleError::Unavailable(
                    "the sale could not be loaded into the reservation engine".into(),
                ));
            }
        };
        let idempotency = idempotency_key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            fingerprint: idempotency::fingerprint(sale_id, item_no, quantity),
        });
        let decided = decided_reservation(
            &sale,
            id,
            item_no,
            buyer,
            quantity,
            expires_at,
            idempotency,
            who.buyer_ref.clone(),
        )
        .ok_or(SaleError::ItemNotFound)?;
        let record = Arc::clone(&decided.record);
        let op = JournalOp::Record {
            reservation: Box::new(decided),
            replayed,
        };
        // Once stored, its log entry can go: no writer needs to read it.
        let logged = logged.map(|entry| (sale_id, entry));
        let Some(committed) = slot.send_logged(op, logged, self.core.settings.ack == Ack::Database)
        else {
            // Answered now, as durable as the engine's log: the write is queued, and should it
            // fail or this instance die first, a log writer stores the reservation.
            self.core.counters.count(if replayed {
                Counted::Replayed
            } else {
                Counted::Reserved
            });
            return Ok(record);
        };
        match committed.await {
            Ok(Ok(_)) => {
                self.core.counters.count(if replayed {
                    Counted::Replayed
                } else {
                    Counted::Reserved
                });
                Ok(record)
            }
            Ok(Err(failed)) => {
                self.core.counters.count(Counted::Unavailable);
                Err(SaleError::Unavailable(failed.0))
            }
            Err(_) => Err(SaleError::Unavailable("the commit task has stopped".into())),
        }
    }

    /// Gives every ended sale the engine still keeps without an expiry one: nothing reserves
    /// any more, settlements can come until the last reservation expires, and replays of an
    /// idempotency key for a day after it was used. The engine lists those sales (`unretired`),
    /// so one that ended while no instance held it in memory (none ran, or each had dropped it)
    /// is found too: looked up in the records once (and held from then on, if it has not
    /// ended). A time already past removes its keys at once. Failures are logged; the next pass
    /// tries again.
    async fn retire_ended(&self, now: OffsetDateTime) {
        let unretired = match self.engine.unretired().await {
            Ok(sales) => sales,
            Err(err) => {
                tracing::warn!(%err, "cannot list the sales the reservation engine keeps without an expiry");
                return;
            }
        };
        for id in unretired {
            let record = match self.core.ledger.get(&id) {
                Some(sale) => sale.record.clone(),
                None => match self.core.store.live_sale(id).await {
                    Ok(Some(state)) if now < state.sale.rules.window().ends_at() => {
                        // Made on another instance and not ended: held here from now on.
                        self.core.ledger.install(state, now);
                        continue;
                    }
                    Ok(Some(state)) => state.sale,
                    // Not in the records (a sale is stored before it is loaded, so this is
                    // another shop's under the same prefix): left alone.
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(%err, sale = %id, "cannot read a sale to retire its keys");
                        continue;
                    }
                },
            };
            let ended_at = record.rules.window().ends_at();
            if now < ended_at {
                continue;
            }
            let at = ended_at + record.rules.reservation_ttl() + KEY_LIFETIME;
            if let Err(err) = self.engine.retire(id, at).await {
                tracing::warn!(%err, sale = %id, "an ended sale's keys could not be given their expiry; will retry");
            }
        }
    }

    /// A sale made by another instance, read from the records and held in the ledger from now
    /// on (an ended one only if `ended_too`); `None` when the records have no such sale.
    async fn hold_stored(
        &self,
        id: SaleId,
        ended_too: bool,
    ) -> Result<Option<Arc<LiveSale>>, StoreError> {
        let now = self.core.clock.now();
        Ok(self
            .core
            .store
            .live_sale(id)
            .await?
            .filter(|state| ended_too || state.sale.rules.window().phase(now) != SalePhase::Ended)
            .map(|state| self.core.ledger.install(state, now)))
    }

    /// Sets the ledger's copy of a sale's stock to the engine's.
    async fn mirror(&self, sale: &LiveSale) -> Result<(), SaleError> {
        match self.engine.remaining(sale.record.id).await? {
            Some(remaining) => sale.mirror(&remaining),
            // Not in the engine (lost, or never loaded): marked lost, and rebuilt from the
            // records once the grace has passed, by this or the next look (every publish), or
            // by the first reservation after it.
            None => {
                self.restore(sale.record.id, self.core.clock.now()).await?;
            }
        }
        Ok(())
    }

    /// A sale the engine does not hold: marked lost (unless it is there after all), and
    /// loaded from the records once the grace since it was first found missing has passed, so
    /// that every reservation decided before the loss has landed in the records or failed.
    /// Returns the rebuild time while it is still to come.
    async fn restore(
        &self,
        sale: SaleId,
        now: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, SaleError> {
        let engine = self.engine.as_ref();
        let Some(rebuild_at) = engine
            .mark_lost(sale, now + self.core.settings.rebuild_grace)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        if now < rebuild_at {
            return Ok(Some(rebuild_at));
        }
        let state = self
            .core
            .store
            .live_sale(sale)
            .await?
            .ok_or(SaleError::SaleNotFound)?;
        if engine.load(&state, now).await.map_err(unavailable)? {
            tracing::warn!(%sale, "a sale the reservation engine had lost was rebuilt from the records");
        }
        Ok(None)
    }

    /// Stores the reservations the logs hold that no instance stored (the one that decided them
    /// died before its write, or the write failed), and acknowledges them, taking over entries
    /// another writer has held for `stale_after`. Every instance runs it under a writer name of
    /// its own, one pass at a time: each log entry goes to one writer, and one that dies leaves
    /// its entries to the others. Entries whose reservation is stored already (most: by the
    /// request that made it) are only acknowledged; writing one stored meanwhile changes
    /// nothing. Returns how many reservations it wrote. For a catch-up (`arrived`: the catch-up
    /// passes begun when its caller came), nothing is done when a catch-up pass that began
    /// later has finished while it waited. Ended sales are retired on the way
    /// (`retire_ended`).
    async fn write_logged_taking(
        &self,
        stale_after: std::time::Duration,
        arrived: Option<u64>,
    ) -> Result<usize, StoreError> {
        const BATCH: usize = 500;
        let engine = self.engine.as_ref();
        let writer = self.writer.as_str();
        let mut turn = self.writing.lock().await;
        let pass = match arrived {
            Some(arrived) if turn.done > arrived => return Ok(0),
            Some(_) => Some(self.catch_ups_begun.fetch_add(1, Ordering::SeqCst) + 1),
            None => None,
        };
        // What this instance's requests stored is dropped from the logs first: most entries,
        // which no writer then reads.
        self.forget_stored().await;
        // Sales made on other instances since this one started have logs too.
        let now = self.core.clock.now();
        let mut page = PageRequest::new(Some(1), Some(PageRequest::MAX_PER_PAGE));
        loop {
            let live = self
                .core
                .store
                .list_sales(Some(SalePhase::Live), now, page)
                .await?;
            for sale in live
                .items
                .iter()
                .filter(|s| self.core.ledger.get(&s.id).is_none())
            {
                self.hold_stored(sale.id, true).await?;
            }
            if u64::from(page.page()) * u64::from(page.per_page()) >= live.total {
                break;
            }
            page = PageRequest::new(Some(page.page() + 1), Some(page.per_page()));
        }
        self.retire_ended(now).await;
        let mut written = 0;
        let mut waiting = 0;
        for sale in self.core.ledger.all() {
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
                    .core
                    .store
                    .stored_reservations(&ids)
                    .await?
                    .into_iter()
                    .collect();
                let mut writes = Vec::with_capacity(logged.len());
                for entry in logged.iter().filter(|l| !stored.contains(&l.id)) {
                    let decided = decided_reservation(
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
                    // Not stored when looked up just now: expected not to be there.
                    writes.push(self.core.commit.submit(JournalOp::Record {
                        reservation: Box::new(decided),
                        replayed: false,
                    }));
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
}

impl Engine for Shared {
    async fn reserve(
        &self,
        who: &Reserver,
        sale: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        self.reserve_decided(who, sale, item_no, quantity, idempotency_key)
            .await
    }

    async fn load(&self, state: &LiveSaleState) -> Result<(), SaleError> {
        self.engine.load(state, self.core.clock.now()).await?;
        Ok(())
    }

    async fn unload(&self, sale: SaleId) {
        if let Err(err) = self.engine.remove(sale).await {
            tracing::warn!(%err, %sale, "a sale that was not stored could not be dropped from the reservation engine");
        }
    }

    async fn refresh(&self, sale: &LiveSale) -> Result<(), SaleError> {
        self.mirror(sale).await
    }

    async fn settle(&self, released: &Released, to: SettleTo) -> Result<(), StoreError> {
        let settled = self.engine.settle(released, to).await.map(|_| ());
        // Expired or cancelled, its units may be back on sale: this instance asks the engine
        // again at once (whether the engine took them back or failed half way). A purchase
        // gives nothing back, and keeps what this instance remembers.
        if to != SettleTo::Purchased
            && let Some(sale) = self.core.ledger.get(&released.sale_id)
        {
            sale.stock_returned();
        }
        settled
    }

    fn checked_out(&self, _record: &Arc<ReservationRecord>) {
        // Purchases are decided by the records (see `purchase`): nothing kept here.
    }

    /// The records decide (a purchase races an expiry there, under the reservation's row
    /// lock), then the engine is told, once. A reservation answered but not stored yet
    /// (`Ack::Engine`) is stored first.
    async fn purchase(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError> {
        let outcome = match self.core.purchase_stored(id).await {
            Err(SaleError::ReservationNotFound) if self.answers_before_storing() => {
                self.catch_up().await?;
                self.core.purchase_stored(id).await?
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
            if let Err(err) = self.engine.settle(&released, SettleTo::Purchased).await {
                // Bought in the records; the engine still holds its units as reserved, which
                // keeps them off sale all the same.
                tracing::warn!(%err, reservation = %reservation.id, "a contest purchase could not be recorded in the shared engine");
            }
        }
        Ok(outcome)
    }

    /// Reservations this instance answered before storing them expire with the others
    /// (another instance's are stored by it or the log writers long before they expire).
    async fn before_expiry(&self, _now: OffsetDateTime) {
        if self.answers_before_storing() {
            self.core.commit.flush().await;
        }
    }

    /// With `Ack::Engine`, a reservation may be answered before it is stored: a read that
    /// finds no reservation or order by an id calls this, then reads again (`read_through`),
    /// and so do lists of orders and reservations, a sale's numbers and the return of unsold
    /// units before they read. It returns once what this instance queued is committed and
    /// everything the logs held when it was called is stored, entries another writer is still
    /// writing included (taken over at once and written a second time, which changes nothing):
    /// by a pass of its own, or by one that began after it came (many reads missing at once
    /// share passes). Otherwise it returns at once.
    async fn catch_up(&self) -> Result<(), StoreError> {
        if !self.answers_before_storing() {
            return Ok(());
        }
        let arrived = self.catch_ups_begun.load(Ordering::SeqCst);
        self.core.commit.flush().await;
        self.write_logged_taking(std::time::Duration::ZERO, Some(arrived))
            .await
            .map(|_| ())
    }

    /// Whether a reservation can be answered before the records hold it (`Ack::Engine`).
    fn answers_before_storing(&self) -> bool {
        self.core.settings.ack == Ack::Engine
    }

    async fn write_logged(&self) -> Result<usize, StoreError> {
        self.write_logged_taking(WRITER_IDLE, None).await
    }

    async fn adopt(&self, sale: SaleId) -> Result<Option<Arc<LiveSale>>, StoreError> {
        self.hold_stored(sale, false).await
    }

    async fn forget_stored(&self) {
        let mut stored: std::collections::HashMap<SaleId, Vec<LogEntry>> = Default::default();
        for (sale, entry) in self.core.commit.stored_log() {
            stored.entry(sale).or_default().push(entry);
        }
        for (sale, entries) in stored {
            if let Err(err) = self.engine.forget_logged(sale, &entries).await {
                // Left in the log: a writer reads it, finds it stored, acknowledges it.
                tracing::warn!(%err, %sale, "stored reservations could not be dropped from the log");
            }
        }
    }

    /// Stores what its logs hold first (`write_logged`), then compares,
    /// for every sale not ended, the stock the engine has left with the stock less what the
    /// records hold, and marks a sale the engine lost for rebuilding. Run while reservations
    /// are being made, a difference can be one in flight; run again, it is gone.
    async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError> {
        let engine = self.engine.as_ref();
        self.write_logged().await?;
        let now = self.core.clock.now();
        let mut report = Vec::new();
        for state in self.core.store.live_sales(now).await? {
            let id = state.sale.id;
            let outcome = match engine.remaining(id).await? {
                None => match engine
                    .mark_lost(id, now + self.core.settings.rebuild_grace)
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

    fn housekeeping(&self, _now: OffsetDateTime) {
        // The engine gives an ended sale's keys an expiry (`retire`): nothing kept here.
    }
}
