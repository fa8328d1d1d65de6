//! The sale scripts on a Redis Cluster of three masters, which the test starts itself from the
//! `redis-server` binary (free loopback ports, a temporary directory, stopped at the end): sales
//! spread over the shards by their hash tag, and each script runs whole on its sale's shard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flashmart_app::flash_sale::idempotency::Refusal;
use flashmart_domain::SaleId;
use flashmart_redis::testing::{LocalRedis, redis_cli};
use flashmart_redis::{Decision, LiveSale, RedisSales, ReserveRequest, Settle, Settled};
use redis::AsyncCommands as _;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use time::{Duration, OffsetDateTime};

async fn connect(cluster: &LocalRedis) -> ClusterConnection {
    ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn live(id: SaleId, limit: u32, stock: u32) -> LiveSale {
    LiveSale {
        id,
        starts_at: now() - Duration::minutes(1),
        ends_at: now() + Duration::hours(1),
        per_user_limit: limit,
        reservation_ttl: Duration::minutes(15),
        items: vec![(1, stock)],
    }
}

fn ask<'a>(sale: SaleId, buyer: &'a str, key: Option<&'a str>) -> ReserveRequest<'a> {
    ReserveRequest {
        sale,
        item: 1,
        buyer,
        quantity: 1,
        idempotency_key: key,
        now: now(),
        buyer_ref: None,
        max_keys: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sales_spread_over_three_shards_each_sell_exactly_their_stock() {
    let cluster = LocalRedis::start_cluster();
    let mut conn = connect(&cluster).await;
    let sales = RedisSales::new("cluster-test:");
    // Sales (random ids, so random slots) until every shard holds some of them: 12 at least, and
    // more while a shard has none (12 leave one shard empty about once in 40 runs).
    let mut ids: Vec<SaleId> = Vec::new();
    let holding = |port: u16| -> u64 { redis_cli(port, &["dbsize"]).trim().parse().unwrap() };
    while ids.len() < 12 || cluster.ports().iter().any(|p| holding(*p) == 0) {
        assert!(ids.len() < 200, "200 sales and a shard still holds none");
        let id = SaleId::new();
        sales.load(&mut conn, &live(id, 1, 10)).await.unwrap();
        ids.push(id);
    }
    // 30 buyers race for each sale's 10 units, all sales at once.
    let mut tasks = Vec::new();
    for id in &ids {
        for i in 0..30 {
            let (sales, mut conn, id) = (sales.clone(), conn.clone(), *id);
            tasks.push(tokio::spawn(async move {
                let buyer = format!("buyer{i}");
                sales
                    .reserve(&mut conn, &ask(id, &buyer, Some("k")))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut reserved = 0;
    for t in tasks {
        match t.await.unwrap() {
            Decision::Reserved { .. } => reserved += 1,
            Decision::Refused {
                refusal: Refusal::SoldOut,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reserved, ids.len() * 10);
    for id in &ids {
        let keys = sales.keys(*id);
        let left: i64 = conn.hget(&keys.stock, 1).await.unwrap();
        let logged: usize = conn.xlen(&keys.log).await.unwrap();
        assert_eq!((left, logged), (0, 10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_and_settlements_work_on_a_shard_as_on_one_redis() {
    let cluster = LocalRedis::start_cluster();
    let mut conn = connect(&cluster).await;
    let sales = RedisSales::new("cluster-test:");
    let sale = SaleId::new();
    sales.load(&mut conn, &live(sale, 2, 1)).await.unwrap();
    let Decision::Reserved { id, .. } = sales
        .reserve(&mut conn, &ask(sale, "ada", Some("k")))
        .await
        .unwrap()
    else {
        panic!("expected a reservation");
    };
    assert!(matches!(
        sales.reserve(&mut conn, &ask(sale, "ada", Some("k"))).await.unwrap(),
        Decision::Reserved { replayed: true, id: again, .. } if again == id
    ));
    assert_eq!(
        sales
            .settle(&mut conn, sale, id, Settle::Expired, (1, "ada", 1))
            .await
            .unwrap(),
        Settled::Changed
    );
    assert_eq!(
        sales
            .settle(&mut conn, sale, id, Settle::Purchased, (1, "ada", 1))
            .await
            .unwrap(),
        Settled::Unchanged("expired".into())
    );
    assert!(matches!(
        sales
            .reserve(&mut conn, &ask(sale, "bob", None))
            .await
            .unwrap(),
        Decision::Reserved {
            replayed: false,
            ..
        }
    ));
}

/// The engine as the server builds it from `redis.cluster_nodes`: sales on every shard loaded,
/// reserved, settled and read back through the use cases' port; a sale lost on its shard is
/// marked and rebuilt there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_engine_runs_on_the_cluster_client() {
    use flashmart_app::flash_sale::model::{BuyerId, Released};
    use flashmart_app::ports::{SettleTo, SharedDecision, SharedEngine, SharedReserve};

    let cluster = LocalRedis::start_cluster();
    let engine = flashmart_redis::RedisEngine::connect_cluster(&cluster.urls(), "engine-test:")
        .await
        .unwrap();
    engine.ping().await.unwrap();
    let state = |id: SaleId| flashmart_redis::testing::live_sale_state(id, 1, 3);
    // Sales until every shard holds some (9 at least; random ids leave a shard empty at times).
    let mut ids: Vec<SaleId> = Vec::new();
    let holding = |port: u16| -> u64 { redis_cli(port, &["dbsize"]).trim().parse().unwrap() };
    while ids.len() < 9 || cluster.ports().iter().any(|p| holding(*p) == 0) {
        assert!(ids.len() < 200, "200 sales and a shard still holds none");
        let id = SaleId::new();
        assert!(engine.load(&state(id), now()).await.unwrap());
        assert!(
            !engine.load(&state(id), now()).await.unwrap(),
            "loaded once"
        );
        ids.push(id);
    }
    let ask = |sale: SaleId, buyer: BuyerId| SharedReserve {
        sale,
        item_no: 1,
        buyer,
        quantity: 1,
        idempotency_key: None,
        now: now(),
        buyer_ref: None,
        max_keys: 0,
    };
    for id in &ids {
        let mut first = None;
        for _ in 0..5 {
            let buyer = BuyerId(uuid::Uuid::new_v4());
            if let SharedDecision::Reserved { id: r, .. } =
                engine.reserve(&ask(*id, buyer)).await.unwrap()
            {
                first.get_or_insert((r, buyer));
            }
        }
        assert_eq!(engine.remaining(*id).await.unwrap(), Some(vec![(1, 0)]));
        // One settled as expired: its unit is on sale again, once.
        let (r, buyer) = first.unwrap();
        let released = Released {
            reservation: r,
            sale_id: *id,
            item_no: 1,
            buyer,
            quantity: 1,
        };
        assert!(engine.settle(&released, SettleTo::Expired).await.unwrap());
        assert!(!engine.settle(&released, SettleTo::Expired).await.unwrap());
        assert_eq!(engine.remaining(*id).await.unwrap(), Some(vec![(1, 1)]));
    }
    // A sale that is not there is marked lost, refused as rebuilding, then rebuilt at its time.
    let gone = SaleId::new();
    let buyer = BuyerId(uuid::Uuid::new_v4());
    assert_eq!(
        engine.reserve(&ask(gone, buyer)).await.unwrap(),
        SharedDecision::Missing
    );
    let at = engine
        .mark_lost(gone, now() + Duration::seconds(5))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        engine.reserve(&ask(gone, buyer)).await.unwrap(),
        SharedDecision::Rebuilding { .. }
    ));
    assert!(engine.load(&state(gone), at).await.unwrap());
    assert!(matches!(
        engine.reserve(&ask(gone, buyer)).await.unwrap(),
        SharedDecision::Reserved { .. }
    ));
    assert_eq!(engine.mark_lost(gone, now()).await.unwrap(), None);
}

/// A shard that has forgotten the scripts (restarted, `SCRIPT FLUSH`, or new) is given the
/// reservation script again by the first reservation that finds it missing there.
#[tokio::test]
async fn a_reservation_loads_its_script_again_where_redis_forgot_it() {
    let cluster = LocalRedis::start_cluster();
    let mut conn = connect(&cluster).await;
    let sales = RedisSales::new("cluster-test:");
    let sale = SaleId::new();
    sales.load(&mut conn, &live(sale, 5, 5)).await.unwrap();
    let first = sales.reserve(&mut conn, &ask(sale, "ada", None)).await;
    assert!(matches!(first, Ok(Decision::Reserved { .. })), "{first:?}");
    for port in cluster.ports() {
        assert_eq!(redis_cli(*port, &["script", "flush"]).trim(), "OK");
    }
    let again = sales.reserve(&mut conn, &ask(sale, "bob", None)).await;
    assert!(matches!(again, Ok(Decision::Reserved { .. })), "{again:?}");
    let held: u32 = conn.hget(sales.keys(sale).held, "bob").await.unwrap();
    assert_eq!(held, 1);
}
