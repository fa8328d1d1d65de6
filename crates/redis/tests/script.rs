//! The reservation script against the local Redis (`FLASHMART_TEST_REDIS_URL`, by default
//! redis://127.0.0.1:6379), each test under a key prefix of its own, deleted afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use flashmart_app::flash_sale::idempotency::Refusal;
use flashmart_domain::SaleId;
use flashmart_redis::{
    Decision, LiveSale, Logged, Lost, RedisSales, ReserveRequest, Settle, Settled,
};
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use time::{Duration, OffsetDateTime};

struct World {
    conn: MultiplexedConnection,
    sales: RedisSales,
    prefix: String,
}

fn redis_url() -> String {
    std::env::var("FLASHMART_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The stream entry ids of `logged`, to acknowledge them by.
fn entries<'a>(logged: impl IntoIterator<Item = &'a Logged>) -> Vec<String> {
    logged.into_iter().map(|l| l.entry.clone()).collect()
}

impl World {
    /// Every entry of the sale's log another writer holds, now `consumer`'s (as a writer takes
    /// over a dead one's).
    async fn take_over(&mut self, sale: SaleId, consumer: &str) -> Vec<flashmart_redis::Logged> {
        self.sales
            .claim_stale(
                &mut self.conn,
                sale,
                "writers",
                consumer,
                std::time::Duration::ZERO,
                10,
            )
            .await
            .unwrap()
    }

    async fn new() -> Self {
        let url = redis_url();
        let client = redis::Client::open(url.as_str()).unwrap();
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| {
                panic!("Redis does not answer at {url}: {e} (scripts/setup starts the local one)")
            });
        let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        Self {
            conn,
            sales: RedisSales::new(prefix.clone()),
            prefix,
        }
    }

    /// A sale live from a minute ago to an hour from now.
    async fn sale(&mut self, limit: u32, items: &[(u32, u32)]) -> SaleId {
        let id = SaleId::new();
        self.sales
            .load(
                &mut self.conn,
                &LiveSale {
                    id,
                    starts_at: now() - Duration::minutes(1),
                    ends_at: now() + Duration::hours(1),
                    per_user_limit: limit,
                    reservation_ttl: Duration::minutes(15),
                    items: items.to_vec(),
                },
            )
            .await
            .unwrap();
        id
    }

    async fn reserve(
        &mut self,
        sale: SaleId,
        buyer: &str,
        quantity: u32,
        key: Option<&str>,
    ) -> Decision {
        self.sales
            .reserve(
                &mut self.conn,
                &ReserveRequest {
                    sale,
                    item: 1,
                    buyer,
                    quantity,
                    idempotency_key: key,
                    now: now(),
                    buyer_ref: None,
                    max_keys: 0,
                },
            )
            .await
            .unwrap()
    }

    /// One unit each for buyers `b0` to `b{n-1}`: each reservation's id and log entry.
    async fn reserve_one_each(
        &mut self,
        sale: SaleId,
        n: usize,
    ) -> Vec<(flashmart_domain::ReservationId, (u64, u64))> {
        let mut made = Vec::with_capacity(n);
        for i in 0..n {
            let Decision::Reserved { id, entry, .. } =
                self.reserve(sale, &format!("b{i}"), 1, None).await
            else {
                panic!("expected a reservation");
            };
            made.push((id, entry.expect("a new reservation has its entry")));
        }
        made
    }

    /// Up to 10 new entries for the consumer `worker`, taken only when the oldest is `min_age`
    /// old.
    async fn read_new_aged(
        &mut self,
        sale: SaleId,
        min_age: Option<std::time::Duration>,
    ) -> Vec<Logged> {
        self.sales
            .read_new(&mut self.conn, sale, "writers", "worker", 10, min_age)
            .await
            .unwrap()
    }

    async fn remaining(&mut self, sale: SaleId) -> i64 {
        self.conn
            .hget(self.sales.keys(sale).stock, 1)
            .await
            .unwrap()
    }

    async fn logged(&mut self, sale: SaleId) -> usize {
        self.conn.xlen(self.sales.keys(sale).log).await.unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Deleted from a runtime of its own: the test's is the one being left.
        let prefix = self.prefix.clone();
        let url = redis_url();
        let _ = std::thread::spawn(move || {
            let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
            }
            Ok::<_, redis::RedisError>(())
        })
        .join();
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// The first answer (not a replay) refusing for `refusal`.
fn refused(refusal: Refusal) -> Decision {
    Decision::Refused {
        refusal,
        replayed: false,
    }
}

fn reserved(d: &Decision) -> bool {
    matches!(
        d,
        Decision::Reserved {
            replayed: false,
            ..
        }
    )
}

#[tokio::test]
async fn stock_is_sold_exactly_and_every_reservation_is_logged() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 5)]).await;
    let mut got = 0;
    for i in 0..8 {
        match w.reserve(sale, &format!("buyer{i}"), 1, None).await {
            d if reserved(&d) => got += 1,
            Decision::Refused {
                refusal: Refusal::SoldOut,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 5);
    assert_eq!(w.remaining(sale).await, 0);
    assert_eq!(w.logged(sale).await, 5);
}

#[tokio::test]
async fn a_buyer_gets_at_most_the_limit() {
    let mut w = World::new().await;
    let sale = w.sale(2, &[(1, 100)]).await;
    assert!(reserved(&w.reserve(sale, "ada", 1, None).await));
    assert!(reserved(&w.reserve(sale, "ada", 1, None).await));
    assert_eq!(
        w.reserve(sale, "ada", 1, None).await,
        refused(Refusal::LimitReached)
    );
    assert!(reserved(&w.reserve(sale, "bob", 2, None).await));
    assert_eq!(w.remaining(sale).await, 96);
}

#[tokio::test]
async fn the_window_the_sale_and_the_item_are_checked() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 10)]).await;
    let ask = |item: u32, at: OffsetDateTime, sale: SaleId| ReserveRequest {
        sale,
        item,
        buyer: "ada",
        quantity: 1,
        idempotency_key: None,
        now: at,
        buyer_ref: None,
        max_keys: 0,
    };
    let early = w
        .sales
        .reserve(&mut w.conn, &ask(1, now() - Duration::hours(1), sale))
        .await
        .unwrap();
    assert_eq!(early, refused(Refusal::NotStarted));
    let late = w
        .sales
        .reserve(&mut w.conn, &ask(1, now() + Duration::hours(2), sale))
        .await
        .unwrap();
    assert_eq!(late, refused(Refusal::Ended));
    let no_item = w
        .sales
        .reserve(&mut w.conn, &ask(7, now(), sale))
        .await
        .unwrap();
    assert_eq!(no_item, refused(Refusal::ItemNotFound));
    let no_sale = w
        .sales
        .reserve(&mut w.conn, &ask(1, now(), SaleId::new()))
        .await
        .unwrap();
    assert_eq!(no_sale, refused(Refusal::SaleNotFound));
    assert_eq!(w.remaining(sale).await, 10);
}

#[tokio::test]
async fn an_idempotency_key_gets_its_first_answer_again() {
    let mut w = World::new().await;
    let sale = w.sale(5, &[(1, 1)]).await;
    let Decision::Reserved { id, expires_at, .. } = w.reserve(sale, "ada", 1, Some("k1")).await
    else {
        panic!("expected a reservation");
    };
    assert!(expires_at > now() + Duration::minutes(14));
    // The same request with the same key: the same reservation, stock taken once.
    assert_eq!(
        w.reserve(sale, "ada", 1, Some("k1")).await,
        Decision::Reserved {
            id,
            expires_at,
            replayed: true,
            entry: None,
        }
    );
    // Another request with the key is refused; another buyer's key of the same name is theirs.
    assert_eq!(
        w.reserve(sale, "ada", 2, Some("k1")).await,
        Decision::KeyReused
    );
    assert_eq!(
        w.reserve(sale, "bob", 1, Some("k1")).await,
        refused(Refusal::SoldOut)
    );
    // A refusal is an answer too.
    assert_eq!(
        w.reserve(sale, "bob", 1, Some("k1")).await,
        Decision::Refused {
            refusal: Refusal::SoldOut,
            replayed: true
        }
    );
    assert_eq!(w.logged(sale).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_buyers_take_exactly_the_stock() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 50)]).await;
    let sales = Arc::new(w.sales.clone());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (sales, mut conn) = (Arc::clone(&sales), w.conn.clone());
            tokio::spawn(async move {
                let buyer = format!("racer{i}");
                sales
                    .reserve(
                        &mut conn,
                        &ReserveRequest {
                            sale,
                            item: 1,
                            buyer: &buyer,
                            quantity: 1,
                            idempotency_key: Some("once"),
                            now: now(),
                            buyer_ref: None,
                            max_keys: 0,
                        },
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut got = 0;
    for t in tasks {
        if reserved(&t.await.unwrap()) {
            got += 1;
        }
    }
    assert_eq!(got, 50);
    assert_eq!(w.remaining(sale).await, 0);
    assert_eq!(w.logged(sale).await, 50);
}

#[tokio::test]
async fn a_reservation_is_settled_once_and_its_units_come_back_once() {
    let mut w = World::new().await;
    let sale = w.sale(3, &[(1, 4)]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let Decision::Reserved { id, .. } = w.reserve(sale, "ada", 1, None).await else {
            panic!("expected a reservation");
        };
        ids.push(id);
    }
    assert_eq!(w.remaining(sale).await, 1);
    let settle = |id, to| {
        let (sales, mut conn) = (w.sales.clone(), w.conn.clone());
        async move {
            sales
                .settle(&mut conn, sale, id, to, (1, "ada", 1))
                .await
                .unwrap()
        }
    };
    // Expired: the unit goes back, once, and a late payment or cancellation changes nothing.
    assert_eq!(settle(ids[0], Settle::Expired).await, Settled::Changed);
    assert_eq!(
        settle(ids[0], Settle::Expired).await,
        Settled::Unchanged("expired".into())
    );
    assert_eq!(
        settle(ids[0], Settle::Purchased).await,
        Settled::Unchanged("expired".into())
    );
    // Purchased: the unit stays sold, and an expiry after it changes nothing.
    assert_eq!(settle(ids[1], Settle::Purchased).await, Settled::Changed);
    assert_eq!(
        settle(ids[1], Settle::Expired).await,
        Settled::Unchanged("purchased".into())
    );
    // Cancelled: back on sale too.
    assert_eq!(settle(ids[2], Settle::Cancelled).await, Settled::Changed);
    assert_eq!(
        settle(ids[2], Settle::Expired).await,
        Settled::Unchanged("cancelled".into())
    );
    assert_eq!(w.remaining(sale).await, 3);
    // What ada holds went down with each unit returned: she may reserve two more (limit 3).
    assert!(reserved(&w.reserve(sale, "ada", 2, None).await));
    assert_eq!(
        w.reserve(sale, "ada", 1, None).await,
        refused(Refusal::LimitReached)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_settlements_return_units_once() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 1)]).await;
    let Decision::Reserved { id, .. } = w.reserve(sale, "ada", 1, None).await else {
        panic!("expected a reservation");
    };
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (sales, mut conn) = (w.sales.clone(), w.conn.clone());
            let to = [Settle::Expired, Settle::Cancelled, Settle::Purchased][i % 3];
            tokio::spawn(async move {
                sales
                    .settle(&mut conn, sale, id, to, (1, "ada", 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut changed = 0;
    for t in tasks {
        if t.await.unwrap() == Settled::Changed {
            changed += 1;
        }
    }
    assert_eq!(changed, 1);
    // The one that won decides whether the unit came back (once) or stayed sold.
    let Settled::Unchanged(state) = w
        .sales
        .settle(&mut w.conn, sale, id, Settle::Expired, (1, "ada", 1))
        .await
        .unwrap()
    else {
        panic!("expected the reservation settled");
    };
    let back = i64::from(state != "purchased");
    assert_eq!(w.remaining(sale).await, back);
}

#[tokio::test]
async fn a_buyer_the_scripts_cannot_store_is_refused_before_redis() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 1)]).await;
    let request = ReserveRequest {
        sale,
        item: 1,
        buyer: "two\u{1f}fields",
        quantity: 1,
        idempotency_key: None,
        now: now(),
        buyer_ref: None,
        max_keys: 0,
    };
    assert!(w.sales.reserve(&mut w.conn, &request).await.is_err());
    assert_eq!(w.remaining(sale).await, 1);
}

#[tokio::test]
async fn the_stream_gives_each_reservation_to_one_consumer_until_it_is_acknowledged() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 10)]).await;
    w.sales
        .ensure_group(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    w.sales
        .ensure_group(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    let made: Vec<_> = w
        .reserve_one_each(sale, 6)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(w.sales.lag(&mut w.conn, sale, "writers").await.unwrap(), 6);
    // Two consumers share the entries, each given to one of them.
    let first = w
        .sales
        .read_new(&mut w.conn, sale, "writers", "worker-a", 4, None)
        .await
        .unwrap();
    let second = w
        .sales
        .read_new(&mut w.conn, sale, "writers", "worker-b", 4, None)
        .await
        .unwrap();
    assert_eq!((first.len(), second.len()), (4, 2));
    let seen: Vec<_> = first.iter().chain(&second).map(|l| l.id).collect();
    assert_eq!(seen, made, "in the order they were made");
    assert_eq!(first[0].item, 1);
    assert_eq!(first[0].quantity, 1);
    assert_eq!(first[0].buyer, "b0");
    assert_eq!(first[0].expires_at - first[0].at, Duration::minutes(15));
    // Delivered but not acknowledged: still owed.
    assert_eq!(w.sales.lag(&mut w.conn, sale, "writers").await.unwrap(), 6);
    let acked = entries(&second);
    assert_eq!(
        w.sales
            .ack(&mut w.conn, sale, "writers", &acked)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        w.sales
            .ack(&mut w.conn, sale, "writers", &acked)
            .await
            .unwrap(),
        0,
        "acknowledged once"
    );
    assert_eq!(w.sales.lag(&mut w.conn, sale, "writers").await.unwrap(), 4);
    // worker-a died with its four: another consumer takes them over, and acknowledges them.
    let taken = w.take_over(sale, "worker-c").await;
    assert_eq!(taken, first);
    w.sales
        .ack(&mut w.conn, sale, "writers", &entries(&taken))
        .await
        .unwrap();
    assert_eq!(w.sales.lag(&mut w.conn, sale, "writers").await.unwrap(), 0);
    assert!(
        w.sales
            .read_new(&mut w.conn, sale, "writers", "worker-a", 10, None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Entries whose reservations were stored by the instance that decided them are dropped from
/// the log: no writer is given them, before or after they were delivered.
#[tokio::test]
async fn entries_stored_already_are_dropped_and_never_read() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 10)]).await;
    w.sales
        .ensure_group(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    let logged = w.reserve_one_each(sale, 4).await;
    // b0 and b1 were stored by their requests: dropped before any writer reads.
    let dropped = [logged[0].1, logged[1].1];
    assert_eq!(
        w.sales.forget(&mut w.conn, sale, &dropped).await.unwrap(),
        2
    );
    let read = w
        .sales
        .read_new(&mut w.conn, sale, "writers", "worker-a", 10, None)
        .await
        .unwrap();
    let ids: Vec<_> = read.iter().map(|l| l.id).collect();
    assert_eq!(ids, [logged[2].0, logged[3].0]);
    // b2's request stored it while worker-a held it: dropped, it is not taken over.
    w.sales
        .forget(&mut w.conn, sale, &[logged[2].1])
        .await
        .unwrap();
    let taken = w.take_over(sale, "worker-b").await;
    let ids: Vec<_> = taken.iter().map(|l| l.id).collect();
    assert_eq!(ids, [logged[3].0]);
    // With entries dropped Redis cannot count what is undelivered; the count still answers.
    w.sales
        .ack(&mut w.conn, sale, "writers", &entries(&taken))
        .await
        .unwrap();
    w.sales
        .trim_acknowledged(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    assert!(w.sales.lag(&mut w.conn, sale, "writers").await.unwrap() <= 1);
}

#[tokio::test]
async fn the_stream_is_trimmed_behind_what_the_group_still_needs() {
    let mut w = World::new().await;
    let sale = w.sale(1, &[(1, 10)]).await;
    w.sales
        .ensure_group(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    w.reserve_one_each(sale, 5).await;
    let read = w
        .sales
        .read_new(&mut w.conn, sale, "writers", "worker", 5, None)
        .await
        .unwrap();
    // The first two are written; the third is not yet: it and what follows must stay.
    let done = entries([&read[0], &read[1], &read[3]]);
    w.sales
        .ack(&mut w.conn, sale, "writers", &done)
        .await
        .unwrap();
    assert_eq!(
        w.sales
            .trim_acknowledged(&mut w.conn, sale, "writers")
            .await
            .unwrap(),
        2
    );
    assert_eq!(w.logged(sale).await, 3);
    let rest = entries([&read[2], &read[4]]);
    w.sales
        .ack(&mut w.conn, sale, "writers", &rest)
        .await
        .unwrap();
    // Nothing pending: all but the last delivered entry go.
    assert_eq!(
        w.sales
            .trim_acknowledged(&mut w.conn, sale, "writers")
            .await
            .unwrap(),
        2
    );
    assert_eq!(w.logged(sale).await, 1);
    // A reservation made since is still delivered.
    assert!(reserved(&w.reserve(sale, "late", 1, None).await));
    let late = w
        .sales
        .read_new(&mut w.conn, sale, "writers", "worker", 5, None)
        .await
        .unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].buyer, "late");
}

/// The live sale `World::sale` makes, for loading it again.
fn live(id: SaleId, limit: u32, items: &[(u32, u32)]) -> LiveSale {
    LiveSale {
        id,
        starts_at: now() - Duration::minutes(1),
        ends_at: now() + Duration::hours(1),
        per_user_limit: limit,
        reservation_ttl: Duration::minutes(15),
        items: items.to_vec(),
    }
}

#[tokio::test]
async fn a_sale_is_loaded_once_and_never_reset() {
    let mut w = World::new().await;
    let id = SaleId::new();
    assert_eq!(w.sales.remaining(&mut w.conn, id).await.unwrap(), None);
    let sale = live(id, 2, &[(1, 5), (2, 3)]);
    assert!(
        w.sales
            .load_if_missing(&mut w.conn, &sale, &[], now())
            .await
            .unwrap()
    );
    assert!(reserved(&w.reserve(id, "ada", 2, None).await));
    // Loaded again (another instance, a late retry): what was sold stays sold.
    assert!(
        !w.sales
            .load_if_missing(&mut w.conn, &sale, &[], now())
            .await
            .unwrap()
    );
    assert_eq!(
        w.sales.remaining(&mut w.conn, id).await.unwrap(),
        Some(vec![(1, 3), (2, 3)])
    );
    assert_eq!(
        w.reserve(id, "ada", 1, None).await,
        refused(Refusal::LimitReached)
    );
}

/// Redis lost the sale (a restart without persistence, FLUSHALL): loaded again from what the
/// records hold (the remaining stock and each buyer's units), it goes on selling exactly what is
/// left, and nobody gets past the limit with what they held before the loss.
#[tokio::test]
async fn a_sale_lost_by_redis_is_rebuilt_with_its_buyers() {
    let mut w = World::new().await;
    let id = w.sale(2, &[(1, 10)]).await;
    for buyer in ["ada", "bob", "ada"] {
        assert!(reserved(&w.reserve(id, buyer, 1, None).await));
    }
    let keys = w.sales.keys(id);
    let _: () = w
        .conn
        .del(&[
            &keys.meta,
            &keys.stock,
            &keys.held,
            &keys.keys,
            &keys.log,
            &keys.reservations,
        ])
        .await
        .unwrap();
    assert_eq!(
        w.reserve(id, "cy", 1, None).await,
        refused(Refusal::SaleNotFound),
        "a lost sale is never answered from nothing"
    );
    // Marked lost: refused as rebuilding (never answered from nothing) until its time, and a
    // load before then changes nothing.
    let rebuild_at = now() + Duration::seconds(10);
    let Lost::RebuildAt(at) = w
        .sales
        .mark_lost(&mut w.conn, id, rebuild_at)
        .await
        .unwrap()
    else {
        panic!("the sale is not there");
    };
    assert_eq!(at.unix_timestamp(), rebuild_at.unix_timestamp());
    assert_eq!(
        w.sales
            .mark_lost(&mut w.conn, id, rebuild_at + Duration::hours(1))
            .await
            .unwrap(),
        Lost::RebuildAt(at),
        "the first mark's time is kept"
    );
    assert!(matches!(
        w.reserve(id, "cy", 1, None).await,
        Decision::Rebuilding { .. }
    ));
    let held = [("ada".to_owned(), 2), ("bob".to_owned(), 1)];
    let rebuilt = live(id, 2, &[(1, 7)]);
    assert!(
        !w.sales
            .load_if_missing(&mut w.conn, &rebuilt, &held, now())
            .await
            .unwrap(),
        "not before its time"
    );
    assert!(
        w.sales
            .load_if_missing(&mut w.conn, &rebuilt, &held, at)
            .await
            .unwrap()
    );
    assert_eq!(
        w.sales.mark_lost(&mut w.conn, id, at).await.unwrap(),
        Lost::Loaded
    );
    assert_eq!(
        w.reserve(id, "ada", 1, None).await,
        refused(Refusal::LimitReached)
    );
    let mut sold = 0;
    for n in 0..20 {
        if reserved(&w.reserve(id, &format!("new{n}"), 1, None).await) {
            sold += 1;
        }
    }
    assert_eq!(sold, 7, "exactly what was left");
    assert_eq!(
        w.sales.remaining(&mut w.conn, id).await.unwrap(),
        Some(vec![(1, 0)])
    );
}

/// Many instances finding the sale missing at once all load it: one load wins, and the
/// reservations made meanwhile are never undone by a later load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_loads_and_reservations_sell_the_stock_once() {
    let w = World::new().await;
    let id = SaleId::new();
    let sale = live(id, 1, &[(1, 50)]);
    let mut tasks = Vec::new();
    for n in 0..100 {
        let (sales, mut conn, sale) = (w.sales.clone(), w.conn.clone(), sale.clone());
        tasks.push(tokio::spawn(async move {
            let loaded = sales
                .load_if_missing(&mut conn, &sale, &[], now())
                .await
                .unwrap();
            let decision = sales
                .reserve(
                    &mut conn,
                    &ReserveRequest {
                        sale: id,
                        item: 1,
                        buyer: &format!("buyer{n}"),
                        quantity: 1,
                        idempotency_key: None,
                        now: now(),
                        buyer_ref: None,
                        max_keys: 0,
                    },
                )
                .await
                .unwrap();
            (loaded, reserved(&decision))
        }));
    }
    let (mut loads, mut sold) = (0, 0);
    for task in tasks {
        let (loaded, got) = task.await.unwrap();
        loads += usize::from(loaded);
        sold += usize::from(got);
    }
    assert_eq!(loads, 1);
    assert_eq!(sold, 50);
    let mut conn = w.conn.clone();
    assert_eq!(
        w.sales.remaining(&mut conn, id).await.unwrap(),
        Some(vec![(1, 0)])
    );
}

async fn sorted_hash(conn: &mut MultiplexedConnection, key: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = conn.hgetall(key).await.unwrap();
    fields.sort_unstable();
    fields
}

/// A request of `a_batch_answers_as_its_requests_one_at_a_time`: item, buyer, quantity, key, time.
type Asked = (u32, usize, u32, Option<&'static str>, OffsetDateTime);

/// A decision with its reservation id named by the request that made it (two runs make
/// different ids for the same reservation).
fn normalized(
    decision: &Decision,
    made_by: &mut std::collections::HashMap<flashmart_domain::ReservationId, usize>,
    request: usize,
) -> String {
    match decision {
        Decision::Reserved {
            id,
            expires_at,
            replayed,
            entry,
        } => {
            let by = *made_by.entry(*id).or_insert(request);
            format!(
                "reserved by {by}, until {expires_at}, replayed {replayed}, logged {}",
                entry.is_some()
            )
        }
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn a_batch_answers_as_its_requests_one_at_a_time() {
    let mut w = World::new().await;
    let start = now();
    // Two items of 10 and an item that does not exist; six buyers with a limit of 4 and at
    // most 3 keys each; keys reused with the same and other requests; some requests before the
    // window opens. A fixed pseudo-random sequence, so a failure repeats.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let buyers: Vec<String> = (0..6).map(|b| format!("b{b}")).collect();
    let keys = ["k1", "k2", "k3", "k4"];
    let requests: Vec<Asked> = (0..300)
        .map(|i| {
            let item = [1, 1, 2, 3][usize::try_from(next(4)).unwrap()];
            let buyer = usize::try_from(next(6)).unwrap();
            let quantity = u32::try_from(next(3)).unwrap() + 1;
            let key = (next(3) == 0).then(|| keys[usize::try_from(next(4)).unwrap()]);
            let at = if next(20) == 0 {
                start - Duration::hours(1)
            } else {
                start + Duration::milliseconds(i)
            };
            (item, buyer, quantity, key, at)
        })
        .collect();
    let ask = |sale: SaleId, &(item, buyer, quantity, key, at): &Asked| ReserveRequest {
        sale,
        item,
        buyer: &buyers[buyer],
        quantity,
        idempotency_key: key,
        now: at,
        buyer_ref: None,
        max_keys: 3,
    };

    let alone = w.sale(4, &[(1, 10), (2, 10)]).await;
    let mut made_by = std::collections::HashMap::new();
    let mut one_at_a_time = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let decision = w.sales.reserve(&mut w.conn, &ask(alone, r)).await.unwrap();
        one_at_a_time.push(normalized(&decision, &mut made_by, i));
    }

    let batched = w.sale(4, &[(1, 10), (2, 10)]).await;
    let mut made_by = std::collections::HashMap::new();
    let mut in_batches = Vec::new();
    let mut at = 0;
    for size in [1, 7, 64, 2, 30, 64, 64, 64, 4] {
        let end = (at + size).min(requests.len());
        let batch: Vec<ReserveRequest<'_>> =
            requests[at..end].iter().map(|r| ask(batched, r)).collect();
        let decisions = w.sales.reserve_batch(&mut w.conn, &batch).await.unwrap();
        assert_eq!(decisions.len(), batch.len());
        for (j, decision) in decisions.iter().enumerate() {
            in_batches.push(normalized(decision, &mut made_by, at + j));
        }
        at = end;
    }
    assert_eq!(at, requests.len(), "every request sent");
    for (i, (a, b)) in one_at_a_time.iter().zip(&in_batches).enumerate() {
        assert_eq!(a, b, "request {i}: {:?}", requests[i]);
    }
    // Each kind of answer came up, so the comparison covered them.
    for kind in [
        "reserved",
        "SoldOut",
        "LimitReached",
        "NotStarted",
        "ItemNotFound",
        "KeyReused",
        "TooManyKeys",
        "replayed true",
    ] {
        assert!(
            one_at_a_time.iter().any(|d| d.contains(kind)),
            "no {kind} among {one_at_a_time:?}"
        );
    }

    // And the two sales are left the same.
    let (a, b) = (w.sales.keys(alone), w.sales.keys(batched));
    for (what, key_a, key_b) in [
        ("stock", &a.stock, &b.stock),
        ("holdings", &a.held, &b.held),
        ("keys remembered per buyer", &a.key_counts, &b.key_counts),
    ] {
        assert_eq!(
            sorted_hash(&mut w.conn, key_a).await,
            sorted_hash(&mut w.conn, key_b).await,
            "{what}"
        );
    }
    let answers: (usize, usize) = (
        w.conn.hlen(&a.keys).await.unwrap(),
        w.conn.hlen(&b.keys).await.unwrap(),
    );
    assert_eq!(answers.0, answers.1, "answers remembered");
    assert_eq!(
        w.logged(alone).await,
        w.logged(batched).await,
        "reservations logged"
    );
}

#[tokio::test]
async fn a_writer_reads_new_entries_only_once_they_are_old_enough() {
    let mut w = World::new().await;
    let sale = w.sale(5, &[(1, 10)]).await;
    w.sales
        .ensure_group(&mut w.conn, sale, "writers")
        .await
        .unwrap();
    let made = w.reserve_one_each(sale, 3).await;
    // The first was stored by the instance that made it, and dropped from the log.
    w.sales
        .forget(&mut w.conn, sale, &[made[0].1])
        .await
        .unwrap();
    // Younger than asked: left for the instance that logged them to store and drop.
    let young = w
        .read_new_aged(sale, Some(std::time::Duration::from_secs(5)))
        .await;
    assert!(young.is_empty(), "{young:?}");
    // Old enough (any age will do): both left, once.
    let old = w.read_new_aged(sale, Some(std::time::Duration::ZERO)).await;
    assert_eq!(
        old.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![made[1].0, made[2].0]
    );
    let again = w.read_new_aged(sale, Some(std::time::Duration::ZERO)).await;
    assert!(again.is_empty(), "given once: {again:?}");
}

/// One unit of item 1 of `sale` for `buyer`, asked of the engine (which batches it).
fn one_unit(
    sale: SaleId,
    buyer: flashmart_app::flash_sale::model::BuyerId,
    idempotency_key: Option<&str>,
) -> flashmart_app::ports::SharedReserve<'_> {
    flashmart_app::ports::SharedReserve {
        sale,
        item_no: 1,
        buyer,
        quantity: 1,
        idempotency_key,
        now: now(),
        buyer_ref: None,
        max_keys: 0,
    }
}

/// Through the engine, concurrent requests go to Redis in batches: exactly the stock is sold,
/// each buyer once, and a request the script cannot store is refused alone, never failing the
/// batch it would have joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_requests_through_the_engine_batches_sell_exactly_the_stock() {
    use flashmart_app::flash_sale::model::BuyerId;
    use flashmart_app::ports::{SharedDecision, SharedEngine};

    let mut w = World::new().await;
    let engine = Arc::new(
        flashmart_redis::RedisEngine::connect(&redis_url(), &w.prefix)
            .await
            .unwrap(),
    );
    let sale = SaleId::new();
    let state = flashmart_redis::testing::live_sale_state(sale, 1, 100);
    assert!(engine.load(&state, now()).await.unwrap());
    // 300 buyers, each asking twice (the second is over the limit of 1), and among them
    // requests with a key the scripts cannot store.
    let buyers: Vec<BuyerId> = (0..300).map(|_| BuyerId(uuid::Uuid::new_v4())).collect();
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (i, buyer) in buyers.iter().copied().enumerate() {
            let engine = Arc::clone(&engine);
            tasks.push(tokio::spawn(async move {
                let bad = round == 0 && i % 50 == 0;
                let key = bad.then_some("bad\u{1f}key");
                let decision = engine.reserve(&one_unit(sale, buyer, key)).await;
                (bad, buyer, decision)
            }));
        }
    }
    let mut reserved = std::collections::HashMap::new();
    let mut refused = 0;
    for task in tasks {
        let (bad, buyer, decision) = task.await.unwrap();
        match decision {
            Err(err) => assert!(bad, "a good request failed: {err}"),
            Ok(SharedDecision::Reserved { id, .. }) => {
                assert!(!bad, "a request with a bad key was decided");
                assert!(
                    reserved.insert(buyer, id).is_none(),
                    "a buyer reserved twice over a limit of 1"
                );
            }
            Ok(SharedDecision::Refused { .. }) => refused += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved.len(), 100, "exactly the stock sold");
    assert_eq!(refused, 600 - 6 - 100);
    assert_eq!(w.remaining(sale).await, 0);
    assert_eq!(w.logged(sale).await, 100);
}

/// Both ways a sale is loaded leave its stock and what its buyers hold as hash tables, never
/// Redis's compact encoding for small hashes (where each field read or written scans the whole
/// hash), and the field that makes them so is never taken for an item or a buyer.
#[tokio::test]
async fn holdings_are_a_hash_table_from_the_start() {
    async fn encoding(w: &mut World, key: &str) -> String {
        redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(&mut w.conn)
            .await
            .unwrap()
    }
    let mut w = World::new().await;
    let made = w.sale(3, &[(1, 10)]).await;
    assert!(reserved(&w.reserve(made, "ada", 1, None).await));
    let keys = w.sales.keys(made);
    assert_eq!(encoding(&mut w, &keys.held).await, "hashtable");
    assert_eq!(encoding(&mut w, &keys.stock).await, "hashtable");
    let units: u32 = w.conn.hget(&keys.held, "ada").await.unwrap();
    assert_eq!(units, 1);
    assert_eq!(
        w.sales.remaining(&mut w.conn, made).await.unwrap(),
        Some(vec![(1, 9)])
    );

    let rebuilt = SaleId::new();
    let buyers = [("bob".to_owned(), 2)];
    assert!(
        w.sales
            .load_if_missing(&mut w.conn, &live(rebuilt, 3, &[(1, 5)]), &buyers, now())
            .await
            .unwrap()
    );
    let keys = w.sales.keys(rebuilt);
    assert_eq!(encoding(&mut w, &keys.held).await, "hashtable");
    assert_eq!(encoding(&mut w, &keys.stock).await, "hashtable");
    assert_eq!(
        w.sales.remaining(&mut w.conn, rebuilt).await.unwrap(),
        Some(vec![(1, 5)])
    );
    assert_eq!(
        w.reserve(rebuilt, "bob", 2, None).await,
        refused(Refusal::LimitReached)
    );
    assert!(reserved(&w.reserve(rebuilt, "bob", 1, None).await));
}

/// Waits until `sale`'s batch runners and the requests waiting for one are as given.
async fn until_queue(
    engine: &flashmart_redis::RedisEngine<redis::aio::ConnectionManager>,
    sale: SaleId,
    running: usize,
    waiting: usize,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.batch_queue(sale) != (running, waiting) {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue stayed at {:?}, not ({running}, {waiting})",
            engine.batch_queue(sale)
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// A request whose client goes away while it waits for its sale's batch is left out of the
/// batch: nothing is reserved or logged for it. The two ahead of it, already in Redis when it
/// went, are decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gone_before_its_batch_is_sent_is_not_decided() {
    use flashmart_app::flash_sale::model::BuyerId;
    use flashmart_app::ports::{SharedDecision, SharedEngine};

    // A Redis of the test's own: it is stopped for a moment.
    let redis = flashmart_redis::testing::LocalRedis::start();
    let engine = Arc::new(
        flashmart_redis::RedisEngine::connect(&redis.urls()[0], "test:gone:")
            .await
            .unwrap(),
    );
    let sale = SaleId::new();
    let state = flashmart_redis::testing::live_sale_state(sale, 1, 3);
    assert!(engine.load(&state, now()).await.unwrap());
    let reserve = |engine: Arc<flashmart_redis::RedisEngine<_>>| {
        tokio::spawn(async move {
            let buyer = BuyerId(uuid::Uuid::new_v4());
            engine.reserve(&one_unit(sale, buyer, None)).await
        })
    };
    // While Redis answers nothing, two requests take the sale's two runners and a third waits.
    redis.freeze();
    let first = reserve(Arc::clone(&engine));
    until_queue(&engine, sale, 1, 0).await;
    let second = reserve(Arc::clone(&engine));
    until_queue(&engine, sale, 2, 0).await;
    let gone = reserve(Arc::clone(&engine));
    until_queue(&engine, sale, 2, 1).await;
    assert!(!first.is_finished() && !second.is_finished());
    // Its client goes away.
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    redis.thaw();
    for request in [first, second] {
        let decision = request.await.unwrap().unwrap();
        assert!(
            matches!(decision, SharedDecision::Reserved { .. }),
            "{decision:?}"
        );
    }
    until_queue(&engine, sale, 0, 0).await;
    assert_eq!(engine.remaining(sale).await.unwrap(), Some(vec![(1, 1)]));
    let logged = engine
        .take_logged(sale, "test", 10, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(logged.len(), 2, "{logged:?}");
}

/// Polls `future` once: whether it is still pending.
async fn pending_once<F: std::future::Future + Unpin>(future: &mut F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx).is_pending())
    })
    .await
}

/// A request whose client goes away once its batch is in Redis, or after its answer came but
/// before it read it, leaves a reservation nobody heard of: this instance's next writer pass is
/// given it at once, not when its log entry is old enough for any writer (`stale_after`), and
/// acknowledging it drops the entry from the log, so no writer takes it again.
#[tokio::test]
async fn a_reservation_nobody_heard_of_goes_to_the_next_writer_pass() {
    use flashmart_app::flash_sale::model::BuyerId;
    use flashmart_app::ports::SharedEngine;
    use std::time::Duration;

    // A Redis of the test's own: it is stopped for a moment.
    let redis = flashmart_redis::testing::LocalRedis::start();
    let engine = flashmart_redis::RedisEngine::connect(&redis.urls()[0], "test:unheard:")
        .await
        .unwrap();
    let sale = SaleId::new();
    let state = flashmart_redis::testing::live_sale_state(sale, 1, 3);
    assert!(engine.load(&state, now()).await.unwrap());
    let (gone_in_redis, gone_unread) =
        (BuyerId(uuid::Uuid::new_v4()), BuyerId(uuid::Uuid::new_v4()));

    // Gone while Redis decided it: polled once (it joins the queue), taken into a batch that
    // waits for the stopped Redis, dropped, and answered by Redis after that.
    redis.freeze();
    let request = one_unit(sale, gone_in_redis, None);
    let mut reserving = engine.reserve(&request);
    assert!(pending_once(&mut reserving).await);
    until_queue(&engine, sale, 1, 0).await;
    drop(reserving);
    redis.thaw();
    until_queue(&engine, sale, 0, 0).await;

    // Gone with its answer come and not read.
    let request = one_unit(sale, gone_unread, None);
    let mut reserving = engine.reserve(&request);
    assert!(pending_once(&mut reserving).await);
    until_queue(&engine, sale, 0, 0).await;
    drop(reserving);

    assert_eq!(engine.remaining(sale).await.unwrap(), Some(vec![(1, 1)]));
    // Both entries are younger than the 5 s after which any writer reads them.
    let logged = engine
        .take_logged(sale, "test", 10, Duration::from_secs(5))
        .await
        .unwrap();
    let mut buyers: Vec<_> = logged.iter().map(|l| l.buyer.0).collect();
    buyers.sort();
    let mut expected = vec![gone_in_redis.0, gone_unread.0];
    expected.sort();
    assert_eq!(buyers, expected, "{logged:?}");
    assert!(logged.iter().all(|l| l.quantity == 1 && l.item_no == 1));
    let entries: Vec<String> = logged.iter().map(|l| l.entry.clone()).collect();
    engine.ack_logged(sale, &entries).await.unwrap();
    let again = engine
        .take_logged(sale, "test", 10, Duration::ZERO)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}
