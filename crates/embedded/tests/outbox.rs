//! The reservation outbox: an answered reservation is in the outbox file before its answer, is
//! seen by every later read even before the applier ran, and is applied to the tables exactly once
//! whatever stopped the process and when.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flashmart_app::flash_sale::model::ReservationRecord;
use flashmart_app::flash_sale::{FlashSaleSettings, FlashSales, ItemDraft, ItemsDraft, SaleDraft};
use flashmart_app::ports::{FlashSaleStore, OrderStore, ReservationJournal};
use flashmart_app::{Clock, ManualClock, PageRequest};
use flashmart_domain::{SaleId, UserId};
use flashmart_embedded::{Durability, SqliteStore};
use tempfile::TempDir;
use time::Duration;

mod support;

struct World {
    dir: TempDir,
    clock: ManualClock,
}

impl World {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            clock: ManualClock::starting_mid_hour(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("shop.db")
    }

    async fn open(&self) -> Arc<SqliteStore> {
        Arc::new(
            SqliteStore::open(&self.path(), Durability::Normal)
                .await
                .unwrap(),
        )
    }

    async fn engine(&self, store: &Arc<SqliteStore>) -> FlashSales {
        let (engine, _task) = FlashSales::start(
            Arc::clone(store) as Arc<dyn FlashSaleStore>,
            Arc::clone(store) as Arc<dyn ReservationJournal>,
            Arc::new(self.clock.clone()),
            FlashSaleSettings::default(),
        )
        .await
        .unwrap();
        engine
    }

    async fn users(&self, store: &SqliteStore, n: usize) -> Vec<UserId> {
        support::customers(store, self.clock.now(), n).await
    }

    async fn sale(&self, engine: &FlashSales) -> SaleId {
        let now = self.clock.now();
        let sale = engine
            .create_sale(
                flashmart_app::audit::Actor::Command("test"),
                SaleDraft {
                    name: "Drop".into(),
                    starts_at: now - Duration::minutes(1),
                    ends_at: now + Duration::hours(1),
                    per_user_limit: 10,
                    reservation_ttl_secs: 600,
                    currency: None,
                    items: ItemsDraft::Listed(vec![ItemDraft {
                        name: "Sneaker".into(),
                        product_id: None,
                        image_url: None,
                        price_cents: 9900,
                        stock: 100,
                    }]),
                },
            )
            .await
            .unwrap();
        sale.record.id
    }
}

fn outbox_dir(db: &Path) -> PathBuf {
    db.with_file_name("shop.outbox")
}

/// The outbox's segments, oldest first.
fn segments(db: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(outbox_dir(db))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
}

/// The batches the outbox holds on disk (its format: a header, then length, CRC-32 of number
/// and body, number and body per record), read behind the store's back.
fn outbox_records(db: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for path in segments(db) {
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"FMOUTBX1");
        let mut pos = 8;
        while pos < bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            let seq = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
            out.push((seq, bytes[pos + 16..pos + 16 + len].to_vec()));
            pos += 16 + len;
        }
    }
    out
}

/// A record as the outbox writes it.
fn record(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(body);
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// Every reservation of `sale` as stored, and each one's order (by its user's list).
async fn stored(store: &SqliteStore, sale: SaleId, users: &[UserId]) -> Vec<ReservationRecord> {
    let page = store
        .reservations(sale, PageRequest::new(Some(1), Some(100)), None)
        .await
        .unwrap();
    assert_eq!(page.total as usize, page.items.len());
    let mut orders = 0;
    for user in users {
        let listed = store
            .orders_of(*user, None, PageRequest::new(Some(1), Some(100)))
            .await
            .unwrap();
        for order in &listed.items {
            let reservation = page
                .items
                .iter()
                .find(|r| r.order_id == Some(order.id) && order.reservation_id == Some(r.id))
                .expect("every flash-sale order has its reservation");
            assert_eq!(order.total.cents(), 9900 * i64::from(reservation.quantity));
        }
        orders += listed.items.len();
    }
    assert_eq!(orders, page.items.len(), "every reservation has its order");
    page.items
}

#[tokio::test]
async fn an_answered_reservation_is_read_back_before_the_applier_runs() {
    let world = World::new();
    let store = world.open().await;
    let users = world.users(&store, 1).await;
    let engine = world.engine(&store).await;
    let sale = world.sale(&engine).await;

    let r = engine.reserve(users[0], sale, 1, 2, None).await.unwrap();
    assert_eq!(store.outbox_backlog(), 1, "queued, not yet in the tables");
    assert_eq!(outbox_records(&world.path()).len(), 1, "on disk");
    // No applier runs in this test: the read applies what is before it.
    assert_eq!(store.reservation(r.id).await.unwrap(), Some((*r).clone()));
    assert_eq!(store.outbox_backlog(), 0);
    assert!(
        outbox_records(&world.path()).is_empty(),
        "dropped once applied"
    );
    let order = store.order(r.order_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(order.total.cents(), 2 * 9900);
}

#[tokio::test]
async fn a_stopped_process_leaves_its_outbox_to_the_next_start() {
    let world = World::new();
    let store = world.open().await;
    let users = world.users(&store, 3).await;
    let engine = world.engine(&store).await;
    let sale = world.sale(&engine).await;
    let mut answered = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for _ in 0..=i {
            answered.push(engine.reserve(*user, sale, 1, 1, None).await.unwrap().id);
        }
    }
    assert_eq!(store.outbox_backlog(), 6);
    assert_eq!(outbox_records(&world.path()).len(), 6);
    // Gone without closing: nothing applied the outbox.
    drop(engine);
    drop(store);

    let store = world.open().await;
    assert_eq!(store.outbox_backlog(), 0, "applied while opening");
    assert!(outbox_records(&world.path()).is_empty());
    let mut ids: Vec<_> = stored(&store, sale, &users)
        .await
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    answered.sort();
    assert_eq!(ids, answered, "every answered reservation stored once");
    // The ledger rebuilt from the tables holds them.
    let engine = world.engine(&store).await;
    let stats = engine.stats(sale).await.unwrap();
    assert_eq!((stats.reserved, stats.remaining), (6, 94));
}

#[tokio::test]
async fn a_batch_applied_but_not_yet_dropped_is_not_applied_again() {
    let world = World::new();
    let store = world.open().await;
    let users = world.users(&store, 2).await;
    let engine = world.engine(&store).await;
    let sale = world.sale(&engine).await;
    for user in &users {
        engine.reserve(*user, sale, 1, 1, None).await.unwrap();
    }
    let batches = outbox_records(&world.path());
    assert_eq!(batches.len(), 2);
    let saved = world.dir.path().join("saved");
    copy_dir(&outbox_dir(&world.path()), &saved);
    drop(engine);
    // Closing applies them and drops them from the outbox; putting them back is what a kill
    // between the two would leave.
    store.close().await;
    drop(store);
    assert!(outbox_records(&world.path()).is_empty());
    copy_dir(&saved, &outbox_dir(&world.path()));
    assert_eq!(outbox_records(&world.path()), batches);

    let store = world.open().await;
    assert_eq!(store.outbox_backlog(), 0);
    assert_eq!(stored(&store, sale, &users).await.len(), 2);
    // Numbers go on after the applied ones: a new batch is not taken for an old one.
    let engine = world.engine(&store).await;
    engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    let new = outbox_records(&world.path());
    assert_eq!(new.len(), 1);
    assert!(new[0].0 > batches[1].0);
    assert_eq!(stored(&store, sale, &users).await.len(), 3);
}

#[tokio::test]
async fn a_write_torn_by_a_kill_is_cut_off_and_the_rest_applied() {
    let world = World::new();
    let store = world.open().await;
    let users = world.users(&store, 2).await;
    let engine = world.engine(&store).await;
    let sale = world.sale(&engine).await;
    let kept = engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    drop(engine);
    drop(store);
    // The next record, cut off part way (the process died in its write, before any answer).
    let last = segments(&world.path()).pop().unwrap();
    let whole = record(99, &[1, 1, 2, 3, 5, 8, 13, 21]);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, &whole[..whole.len() - 3]).unwrap();
    drop(file);

    let store = world.open().await;
    assert_eq!(
        stored(&store, sale, &users)
            .await
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [kept.id]
    );
    assert!(
        outbox_records(&world.path()).is_empty(),
        "the torn end cut off"
    );
    // Appending goes on where the whole records end.
    let engine = world.engine(&store).await;
    engine.reserve(users[1], sale, 1, 1, None).await.unwrap();
    assert_eq!(outbox_records(&world.path()).len(), 1);
    assert_eq!(stored(&store, sale, &users).await.len(), 2);
}

#[tokio::test]
async fn a_damaged_outbox_stops_the_start_instead_of_losing_it() {
    let world = World::new();
    let store = world.open().await;
    store.close().await;
    drop(store);
    let segment = outbox_dir(&world.path()).join("00000000000000000001.log");

    // A whole record (its checksum matches) whose batch cannot be read.
    let mut bytes = b"FMOUTBX1".to_vec();
    bytes.extend(record(1, &[9, 9, 9]));
    std::fs::write(&segment, &bytes).unwrap();
    let err = SqliteStore::open(&world.path(), Durability::Normal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outbox batch"), "{err}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "left as it is, for whoever looks into it"
    );

    // A torn record in a segment that is not the last is damage, not a torn end.
    let mut torn = b"FMOUTBX1".to_vec();
    torn.extend(&record(1, &[1, 2, 3])[..10]);
    std::fs::write(&segment, &torn).unwrap();
    let mut later = b"FMOUTBX1".to_vec();
    later.extend(record(2, &[1]));
    std::fs::write(
        outbox_dir(&world.path()).join("00000000000000000002.log"),
        &later,
    )
    .unwrap();
    let err = SqliteStore::open(&world.path(), Durability::Normal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[tokio::test]
async fn with_full_durability_appends_are_synced_off_the_async_workers() {
    let world = World::new();
    let store = Arc::new(
        SqliteStore::open(&world.path(), Durability::Full)
            .await
            .unwrap(),
    );
    let users = world.users(&store, 1).await;
    let engine = world.engine(&store).await;
    let sale = world.sale(&engine).await;
    let r = engine.reserve(users[0], sale, 1, 1, None).await.unwrap();
    assert_eq!(outbox_records(&world.path()).len(), 1);
    drop(engine);
    drop(store);
    let store = world.open().await;
    assert_eq!(store.reservation(r.id).await.unwrap(), Some((*r).clone()));
}
