//! The flash-sale engine (in-memory ledger + group commit) over the SQLite adapter: concurrency,
//! durability across restarts, idempotency, windows, expiry and schedules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use flashmart_app::flash_sale::model::{JournalOp, JournalOutcome, PurchaseOutcome};
use flashmart_app::flash_sale::{
    FlashSaleSettings, FlashSales, ItemDraft, ItemsDraft, SaleDraft, SaleError, ScheduleDraft,
};
use flashmart_app::ports::{FlashSaleStore, ReservationJournal};
use flashmart_app::{Clock, ManualClock, PageRequest, StoreError};
use flashmart_domain::flash_sale::ReservationStatus;
use flashmart_domain::{SaleId, UserId};
use flashmart_embedded::{Durability, SqliteStore};
use tempfile::TempDir;
use time::{Duration, OffsetDateTime};

mod support;

struct World {
    dir: TempDir,
    store: Arc<SqliteStore>,
    clock: ManualClock,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("engine.db"), Durability::Normal)
                .await
                .unwrap(),
        );
        Self {
            dir,
            store,
            clock: ManualClock::starting_mid_hour(),
        }
    }

    async fn engine(&self) -> FlashSales {
        self.engine_with(
            Arc::clone(&self.store) as Arc<dyn ReservationJournal>,
            false,
        )
        .await
    }

    async fn engine_with(&self, journal: Arc<dyn ReservationJournal>, contest: bool) -> FlashSales {
        let (engine, _task) = FlashSales::start(
            Arc::clone(&self.store) as Arc<dyn FlashSaleStore>,
            journal,
            Arc::new(self.clock.clone()),
            FlashSaleSettings {
                contest,
                ..FlashSaleSettings::default()
            },
        )
        .await
        .unwrap();
        engine
    }

    /// Reopens the database, as a restarted process would.
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Arc::new(
            SqliteStore::open(&self.dir.path().join("engine.db"), Durability::Normal)
                .await
                .unwrap(),
        );
    }

    async fn users(&self, n: usize) -> Vec<UserId> {
        support::customers(&self.store, self.clock.now(), n).await
    }
}

/// The one sale there is (the contest's, in its tests).
async fn only_sale(engine: &FlashSales) -> SaleId {
    let sales = engine
        .list_sales(None, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(sales.total, 1);
    sales.items[0].record.id
}

fn draft(now: OffsetDateTime, stock: &[i64], limit: i64) -> SaleDraft {
    SaleDraft {
        name: "Drop".into(),
        starts_at: now - Duration::minutes(1),
        ends_at: now + Duration::hours(1),
        per_user_limit: limit,
        reservation_ttl_secs: 600,
        currency: None,
        items: ItemsDraft::Listed(
            stock
                .iter()
                .enumerate()
                .map(|(i, s)| ItemDraft {
                    name: format!("Sneaker {i}"),
                    product_id: None,
                    image_url: None,
                    price_cents: 9900,
                    stock: *s,
                })
                .collect(),
        ),
    }
}

/// Hundreds of tasks race for one item: exactly the stock is sold, nobody passes the limit,
/// every accepted reservation is stored once, and a restart rebuilds the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_buyers_never_oversell_one_item() {
    let mut world = World::new().await;
    let users = world.users(150).await;
    let engine = Arc::new(world.engine().await);
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[100], 2),
        )
        .await
        .unwrap();
    let sale_id = sale.record.id;

    let mut tasks = Vec::new();
    for (i, user) in users.iter().copied().enumerate() {
        let engine = Arc::clone(&engine);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for attempt in 0..3 {
                let quantity = if (i + attempt) % 3 == 0 { 2 } else { 1 };
                match engine.reserve(user, sale_id, 1, quantity, None).await {
                    Ok(r) => mine.push(r),
                    Err(SaleError::SoldOut | SaleError::LimitReached) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            mine
        }));
    }
    let mut accepted = Vec::new();
    for t in tasks {
        accepted.extend(t.await.unwrap());
    }

    let sold: u32 = accepted.iter().map(|r| r.quantity).sum();
    assert_eq!(
        sold, 100,
        "exact sell-out: demand (up to 300) exceeds stock"
    );
    let mut per_user: HashMap<_, u32> = HashMap::new();
    for r in &accepted {
        *per_user.entry(r.buyer).or_default() += r.quantity;
    }
    assert!(per_user.values().all(|q| *q <= 2), "{per_user:?}");

    let stats = engine.stats(sale_id).await.unwrap();
    assert_eq!(
        (stats.stock, stats.reserved, stats.sold, stats.remaining),
        (100, 100, 0, 0)
    );
    assert_eq!(stats.buyers, per_user.len() as u64);

    let stored = engine
        .reservations(sale_id, PageRequest::new(Some(1), Some(100)), None)
        .await
        .unwrap();
    assert_eq!(stored.total, accepted.len() as u64);
    let mut stored_ids: Vec<_> = stored.items.iter().map(|r| r.id).collect();
    let mut accepted_ids: Vec<_> = accepted.iter().map(|r| r.id).collect();
    stored_ids.sort();
    accepted_ids.sort();
    assert_eq!(stored_ids.len(), accepted_ids.len());
    let mut page = 2;
    while (stored_ids.len() as u64) < stored.total {
        let more = engine
            .reservations(sale_id, PageRequest::new(Some(page), Some(100)), None)
            .await
            .unwrap();
        stored_ids.extend(more.items.iter().map(|r| r.id));
        page += 1;
    }
    stored_ids.sort();
    stored_ids.dedup();
    assert_eq!(
        stored_ids, accepted_ids,
        "each accepted reservation stored exactly once"
    );

    // Sold out is answered from memory: with storage closed it is still "sold out".
    world.store.close().await;
    assert!(matches!(
        engine.reserve(users[0], sale_id, 1, 1, None).await,
        Err(SaleError::SoldOut | SaleError::LimitReached)
    ));
    drop(engine);

    world.reopen().await;
    let again = world.engine().await;
    let stats = again.stats(sale_id).await.unwrap();
    assert_eq!((stats.reserved, stats.remaining), (100, 0));
}

#[tokio::test]
async fn answers_outside_the_window_touch_no_storage() {
    let world = World::new().await;
    let users = world.users(1).await;
    let engine = world.engine().await;
    let now = world.clock.now();
    let mut later = draft(now, &[5], 1);
    later.starts_at = now + Duration::hours(1);
    later.ends_at = now + Duration::hours(2);
    let upcoming = engine
        .create_sale(flashmart_app::audit::Actor::Command("test"), later)
        .await
        .unwrap()
        .record
        .id;
    let live = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(now, &[5], 1),
        )
        .await
        .unwrap()
        .record
        .id;

    world.store.close().await;
    assert!(matches!(
        engine.reserve(users[0], upcoming, 1, 1, None).await,
        Err(SaleError::NotStarted)
    ));
    world.clock.advance(Duration::hours(3));
    assert!(matches!(
        engine.reserve(users[0], live, 1, 1, None).await,
        Err(SaleError::Ended)
    ));
    assert!(matches!(
        engine.reserve(users[0], live, 9, 1, None).await,
        Err(SaleError::ItemNotFound)
    ));
}

#[tokio::test]
async fn limits_count_across_items_and_quantities_are_checked() {
    let world = World::new().await;
    let users = world.users(1).await;
    let engine = world.engine().await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[10, 10], 3),
        )
        .await
        .unwrap()
        .record
        .id;
    engine.reserve(users[0], sale, 1, 2, None).await.unwrap();
    assert!(matches!(
        engine.reserve(users[0], sale, 2, 2, None).await,
        Err(SaleError::LimitReached)
    ));
    engine.reserve(users[0], sale, 2, 1, None).await.unwrap();
    for bad in [0, -1, 20_000] {
        assert!(matches!(
            engine.reserve(users[0], sale, 1, bad, None).await,
            Err(SaleError::Invalid(_))
        ));
    }
    assert!(matches!(
        engine.reserve(users[0], SaleId::new(), 1, 1, None).await,
        Err(SaleError::SaleNotFound)
    ));
}

#[tokio::test]
async fn idempotency_keys_replay_and_survive_a_restart() {
    let mut world = World::new().await;
    let users = world.users(2).await;
    let engine = world.engine().await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[10], 5),
        )
        .await
        .unwrap()
        .record
        .id;
    let first = engine
        .reserve(users[0], sale, 1, 2, Some("order-42"))
        .await
        .unwrap();
    let again = engine
        .reserve(users[0], sale, 1, 2, Some("order-42"))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert!(matches!(
        engine.reserve(users[0], sale, 1, 3, Some("order-42")).await,
        Err(SaleError::KeyReused)
    ));
    // Another buyer's identical key is their own.
    let theirs = engine
        .reserve(users[1], sale, 1, 2, Some("order-42"))
        .await
        .unwrap();
    assert_ne!(theirs.id, first.id);
    assert_eq!(engine.stats(sale).await.unwrap().reserved, 4);
    drop(engine);

    world.reopen().await;
    let engine = world.engine().await;
    let replay = engine
        .reserve(users[0], sale, 1, 2, Some("order-42"))
        .await
        .unwrap();
    assert_eq!(replay.id, first.id);
    assert_eq!(
        engine.stats(sale).await.unwrap().reserved,
        4,
        "nothing more reserved"
    );
    assert!(matches!(
        engine.reserve(users[0], sale, 1, 1, Some("order-42")).await,
        Err(SaleError::KeyReused)
    ));
}

#[tokio::test]
async fn a_refusal_is_replayed_too() {
    let world = World::new().await;
    let users = world.users(2).await;
    let engine = world.engine().await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[1], 1),
        )
        .await
        .unwrap()
        .record
        .id;
    engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    assert!(matches!(
        engine.reserve(users[1], sale, 1, 1, Some("k")).await,
        Err(SaleError::SoldOut)
    ));
    // Stock comes back, but the key's answer stays "sold out".
    world.clock.advance(Duration::minutes(11));
    assert_eq!(engine.sweep_expired().await.unwrap(), 1);
    assert!(matches!(
        engine.reserve(users[1], sale, 1, 1, Some("k")).await,
        Err(SaleError::SoldOut)
    ));
    engine
        .reserve(users[1], sale, 1, 1, Some("k2"))
        .await
        .unwrap();
}

/// A journal whose commits always fail.
#[derive(Debug)]
struct BrokenJournal;

#[async_trait]
impl ReservationJournal for BrokenJournal {
    async fn commit(&self, _ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        Err(StoreError::Unavailable("disk on fire".into()))
    }
}

#[tokio::test]
async fn a_failed_commit_gives_the_stock_back() {
    let world = World::new().await;
    let users = world.users(1).await;
    let engine = world.engine_with(Arc::new(BrokenJournal), false).await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[1], 1),
        )
        .await
        .unwrap()
        .record
        .id;
    for _ in 0..3 {
        assert!(matches!(
            engine.reserve(users[0], sale, 1, 1, Some("same-key")).await,
            Err(SaleError::Unavailable(_))
        ));
    }
    let stats = engine.stats(sale).await.unwrap();
    assert_eq!(
        (stats.remaining, stats.reserved),
        (1, 0),
        "stock and limit given back"
    );
}

/// A journal that panics on its first commit, then writes to SQLite.
#[derive(Debug)]
struct PanicsOnce {
    store: Arc<SqliteStore>,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl ReservationJournal for PanicsOnce {
    async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        if !self
            .panicked
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a bug in storage code");
        }
        self.store.commit(ops).await
    }
}

#[tokio::test]
async fn a_panicking_journal_fails_its_batch_and_the_commit_goes_on() {
    let world = World::new().await;
    let users = world.users(2).await;
    let engine = world
        .engine_with(
            Arc::new(PanicsOnce {
                store: Arc::clone(&world.store),
                panicked: false.into(),
            }),
            false,
        )
        .await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[1], 1),
        )
        .await
        .unwrap()
        .record
        .id;
    assert!(matches!(
        engine.reserve(users[0], sale, 1, 1, None).await,
        Err(SaleError::Unavailable(_))
    ));
    assert_eq!(engine.stats(sale).await.unwrap().remaining, 1, "given back");
    let report = engine.commit_heartbeat().report();
    assert_eq!(report.state, flashmart_app::health::WorkState::Ok);
    assert_eq!(report.failures, 1);
    // The commit task lived through it.
    engine.reserve(users[1], sale, 1, 1, None).await.unwrap();
    assert_eq!(engine.commit_heartbeat().report().failures, 0);
}

/// A journal that blocks inside its first commit until told to go on.
#[derive(Debug)]
struct Blocking {
    entered: tokio::sync::Notify,
    go: tokio::sync::Semaphore,
}

#[async_trait]
impl ReservationJournal for Blocking {
    async fn commit(&self, _ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
        self.entered.notify_one();
        let _ = self.go.acquire().await;
        Err(StoreError::Unavailable("never reached".into()))
    }
}

/// With the commit task gone, every waiting request is answered at once, new ones are refused
/// at once, and the stock of what never reached storage is free again.
#[tokio::test]
async fn with_the_commit_task_gone_reservations_fail_at_once_and_stock_goes_back() {
    let world = World::new().await;
    let users = world.users(3).await;
    let journal = Arc::new(Blocking {
        entered: tokio::sync::Notify::new(),
        go: tokio::sync::Semaphore::new(0),
    });
    let (engine, task) = FlashSales::start(
        Arc::clone(&world.store) as Arc<dyn FlashSaleStore>,
        Arc::clone(&journal) as Arc<dyn ReservationJournal>,
        Arc::new(world.clock.clone()),
        FlashSaleSettings::default(),
    )
    .await
    .unwrap();
    let engine = Arc::new(engine);
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[2], 1),
        )
        .await
        .unwrap()
        .record
        .id;
    let first = tokio::spawn({
        let engine = Arc::clone(&engine);
        let user = users[0];
        async move { engine.reserve(user, sale, 1, 1, None).await }
    });
    journal.entered.notified().await;
    // The second waits in the queue behind the batch storage has in hand.
    let second = tokio::spawn({
        let engine = Arc::clone(&engine);
        let user = users[1];
        async move { engine.reserve(user, sale, 1, 1, None).await }
    });
    let queued = async {
        while engine.stats(sale).await.unwrap().remaining > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), queued)
        .await
        .expect("the second reservation holds its unit");

    task.abort();
    let _ = task.await;
    for request in [first, second] {
        assert!(matches!(
            request.await.unwrap(),
            Err(SaleError::Unavailable(_))
        ));
    }
    assert!(matches!(
        engine.reserve(users[2], sale, 1, 1, None).await,
        Err(SaleError::Unavailable(_))
    ));
    assert_eq!(
        engine.stats(sale).await.unwrap().remaining,
        1,
        "the queued unit is back; the one storage had in hand stays held until a restart says"
    );
    assert_eq!(
        engine.commit_heartbeat().report().state,
        flashmart_app::health::WorkState::Stopped
    );
}

#[tokio::test]
async fn expired_reservations_return_their_stock() {
    let world = World::new().await;
    let users = world.users(2).await;
    let engine = world.engine().await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[1], 1),
        )
        .await
        .unwrap()
        .record
        .id;
    let r = engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    assert!(r.order_id.is_some());
    assert!(matches!(
        engine.reserve(users[1], sale, 1, 1, None).await,
        Err(SaleError::SoldOut)
    ));
    world.clock.advance(Duration::minutes(9));
    assert_eq!(engine.sweep_expired().await.unwrap(), 0);
    world.clock.advance(Duration::minutes(1));
    assert_eq!(engine.sweep_expired().await.unwrap(), 1);
    assert_eq!(
        engine.reservation_for(users[0], r.id).await.unwrap().status,
        ReservationStatus::Expired
    );
    let stats = engine.stats(sale).await.unwrap();
    assert_eq!((stats.remaining, stats.released, stats.buyers), (1, 1, 0));
    // The first buyer may buy again: an expired reservation no longer counts against the limit.
    engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
}

#[tokio::test]
async fn reservations_are_shown_to_their_owner_only() {
    let world = World::new().await;
    let users = world.users(2).await;
    let engine = world.engine().await;
    let sale = engine
        .create_sale(
            flashmart_app::audit::Actor::Command("test"),
            draft(world.clock.now(), &[3], 3),
        )
        .await
        .unwrap()
        .record
        .id;
    let r = engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    assert_eq!(
        engine.reservation_for(users[0], r.id).await.unwrap().id,
        r.id
    );
    assert!(matches!(
        engine.reservation_for(users[1], r.id).await,
        Err(SaleError::ReservationNotFound)
    ));
}

/// Two schedulers (two engines over one database) run the same schedules at once: one sale per
/// slot. At start, the current hour's sale is made if it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_make_one_sale_per_slot() {
    let world = World::new().await;
    let a = Arc::new(world.engine().await);
    let b = Arc::new(world.engine().await);
    a.create_schedule(
        flashmart_app::audit::Actor::Command("test"),
        ScheduleDraft {
            name: "hourly".into(),
            recurrence: "hourly".into(),
            item_count: 50,
            price_cents: 500,
            currency: None,
            per_user_limit: 2,
            reservation_ttl_secs: 300,
            duration_secs: None,
        },
    )
    .await
    .unwrap();
    world.clock.advance(Duration::hours(1));
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let engine = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { engine.run_schedules().await.unwrap().len() })
        })
        .collect();
    let mut created = 0;
    for r in runs {
        created += r.await.unwrap();
    }
    assert_eq!(created, 1, "one sale for the new slot");
    let live = a
        .list_sales(
            Some(flashmart_domain::flash_sale::SalePhase::Live),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(live.total, 1);
    let sale = &live.items[0];
    assert_eq!(sale.record.item_count, 50);
    assert_eq!(sale.remaining, 50);
    let items = a
        .items(sale.record.id, PageRequest::new(Some(1), Some(2)))
        .await
        .unwrap();
    assert_eq!(items.items[0].0.name, "Flash deal #00001");
    assert_eq!(
        items.items[0].0.image_url.as_deref(),
        Some("/images/generated/1.svg")
    );
    assert_eq!(items.items[0].1, 1);
    // Both engines serve that sale.
    let users = world.users(2).await;
    a.reserve(users[0], sale.record.id, 7, 1, None)
        .await
        .unwrap();
    assert!(matches!(
        b.reserve(users[1], sale.record.id, 7, 1, None).await,
        Err(SaleError::SoldOut) | Ok(_)
    ));
}

#[tokio::test]
async fn the_contest_api_checks_out_and_purchases_by_code() {
    let world = World::new().await;
    let engine = world.engine_with(Arc::clone(&world.store) as _, true).await;
    assert!(engine.contest_enabled());
    engine.run_schedules().await.unwrap();

    let code = engine.contest_checkout("user-1", 42).await.unwrap();
    assert!(matches!(
        engine.contest_checkout("user-2", 42).await,
        Err(SaleError::SoldOut)
    ));
    for item in 1..=9 {
        engine.contest_checkout("user-1", 100 + item).await.unwrap();
    }
    assert!(matches!(
        engine.contest_checkout("user-1", 500).await,
        Err(SaleError::LimitReached)
    ));
    assert!(matches!(
        engine.contest_checkout("user-1", 10_001).await,
        Err(SaleError::ItemNotFound)
    ));

    let first = engine.contest_purchase(&code).await.unwrap();
    let second = engine.contest_purchase(&code).await.unwrap();
    assert_eq!(first, second, "the same answer when repeated");
    let PurchaseOutcome::Purchased {
        reservation,
        item_name,
        ..
    } = first
    else {
        panic!("expected a purchase");
    };
    assert_eq!(reservation.item_no, 42);
    assert_eq!(reservation.buyer_ref.as_deref(), Some("user-1"));
    assert_eq!(item_name, "Flash deal #00042");
    assert!(matches!(
        engine.contest_purchase("NOPE").await,
        Err(SaleError::ReservationNotFound)
    ));

    // Every attempt was recorded, successful or not.
    engine.flush().await;
    let sale = only_sale(&engine).await;
    let stats = engine.stats(sale).await.unwrap();
    assert_eq!(stats.attempts, 13);
    assert_eq!((stats.reserved, stats.sold, stats.buyers), (9, 1, 1));
}

/// A contest purchase is decided in memory (the engine made the reservation) and answered once
/// durable; after a restart storage answers the very same; and the sweeper never expires a
/// reservation whose purchase was answered, nor lets one be bought once it swept it.
#[tokio::test]
async fn contest_purchases_in_memory_agree_with_storage_and_with_the_sweeper() {
    let mut world = World::new().await;
    let engine = world.engine_with(Arc::clone(&world.store) as _, true).await;
    engine.run_schedules().await.unwrap();
    let bought = engine.contest_checkout("user-1", 1).await.unwrap();
    let late = engine.contest_checkout("user-1", 2).await.unwrap();
    let swept = engine.contest_checkout("user-2", 3).await.unwrap();
    let sale = only_sale(&engine).await;

    // Its last microsecond: bought, and the sweep at its end leaves it purchased.
    let expires_at = engine
        .reservations(sale, PageRequest::default(), None)
        .await
        .unwrap()
        .items[0]
        .expires_at;
    world.clock.set(expires_at - Duration::nanoseconds(1_000));
    let first = engine.contest_purchase(&bought).await.unwrap();
    world.clock.set(expires_at);
    assert_eq!(engine.sweep_expired().await.unwrap(), 2, "the other two");
    assert!(matches!(
        engine.contest_purchase(&late).await,
        Err(SaleError::ReservationExpired)
    ));
    assert!(matches!(
        engine.contest_purchase(&swept).await,
        Err(SaleError::ReservationExpired)
    ));
    assert_eq!(
        engine.contest_purchase(&bought).await.unwrap(),
        first,
        "repeated after its end"
    );
    let stats = engine.stats(sale).await.unwrap();
    assert_eq!((stats.reserved, stats.sold, stats.released), (0, 1, 2));

    // Storage holds the same purchase: after a restart it answers it, to the microsecond.
    drop(engine);
    world.reopen().await;
    let engine = world.engine_with(Arc::clone(&world.store) as _, true).await;
    assert_eq!(engine.contest_purchase(&bought).await.unwrap(), first);
    assert!(matches!(
        engine.contest_purchase(&late).await,
        Err(SaleError::ReservationExpired)
    ));
}
