//! The in-memory ledger of the embedded engine: remaining stock per item in atomics, what each
//! buyer holds in a sharded map, and sold-out and window answers without touching storage.
//!
//! A reservation takes stock here first, then queues its write to the group commit and waits for
//! it; if the write fails, the commit task gives the stock back. At start the ledger is rebuilt
//! from storage, which only ever holds committed reservations.
//!
//! Sales are found through a copy-on-write map (`ArcSwap`): reads take no lock, and writes (a new
//! sale, an ended one dropped) are rare.

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
        }
    }

    /// Takes `quantity` of item `no` for `buyer`, if the window, the buyer's limit and the stock
    /// allow. Touches no storage; a sold-out item is refused before any lock is taken.
    /// The refusals `try_hold` would give without taking anything: no such item, outside the
    /// window, sold out. Taking stock checks them again; this only spares a refused request the
    /// rest of the way (a place in the commit queue).
    pub fn precheck(&self, no: u32, quantity: u32, now: OffsetDateTime) -> Result<(), HoldError> {
        let item = usize::try_from(no)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.items.get(i))
            .ok_or(HoldError::NoSuchItem)?;
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
        let item = self.items.get(usize::try_from(no).ok()?.checked_sub(1)?)?;
        Some((Arc::clone(&item.name), item.price_cents))
    }

    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Acquire)
    }

    pub fn item_remaining(&self, no: u32) -> Option<u32> {
        let index = usize::try_from(no).ok()?.checked_sub(1)?;
        self.items
            .get(index)
            .map(|i| i.remaining.load(Ordering::Acquire))
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
            let index = usize::try_from(*no).ok().and_then(|n| n.checked_sub(1));
            if let Some(item) = index.and_then(|i| self.items.get(i)) {
                item.remaining.store(*left, Ordering::Release);
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
}
