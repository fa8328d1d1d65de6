//! The in-memory ledger of the embedded engine: remaining stock per item in atomics, what each
//! buyer holds in a sharded map, and sold-out and window answers without touching storage.
//!
//! A reservation takes stock here first, then queues its write to the group commit and waits for
//! it; if the write fails, the commit task gives the stock back. At start the ledger is rebuilt
//! from storage, which only ever holds committed reservations.
//!
//! Sales are found through a copy-on-write map (`ArcSwap`): reads take no lock, and writes (a new
//! sale, an ended one dropped) are rare.
//!
//! With a shared engine (Redis) the ledger takes no stock: it mirrors the engine's, and remembers
//! for a moment which items the engine answered sold out (`LiveSale::sold_out_lately`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use flashmart_domain::flash_sale::{FlashSaleError, SalePhase};
use flashmart_domain::{SaleId, ScheduleId};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::flash_sale::model::{BuyerId, LiveSaleState, Released, SaleRecord};

/// How long a shared engine's sold-out answer for an item is given again by this instance
/// without asking the engine (see [`LiveSale::sold_out_lately`]). Stock that comes back through
/// another instance (an expiry or a cancellation there) is on sale here at most this much later.
pub const SOLD_OUT_MEMO_MS: u64 = 20;

/// What subscribers of a sale's events see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleSnapshot {
    pub remaining: u64,
    pub phase: SalePhase,
}

#[derive(Debug)]
struct LiveItem {
    remaining: AtomicU32,
    price_cents: i64,
    /// For the order line's name snapshot, so the journal needs no lookup per reservation.
    name: Arc<str>,
    /// With a shared engine: the engine answered this item sold out lately (see
    /// [`LiveSale::sold_out_lately`]); 0 when it did not.
    sold_out: AtomicU64,
}

/// A memo of a shared engine's sold-out answer in one `u64`: until when it holds (Unix
/// milliseconds, the high 44 bits, good for five centuries) and the smallest quantity that was
/// refused (the low 20 bits; a larger quantity is not remembered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SoldOutMemo {
    until_ms: u64,
    quantity: u32,
}

impl SoldOutMemo {
    const QUANTITY_BITS: u32 = 20;
    const QUANTITY_MASK: u64 = (1 << Self::QUANTITY_BITS) - 1;

    fn pack(self) -> Option<u64> {
        let quantity = u64::from(self.quantity);
        (quantity <= Self::QUANTITY_MASK && self.until_ms < 1 << (64 - Self::QUANTITY_BITS))
            .then_some((self.until_ms << Self::QUANTITY_BITS) | quantity)
    }

    fn unpack(packed: u64) -> Self {
        Self {
            until_ms: packed >> Self::QUANTITY_BITS,
            quantity: u32::try_from(packed & Self::QUANTITY_MASK).unwrap_or(u32::MAX),
        }
    }
}

fn unix_ms(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// One sale as the ledger holds it.
#[derive(Debug)]
pub struct LiveSale {
    pub record: SaleRecord,
    items: Box<[LiveItem]>,
    /// Sum of the items' remaining stock, kept alongside them so that snapshots and stats need
    /// not add up thousands of items.
    remaining: AtomicU64,
    buyers: DashMap<BuyerId, u32>,
    snapshots: watch::Sender<SaleSnapshot>,
    /// With a shared engine: how often stock came back through this instance (a settlement),
    /// so that a sold-out answer decided before the stock came back is not remembered after.
    returns: AtomicU64,
}

/// Stock taken for one reservation, not yet durable. `give_back` returns it.
#[derive(Debug)]
pub struct Hold {
    sale: Arc<LiveSale>,
    index: usize,
    buyer: BuyerId,
    quantity: u32,
}

impl Hold {
    pub fn give_back(self) {
        self.sale.release(self.index, self.buyer, self.quantity);
    }

    pub fn price_cents(&self) -> i64 {
        self.sale.items[self.index].price_cents
    }

    pub fn item_name(&self) -> Arc<str> {
        Arc::clone(&self.sale.items[self.index].name)
    }
}

/// Why `try_hold` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldError {
    Rule(FlashSaleError),
    NoSuchItem,
}

impl LiveSale {
    fn from_state(state: LiveSaleState, now: OffsetDateTime) -> Self {
        let mut remaining_total = 0u64;
        let items: Box<[LiveItem]> = state
            .items
            .iter()
            .map(|item| {
                let remaining = item.stock.saturating_sub(item.held);
                remaining_total += u64::from(remaining);
                LiveItem {
                    remaining: AtomicU32::new(remaining),
                    price_cents: item.price_cents,
                    name: Arc::clone(&item.name),
                    sold_out: AtomicU64::new(0),
                }
            })
            .collect();
        let buyers = DashMap::with_capacity(state.buyers.len());
        for (buyer, held) in state.buyers {
            if held > 0 {
                buyers.insert(buyer, held);
            }
        }
        let phase = state.sale.rules.window().phase(now);
        let (snapshots, _) = watch::channel(SaleSnapshot {
            remaining: remaining_total,
            phase,
        });
        Self {
            record: state.sale,
            items,
            remaining: AtomicU64::new(remaining_total),
            buyers,
            snapshots,
            returns: AtomicU64::new(0),
        }
    }

    /// Takes `quantity` of item `no` for `buyer`, if the window, the buyer's limit and the stock
    /// allow. Touches no storage; a sold-out item is refused before any lock is taken.
    /// The refusals `try_hold` would give without taking anything: no such item, outside the
    /// window, sold out. Taking stock checks them again; this only spares a refused request the
    /// rest of the way (a place in the commit queue).
    pub fn precheck(&self, no: u32, quantity: u32, now: OffsetDateTime) -> Result<(), HoldError> {
        let item = self.item_at(no).ok_or(HoldError::NoSuchItem)?;
        self.record
            .rules
            .admit(now, quantity, 0)
            .map_err(HoldError::Rule)?;
        if item.remaining.load(Ordering::Acquire) < quantity {
            return Err(HoldError::Rule(FlashSaleError::SoldOut));
        }
        Ok(())
    }

    pub fn try_hold(
        self: &Arc<Self>,
        no: u32,
        buyer: BuyerId,
        quantity: u32,
        now: OffsetDateTime,
    ) -> Result<Hold, HoldError> {
        let rules = &self.record.rules;
        let index = usize::try_from(no)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|i| *i < self.items.len())
            .ok_or(HoldError::NoSuchItem)?;
        let item = &self.items[index];
        rules.admit(now, quantity, 0).map_err(HoldError::Rule)?;
        if item.remaining.load(Ordering::Acquire) < quantity {
            return Err(HoldError::Rule(FlashSaleError::SoldOut));
        }
        // The buyer's entry stays locked from the limit check to the update, so two requests of
        // one buyer cannot both pass the check.
        match self.buyers.entry(buyer) {
            Entry::Occupied(mut held) => {
                rules
                    .admit(now, quantity, *held.get())
                    .map_err(HoldError::Rule)?;
                take(item, quantity)?;
                *held.get_mut() += quantity;
            }
            Entry::Vacant(vacant) => {
                take(item, quantity)?;
                vacant.insert(quantity);
            }
        }
        self.remaining
            .fetch_sub(u64::from(quantity), Ordering::AcqRel);
        Ok(Hold {
            sale: Arc::clone(self),
            index,
            buyer,
            quantity,
        })
    }

    fn release(&self, index: usize, buyer: BuyerId, quantity: u32) {
        let Some(item) = self.items.get(index) else {
            return;
        };
        item.remaining.fetch_add(quantity, Ordering::AcqRel);
        self.remaining
            .fetch_add(u64::from(quantity), Ordering::AcqRel);
        if let Entry::Occupied(mut held) = self.buyers.entry(buyer) {
            let left = held.get().saturating_sub(quantity);
            if left == 0 {
                held.remove();
            } else {
                *held.get_mut() = left;
            }
        }
    }

    /// Item `no`'s name and price.
    pub fn item(&self, no: u32) -> Option<(Arc<str>, i64)> {
        let item = self.item_at(no)?;
        Some((Arc::clone(&item.name), item.price_cents))
    }

    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Acquire)
    }

    pub fn item_remaining(&self, no: u32) -> Option<u32> {
        self.item_at(no)
            .map(|i| i.remaining.load(Ordering::Acquire))
    }

    /// With a shared engine: whether it answered item `no` sold out for `quantity` (or less)
    /// less than [`SOLD_OUT_MEMO_MS`] milliseconds before `now`, and no stock came back
    /// through this instance since. Such a request is answered sold out without asking the
    /// engine again: once an item is gone, the rush that follows costs the engine one request
    /// per item and instance every [`SOLD_OUT_MEMO_MS`] milliseconds, not one per buyer.
    pub fn sold_out_lately(&self, no: u32, quantity: u32, now: OffsetDateTime) -> bool {
        let Some(item) = self.item_at(no) else {
            return false;
        };
        let memo = SoldOutMemo::unpack(item.sold_out.load(Ordering::SeqCst));
        memo.quantity <= quantity && unix_ms(now) < memo.until_ms
    }

    /// Where stock comes back through this instance now, for [`Self::remember_sold_out`].
    pub fn returns_seen(&self) -> u64 {
        self.returns.load(Ordering::SeqCst)
    }

    /// Remembers the engine's sold-out answer for `quantity` of item `no`, decided at `now`,
    /// unless stock came back through this instance since `returns_seen` was read (before the
    /// engine was asked).
    pub fn remember_sold_out(
        &self,
        no: u32,
        quantity: u32,
        now: OffsetDateTime,
        returns_seen: u64,
    ) {
        let Some(item) = self.item_at(no) else {
            return;
        };
        let until_ms = unix_ms(now).saturating_add(SOLD_OUT_MEMO_MS);
        let Some(packed) = (SoldOutMemo { until_ms, quantity }).pack() else {
            return;
        };
        item.sold_out.store(packed, Ordering::SeqCst);
        // Stored, then checked: a settlement that came meanwhile either sees the memo and
        // clears it, or counted its return before this check, which then clears the memo.
        if self.returns.load(Ordering::SeqCst) != returns_seen {
            let _ = item
                .sold_out
                .compare_exchange(packed, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Stock came back (or may have) through this instance: every sold-out memo of the sale is
    /// dropped, and answers decided before now are not remembered.
    pub fn stock_returned(&self) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        for item in &self.items {
            item.sold_out.store(0, Ordering::SeqCst);
        }
    }

    /// Item `no` (numbered from 1).
    fn item_at(&self, no: u32) -> Option<&LiveItem> {
        let index = usize::try_from(no).ok()?.checked_sub(1)?;
        self.items.get(index)
    }

    pub fn held_by(&self, buyer: &BuyerId) -> u32 {
        self.buyers.get(buyer).map_or(0, |h| *h)
    }

    /// Buyers holding something now.
    pub fn buyer_count(&self) -> usize {
        self.buyers.len()
    }

    pub fn snapshot(&self, now: OffsetDateTime) -> SaleSnapshot {
        SaleSnapshot {
            remaining: self.remaining(),
            phase: self.record.rules.window().phase(now),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<SaleSnapshot> {
        self.snapshots.subscribe()
    }

    /// Sets each item's remaining stock to what a shared engine holds (`(item, remaining)`), so
    /// that this sale's numbers mirror it: with the Redis engine the ledger only shows stock,
    /// it never takes any.
    pub fn mirror(&self, remaining: &[(u32, u32)]) {
        for (no, left) in remaining {
            if let Some(item) = self.item_at(*no) {
                item.remaining.store(*left, Ordering::Release);
                if *left > 0 {
                    // On sale in the engine after all (a sold-out answer may be older).
                    item.sold_out.store(0, Ordering::SeqCst);
                }
            }
        }
        let total = self
            .items
            .iter()
            .map(|i| u64::from(i.remaining.load(Ordering::Acquire)))
            .sum();
        self.remaining.store(total, Ordering::Release);
    }

    /// Tells subscribers the current numbers if they changed.
    pub fn publish(&self, now: OffsetDateTime) {
        let snapshot = self.snapshot(now);
        self.snapshots.send_if_modified(|current| {
            let changed = *current != snapshot;
            *current = snapshot;
            changed
        });
    }
}

fn take(item: &LiveItem, quantity: u32) -> Result<(), HoldError> {
    item.remaining
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
            r.checked_sub(quantity)
        })
        .map(|_| ())
        .map_err(|_| HoldError::Rule(FlashSaleError::SoldOut))
}

#[derive(Debug, Default)]
struct SaleIndex {
    by_id: HashMap<SaleId, Arc<LiveSale>>,
    by_slot: HashMap<(ScheduleId, i64), SaleId>,
}

/// Every sale the engine serves from memory.
#[derive(Debug, Default)]
pub struct Ledger {
    sales: ArcSwap<SaleIndex>,
    /// Serialises copy-on-write updates of `sales`; readers never take it.
    update: Mutex<()>,
}

impl Ledger {
    pub fn get(&self, id: &SaleId) -> Option<Arc<LiveSale>> {
        self.sales.load().by_id.get(id).cloned()
    }

    pub fn for_slot(&self, schedule: ScheduleId, slot: OffsetDateTime) -> Option<Arc<LiveSale>> {
        let index = self.sales.load();
        let id = index.by_slot.get(&(schedule, slot.unix_timestamp()))?;
        index.by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<LiveSale>> {
        self.sales.load().by_id.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.sales.load().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a sale (a sale already there is left as it is: its counters are the live truth).
    pub fn install(&self, state: LiveSaleState, now: OffsetDateTime) -> Arc<LiveSale> {
        let _guard = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.sales.load();
        if let Some(existing) = current.by_id.get(&state.sale.id) {
            return Arc::clone(existing);
        }
        let sale = Arc::new(LiveSale::from_state(state, now));
        let mut next = SaleIndex {
            by_id: current.by_id.clone(),
            by_slot: current.by_slot.clone(),
        };
        next.by_id.insert(sale.record.id, Arc::clone(&sale));
        if let Some((schedule, slot)) = sale.record.slot {
            next.by_slot
                .insert((schedule, slot.unix_timestamp()), sale.record.id);
        }
        self.sales.store(Arc::new(next));
        sale
    }

    /// Drops sales that ended before `before`; their late expiries no longer matter to stock.
    pub fn drop_ended(&self, before: OffsetDateTime) -> usize {
        let _guard = self.update.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.sales.load();
        let keep = |s: &Arc<LiveSale>| s.record.rules.window().ends_at() >= before;
        let dropped = current.by_id.values().filter(|s| !keep(s)).count();
        if dropped == 0 {
            return 0;
        }
        let by_id: HashMap<_, _> = current
            .by_id
            .iter()
            .filter(|(_, s)| keep(s))
            .map(|(id, s)| (*id, Arc::clone(s)))
            .collect();
        let by_slot = current
            .by_slot
            .iter()
            .filter(|(_, id)| by_id.contains_key(*id))
            .map(|(k, v)| (*k, *v))
            .collect();
        self.sales.store(Arc::new(SaleIndex { by_id, by_slot }));
        dropped
    }

    /// Returns stock of an expired or cancelled reservation.
    pub fn release(&self, released: &Released) {
        if let Some(sale) = self.get(&released.sale_id) {
            let index = usize::try_from(released.item_no)
                .ok()
                .and_then(|n| n.checked_sub(1));
            if let Some(index) = index {
                sale.release(index, released.buyer, released.quantity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash_sale::model::LiveItemState;
    use flashmart_domain::Currency;
    use flashmart_domain::flash_sale::{SaleRules, SaleWindow};
    use time::Duration;
    use uuid::Uuid;

    fn state(stock: &[u32], limit: i64, now: OffsetDateTime) -> LiveSaleState {
        let window = SaleWindow::new(now - Duration::minutes(1), now + Duration::hours(1)).unwrap();
        LiveSaleState {
            sale: SaleRecord {
                id: SaleId::new(),
                name: "t".into(),
                rules: SaleRules::new(window, limit, 900).unwrap(),
                currency: Currency::USD,
                slot: None,
                item_count: u32::try_from(stock.len()).unwrap(),
                total_stock: stock.iter().map(|s| u64::from(*s)).sum(),
                created_at: now,
            },
            items: stock
                .iter()
                .enumerate()
                .map(|(i, s)| LiveItemState {
                    no: u32::try_from(i + 1).unwrap(),
                    stock: *s,
                    price_cents: 100,
                    name: "item".into(),
                    held: 0,
                })
                .collect(),
            buyers: Vec::new(),
        }
    }

    fn buyer(n: u128) -> BuyerId {
        BuyerId(Uuid::from_u128(n))
    }

    #[test]
    fn holds_until_sold_out_and_gives_back() {
        let now = OffsetDateTime::now_utc();
        let ledger = Ledger::default();
        let sale = ledger.install(state(&[3], 5, now), now);
        let a = sale.try_hold(1, buyer(1), 2, now).unwrap();
        assert_eq!(sale.remaining(), 1);
        assert_eq!(
            sale.try_hold(1, buyer(2), 2, now).unwrap_err(),
            HoldError::Rule(FlashSaleError::SoldOut)
        );
        assert_eq!(
            sale.held_by(&buyer(2)),
            0,
            "a refused buyer leaves no entry"
        );
        assert_eq!(sale.buyer_count(), 1);
        a.give_back();
        assert_eq!(sale.remaining(), 3);
        assert_eq!(sale.buyer_count(), 0);
        assert_eq!(
            sale.try_hold(2, buyer(1), 1, now).unwrap_err(),
            HoldError::NoSuchItem
        );
        assert_eq!(
            sale.try_hold(0, buyer(1), 1, now).unwrap_err(),
            HoldError::NoSuchItem
        );
    }

    #[test]
    fn limits_count_across_items_and_window_is_checked() {
        let now = OffsetDateTime::now_utc();
        let ledger = Ledger::default();
        let sale = ledger.install(state(&[5, 5], 3, now), now);
        let _a = sale.try_hold(1, buyer(1), 2, now).unwrap();
        assert_eq!(
            sale.try_hold(2, buyer(1), 2, now).unwrap_err(),
            HoldError::Rule(FlashSaleError::LimitReached)
        );
        let _b = sale.try_hold(2, buyer(1), 1, now).unwrap();
        assert_eq!(sale.held_by(&buyer(1)), 3);
        assert_eq!(
            sale.try_hold(1, buyer(2), 1, now + Duration::hours(2))
                .unwrap_err(),
            HoldError::Rule(FlashSaleError::Ended)
        );
        assert_eq!(
            sale.try_hold(1, buyer(2), 1, now - Duration::hours(2))
                .unwrap_err(),
            HoldError::Rule(FlashSaleError::NotStarted)
        );
    }

    #[test]
    fn rebuilt_state_counts_what_is_held() {
        let now = OffsetDateTime::now_utc();
        let mut s = state(&[4, 1], 2, now);
        s.items[0].held = 3;
        s.items[1].held = 1;
        s.buyers = vec![(buyer(7), 2), (buyer(8), 2)];
        let ledger = Ledger::default();
        let sale = ledger.install(s, now);
        assert_eq!(sale.remaining(), 1);
        assert_eq!(sale.item_remaining(1), Some(1));
        assert_eq!(sale.item_remaining(2), Some(0));
        assert_eq!(
            sale.try_hold(1, buyer(7), 1, now).unwrap_err(),
            HoldError::Rule(FlashSaleError::LimitReached)
        );
    }

    #[test]
    fn ended_sales_are_dropped() {
        let now = OffsetDateTime::now_utc();
        let ledger = Ledger::default();
        let sale = ledger.install(state(&[1], 1, now), now);
        assert_eq!(ledger.drop_ended(now), 0);
        assert_eq!(ledger.drop_ended(now + Duration::hours(2)), 1);
        assert!(ledger.get(&sale.record.id).is_none());
    }

    /// Many threads race for one item: exactly the stock is held, nobody over the limit, and the
    /// sale total matches the item.
    #[test]
    fn racing_threads_never_oversell() {
        let now = OffsetDateTime::now_utc();
        let ledger = Ledger::default();
        let sale = ledger.install(state(&[500], 3, now), now);
        let holds: Vec<Hold> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8u128)
                .map(|t| {
                    let sale = Arc::clone(&sale);
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..400u128 {
                            // 100 buyers shared by all threads, each trying far past the limit.
                            let b = buyer((t * 400 + i) % 100);
                            if let Ok(h) = sale.try_hold(1, b, 1, now) {
                                mine.push(h);
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let held: u32 = holds.iter().map(|h| h.quantity).sum();
        assert_eq!(u64::from(held) + sale.remaining(), 500);
        assert_eq!(
            sale.item_remaining(1).map(u64::from),
            Some(sale.remaining())
        );
        let mut per_buyer: HashMap<BuyerId, u32> = HashMap::new();
        for h in &holds {
            *per_buyer.entry(h.buyer).or_default() += h.quantity;
        }
        for (b, q) in &per_buyer {
            assert!(*q <= 3, "{b:?} holds {q}");
            assert_eq!(sale.held_by(b), *q);
        }
        // 100 buyers x limit 3 = 300 < 500: demand is capped by limits, not stock.
        assert_eq!(held, 300);
    }

    #[test]
    fn a_sold_out_answer_is_remembered_for_a_moment_and_for_larger_quantities() {
        let now = OffsetDateTime::now_utc();
        let sale = Ledger::default().install(state(&[5, 5], 5, now), now);
        assert!(!sale.sold_out_lately(1, 1, now), "nothing remembered yet");
        sale.remember_sold_out(1, 2, now, sale.returns_seen());
        assert!(sale.sold_out_lately(1, 2, now));
        assert!(
            sale.sold_out_lately(1, 3, now),
            "more than what was refused"
        );
        assert!(!sale.sold_out_lately(1, 1, now), "less may still be there");
        assert!(!sale.sold_out_lately(2, 2, now), "another item");
        assert!(!sale.sold_out_lately(3, 2, now), "no such item");
        let memo = Duration::milliseconds(i64::try_from(SOLD_OUT_MEMO_MS).unwrap());
        assert!(sale.sold_out_lately(1, 2, now + memo - Duration::milliseconds(1)));
        assert!(
            !sale.sold_out_lately(1, 2, now + memo),
            "the moment has passed"
        );
    }

    #[test]
    fn stock_coming_back_forgets_sold_out_answers_and_those_decided_before_it() {
        let now = OffsetDateTime::now_utc();
        let sale = Ledger::default().install(state(&[5], 5, now), now);
        sale.remember_sold_out(1, 1, now, sale.returns_seen());
        sale.stock_returned();
        assert!(
            !sale.sold_out_lately(1, 1, now),
            "forgotten when stock came back"
        );
        // Asked before the stock came back, answered after: not remembered.
        let asked = sale.returns_seen();
        sale.stock_returned();
        sale.remember_sold_out(1, 1, now, asked);
        assert!(!sale.sold_out_lately(1, 1, now));
        // The engine shows the item on sale: forgotten too.
        sale.remember_sold_out(1, 1, now, sale.returns_seen());
        sale.mirror(&[(1, 0)]);
        assert!(sale.sold_out_lately(1, 1, now), "still none left");
        sale.mirror(&[(1, 2)]);
        assert!(!sale.sold_out_lately(1, 1, now));
    }

    #[test]
    fn a_quantity_too_large_to_pack_is_not_remembered() {
        let now = OffsetDateTime::now_utc();
        let sale = Ledger::default().install(state(&[5], 5, now), now);
        sale.remember_sold_out(1, 1 << 20, now, sale.returns_seen());
        assert!(!sale.sold_out_lately(1, u32::MAX, now));
        let memo = SoldOutMemo {
            until_ms: 1_800_000_000_000,
            quantity: 3,
        };
        assert_eq!(SoldOutMemo::unpack(memo.pack().unwrap()), memo);
    }
}
