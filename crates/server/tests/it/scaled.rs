//! Scaled mode: records in PostgreSQL and reservations decided by the shared engine in Redis,
//! whatever `FLASHMART_TEST_*` says (each test in a schema and under a key prefix of its own).
//! Two applications on the same database and Redis stand for two instances behind a load
//! balancer.

use axum::http::StatusCode;
use flashmart_server::Config;
use flashmart_server::config::Secret;
use time::Duration;

use crate::flash_sales::{live_sale, operator, post_live_sale, reserve, reserve_keyed};
use crate::support::TestApp;
use flashmart_redis::testing::LocalRedis;

/// A configuration on `schema` and the local Redis under a prefix of the schema's name, with
/// one token key for every instance.
fn scaled(schema: &flashmart_postgres::testing::TestSchema) -> Config {
    let redis = crate::support::redis_url();
    let mut config = Config::default();
    config.database.url = Some(Secret::new(schema.url()));
    config.redis.url = Some(Secret::new(redis));
    config.redis.key_prefix = format!("test:{}:", schema.name());
    crate::support::shared_secrets(&mut config);
    config
}

/// Two instances of one shop.
async fn two_instances() -> (TestApp, TestApp) {
    two_instances_with(|_| {}).await
}

/// Two instances of one shop, configured by `tweak` too.
async fn two_instances_with(tweak: impl FnOnce(&mut Config)) -> (TestApp, TestApp) {
    let schema = flashmart_postgres::testing::TestSchema::create().await;
    let mut config = scaled(&schema);
    tweak(&mut config);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestApp::on_records(
        dir_a,
        Config {
            data_dir: tempfile::tempdir().unwrap().keep(),
            ..config.clone()
        },
        Some(schema),
    )
    .await;
    let b = TestApp::on_records(
        dir_b,
        Config {
            data_dir: tempfile::tempdir().unwrap().keep(),
            ..config
        },
        None,
    )
    .await;
    (a, b)
}

/// An admin's access token.
async fn admin(app: &TestApp) -> String {
    app.staff(
        "admin@example.com",
        "admin password",
        flashmart_domain::Role::Admin,
    )
    .await
}

/// `FLUSHALL` on a Redis of the test's own: everything lost, as a restart without persistence
/// would.
fn flush(redis: &flashmart_redis::testing::LocalRedis) {
    let flushed = flashmart_redis::testing::redis_cli(redis.ports()[0], &["flushall"]);
    assert_eq!(flushed.trim(), "OK");
}

/// The sale's numbers as an admin sees them through `app`.
async fn stats(app: &TestApp, admin: &str, sale: &str) -> serde_json::Value {
    app.get(&format!("/api/v1/admin/flash-sales/{sale}/stats"))
        .bearer(admin)
        .send()
        .await
        .data()
}

/// Two instances on a Redis of the test's own (`redis`: one server or a cluster), which it may
/// flush.
async fn two_instances_on(redis: &flashmart_redis::testing::LocalRedis) -> (TestApp, TestApp) {
    let urls = redis.urls();
    two_instances_with(|c| {
        if urls.len() == 1 {
            c.redis.url = Some(Secret::new(urls[0].clone()));
        } else {
            c.redis.url = None;
            c.redis.cluster_nodes = urls.clone();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sell_one_stock_exactly() {
    let (a, b) = two_instances().await;
    let ready = b.get("/readyz").send().await.data();
    assert_eq!(ready["checks"]["postgres"], "ok", "{ready}");
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[25], 2).await;
    let mut buyers = Vec::new();
    for n in 0..20 {
        let on = if n % 2 == 0 { &a } else { &b };
        let (token, _) = on
            .customer(&format!("buyer{n}@example.com"), "buyer password")
            .await;
        buyers.push(token);
    }
    // Every buyer tries for 2 units twice, alternately through both instances, all at once.
    let mut tasks = Vec::new();
    for (n, token) in buyers.iter().enumerate() {
        for round in 0..2 {
            let app = if (n + round) % 2 == 0 { &a } else { &b };
            let sale = &sale;
            tasks.push(async move { reserve(app, token, sale, 1, 2).await.status });
        }
    }
    let answers = futures_util::future::join_all(tasks).await;
    let created = answers
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert!(
        answers
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT),
        "{answers:?}"
    );
    // 25 units, 2 a reservation: 12 reservations, and 1 unit nobody can take in 2s.
    assert_eq!(created, 12);
    let admin = admin(&a).await;
    for app in [&a, &b] {
        let stats = stats(app, &admin, &sale).await;
        assert_eq!(stats["reserved"], 24, "{stats}");
        assert_eq!(stats["remaining"], 1, "{stats}");
    }
    // The limit holds across instances: a buyer holding 2 (one whose reservation was made,
    // through either instance) is refused a third unit through both, for the limit, though a
    // unit is left.
    let holder = (0..buyers.len())
        .find(|n| answers[2 * n..2 * n + 2].contains(&StatusCode::CREATED))
        .unwrap();
    for app in [&a, &b] {
        let one = reserve(app, &buyers[holder], &sale, 1, 1).await;
        one.assert_error(StatusCode::CONFLICT, 60005);
    }
}

#[tokio::test]
async fn an_expired_reservation_frees_its_unit_for_every_instance() {
    let (a, b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[1], 1).await;
    let (first, _) = a.customer("first@example.com", "first password").await;
    let (second, _) = b.customer("second@example.com", "second password").await;
    assert_eq!(
        reserve(&a, &first, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        reserve(&b, &second, &sale, 1, 1).await.status,
        StatusCode::CONFLICT
    );
    // Past its payment window, swept on one instance: the unit is on sale on the other.
    a.clock.advance(Duration::minutes(20));
    b.clock.advance(Duration::minutes(20));
    assert_eq!(
        a.services.state.flash_sales.sweep_expired().await.unwrap(),
        1
    );
    // (Signed in again: the access token has expired too.)
    let (second, _) = b.login("second@example.com", "second password").await;
    assert_eq!(
        reserve(&b, &second, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        b.services.state.flash_sales.sweep_expired().await.unwrap(),
        0
    );
}

/// Told "sold out" by Redis, an instance says it again for a moment (20 ms) without asking:
/// a unit that comes back through another instance is on sale there once the moment has
/// passed, or at once to a request with an `Idempotency-Key` (which Redis always answers); one
/// that comes back through the instance itself is on sale there at once.
#[tokio::test]
async fn a_sold_out_answer_is_given_again_for_a_moment_without_asking_redis() {
    let (a, b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[1], 1).await;
    let (first, _) = a.customer("first@example.com", "first password").await;
    let (second, _) = b.customer("second@example.com", "second password").await;
    let (third, _) = b.customer("third@example.com", "third password").await;
    async fn cancel(app: &TestApp, token: &str, reserved: &crate::support::TestResponse) {
        let order = reserved.data()["order_id"].as_str().unwrap().to_owned();
        app.post(&format!("/api/v1/orders/{order}/cancel"))
            .bearer(token)
            .send()
            .await
            .data();
    }
    let sold_out = async |app: &TestApp, token: &str| {
        reserve(app, token, &sale, 1, 1)
            .await
            .assert_error(StatusCode::CONFLICT, 60004)
    };

    let firsts = reserve(&a, &first, &sale, 1, 1).await;
    assert_eq!(firsts.status, StatusCode::CREATED, "{}", firsts.text());
    sold_out(&b, &second).await;
    // Back in Redis through the other instance: still sold out here for the moment...
    cancel(&a, &first, &firsts).await;
    sold_out(&b, &second).await;
    // ...but not to a key, which Redis answers.
    let seconds = reserve_keyed(&b, &second, &sale, "second-try").await;
    assert_eq!(seconds.status, StatusCode::CREATED, "{}", seconds.text());
    // Sold out again (by Redis's answer), then back through this instance: on sale at once.
    sold_out(&b, &third).await;
    cancel(&b, &second, &seconds).await;
    let thirds = reserve(&b, &third, &sale, 1, 1).await;
    assert_eq!(thirds.status, StatusCode::CREATED, "{}", thirds.text());
    // Sold out on the other instance by Redis's answer, back through this one: on sale there
    // once the moment has passed.
    sold_out(&a, &first).await;
    cancel(&b, &third, &thirds).await;
    sold_out(&a, &first).await;
    a.clock.advance(Duration::milliseconds(20));
    assert_eq!(
        reserve(&a, &first, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
}

/// Before a sale opens the instance answers "not started" itself, from the sale's window, which
/// the Redis script would compare with the instance's own clock all the same: the rush before a
/// drop costs Redis nothing (shown with Redis stopped). A keyed request still goes to Redis,
/// which remembers its answer.
#[tokio::test]
async fn not_started_is_answered_without_redis() {
    let mut redis = LocalRedis::start();
    let url = redis.urls()[0].clone();
    let (a, b) = two_instances_with(|c| {
        c.redis.url = Some(Secret::new(url));
        c.rate_limit.enabled = false;
    })
    .await;
    let op = operator(&a).await;
    let now = flashmart_app::Clock::now(&a.clock);
    let upcoming = a
        .post("/api/v1/admin/flash-sales")
        .bearer(&op)
        .json(&serde_json::json!({
            "name": "At the top of the hour",
            "starts_at": crate::flash_sales::at(now + Duration::minutes(1)),
            "ends_at": crate::flash_sales::at(now + Duration::hours(1)),
            "per_user_limit": 1,
            "items": [{"name": "Sneaker", "price_cents": 12900, "stock": 5}],
        }))
        .send()
        .await;
    assert_eq!(upcoming.status, StatusCode::CREATED, "{}", upcoming.text());
    let upcoming = upcoming.data()["id"].as_str().unwrap().to_owned();
    let live = live_sale(&a, &op, &[5], 1).await;
    let (buyer, _) = b.customer("early@example.com", "early bird").await;
    let reserved = reserve(&b, &buyer, &live, 1, 1).await;
    assert_eq!(reserved.status, StatusCode::CREATED, "{}", reserved.text());
    reserve(&b, &buyer, &upcoming, 1, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60002);

    redis.stop();
    reserve(&b, &buyer, &upcoming, 1, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60002);
    // A live sale's reservation needs Redis, and so does a keyed request.
    reserve(&b, &buyer, &live, 1, 1)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    reserve_keyed(&b, &buyer, &upcoming, "early")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
}

/// Redis loses everything mid-sale (`FLUSHALL`, on a Redis of the test's own): the sale answers
/// 503 for the grace, is then rebuilt from the records (what remains, what each buyer holds),
/// and sells exactly its stock.
#[tokio::test]
async fn a_sale_redis_forgot_sells_exactly_its_stock() {
    let redis = flashmart_redis::testing::LocalRedis::start();
    let (a, b) = two_instances_on(&redis).await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[10], 3).await;
    let mut buyers = Vec::new();
    for n in 0..8 {
        let (token, _) = a
            .customer(&format!("buyer{n}@example.com"), "buyer password")
            .await;
        buyers.push(token);
    }
    for token in &buyers[..2] {
        assert_eq!(
            reserve(&a, token, &sale, 1, 3).await.status,
            StatusCode::CREATED
        );
    }
    flush(&redis);
    // Found missing: marked lost, and 503 on every instance until the grace has passed (a
    // write of a reservation decided before the loss may still be on its way).
    for (app, token) in [(&b, &buyers[2]), (&a, &buyers[3])] {
        reserve(app, token, &sale, 1, 1)
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    }
    a.clock.advance(Duration::seconds(11));
    b.clock.advance(Duration::seconds(11));
    // Rebuilt from the records: the first buyers are at their limit still; the 4 units left
    // go, and no more.
    assert_eq!(
        reserve(&b, &buyers[0], &sale, 1, 1).await.status,
        StatusCode::CONFLICT
    );
    let mut sold = 0;
    for token in &buyers[2..] {
        if reserve(&b, token, &sale, 1, 1).await.status == StatusCode::CREATED {
            sold += 1;
        }
    }
    assert_eq!(sold, 4);
    let admin = admin(&a).await;
    let stats = stats(&a, &admin, &sale).await;
    assert_eq!(stats["reserved"], 10, "{stats}");
    assert_eq!(stats["remaining"], 0, "{stats}");
}

/// A reservation answered once is answered the same through any instance, and stored once.
#[tokio::test]
async fn an_idempotency_key_answers_the_same_on_every_instance() {
    let (a, b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    async fn send(
        app: &TestApp,
        buyer: &str,
        sale: &str,
        qty: i64,
    ) -> crate::support::TestResponse {
        app.post(&format!("/api/v1/flash-sales/{sale}/reservations"))
            .bearer(buyer)
            .header("idempotency-key", "the-key")
            .json(&serde_json::json!({"item_id": 1, "quantity": qty}))
            .send()
            .await
    }
    let first = send(&a, &buyer, &sale, 1).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let again = send(&b, &buyer, &sale, 1).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.data(), first.data());
    let other = send(&b, &buyer, &sale, 2).await;
    other.assert_error(StatusCode::UNPROCESSABLE_ENTITY, 60006);
    let admin = admin(&a).await;
    let stats = stats(&b, &admin, &sale).await;
    assert_eq!(stats["reserved"], 1, "{stats}");
}

/// A reservation Redis decided that no instance stored (the one that decided it died before
/// its write): the log writers leave it while it is young (its instance may still be storing
/// it), then one of them stores it, with its order, once, and the sale's numbers add up.
#[tokio::test]
async fn the_log_writer_stores_what_no_instance_stored() {
    let (a, b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    assert_eq!(
        reserve(&a, &buyer, &sale, 1, 1).await.status,
        StatusCode::CREATED
    );
    let user = a.user_id(&buyer).await;
    // Decided in Redis as an instance would, then the instance "dies": nothing is written.
    let sales = flashmart_redis::RedisSales::new(a.config.redis.key_prefix.clone());
    let url = a.config.redis.url.as_ref().unwrap().expose().to_owned();
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let buyer_id = user.as_uuid().to_string();
    let decided = sales
        .reserve(
            &mut conn,
            &flashmart_redis::ReserveRequest {
                sale: sale.parse().unwrap(),
                item: 1,
                buyer: &buyer_id,
                quantity: 1,
                idempotency_key: None,
                now: flashmart_app::Clock::now(&a.clock),
                buyer_ref: None,
                max_keys: 0,
            },
        )
        .await
        .unwrap();
    let flashmart_redis::Decision::Reserved { id, .. } = decided else {
        panic!("expected a reservation, got {decided:?}");
    };
    let admin = admin(&a).await;
    let before = stats(&a, &admin, &sale).await;
    assert_eq!(
        (before["reserved"].as_u64(), before["remaining"].as_u64()),
        (Some(1), Some(3))
    );
    // A writer leaves a young entry to the instance that logged it, which stores it and drops
    // it from the log a moment later, unless it died.
    assert_eq!(
        b.services.state.flash_sales.write_logged().await.unwrap()
            + a.services.state.flash_sales.write_logged().await.unwrap(),
        0,
        "young entries are left alone"
    );
    // Once it is 5 s old by Redis's clock, one of the writers stores it: both run until then
    // (each log entry goes to one of them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut written = 0;
    while written == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no writer stored the entry"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        written = b.services.state.flash_sales.write_logged().await.unwrap()
            + a.services.state.flash_sales.write_logged().await.unwrap();
    }
    assert_eq!(written, 1, "only the entry no request stored");
    assert_eq!(
        a.services.state.flash_sales.write_logged().await.unwrap()
            + b.services.state.flash_sales.write_logged().await.unwrap(),
        0,
        "acknowledged: not written again"
    );
    let after = stats(&b, &admin, &sale).await;
    assert_eq!(
        (after["reserved"].as_u64(), after["remaining"].as_u64()),
        (Some(2), Some(3))
    );
    let mine = a
        .get(&format!(
            "/api/v1/flash-sales/reservations/{}",
            id.as_uuid()
        ))
        .bearer(&buyer)
        .send()
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    let orders = a.get("/api/v1/orders").bearer(&buyer).send().await.data();
    assert_eq!(orders["total"], 2, "{orders}");
}

/// Reservations made before Redis lost the sale expire after it was rebuilt: their units come
/// back once, as if nothing had been lost.
#[tokio::test]
async fn reservations_from_before_a_loss_give_their_units_back() {
    let redis = flashmart_redis::testing::LocalRedis::start();
    let (a, b) = two_instances_on(&redis).await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[4], 2).await;
    let (early, _) = a.customer("early@example.com", "early password").await;
    assert_eq!(
        reserve(&a, &early, &sale, 1, 2).await.status,
        StatusCode::CREATED
    );
    flush(&redis);
    let (late, _) = b.customer("late@example.com", "late password").await;
    reserve(&b, &late, &sale, 1, 1)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    a.clock.advance(Duration::seconds(11));
    b.clock.advance(Duration::seconds(11));
    assert_eq!(
        reserve(&b, &late, &sale, 1, 2).await.status,
        StatusCode::CREATED
    );
    let admin = admin(&a).await;
    assert_eq!(stats(&a, &admin, &sale).await["remaining"], 0);
    // Both reservations run out; the one Redis never saw after the rebuild gives its 2 back too.
    a.clock.advance(Duration::minutes(20));
    b.clock.advance(Duration::minutes(20));
    assert_eq!(
        a.services.state.flash_sales.sweep_expired().await.unwrap(),
        2
    );
    let admin = a.login("admin@example.com", "admin password").await.0;
    let numbers = stats(&b, &admin, &sale).await;
    assert_eq!(numbers["remaining"], 4, "{numbers}");
    assert_eq!(numbers["reserved"], 0, "{numbers}");
    assert_eq!(
        b.services.state.flash_sales.sweep_expired().await.unwrap(),
        0
    );
}

/// `flash_sale.ack = "redis"`: a reservation is answered once Redis has decided and logged it,
/// while PostgreSQL cannot take it (its table locked), and once PostgreSQL can, every instance
/// reads it back at once, its order too, and it can be paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answered_by_redis_a_reservation_waits_for_no_database() {
    use sqlx::Connection as _;
    let (a, b) =
        two_instances_with(|c| c.flash_sale.ack = flashmart_server::config::AckChoice::Redis).await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    let url = a.config.database.url.as_ref().unwrap().expose().to_owned();
    let mut locker = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut held = locker.begin().await.unwrap();
    // Reads go on; no reservation can be written until the lock goes.
    sqlx::query("LOCK TABLE reservations IN EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let answered = reserve(&a, &buyer, &sale, 1, 1).await;
    assert_eq!(answered.status, StatusCode::CREATED, "{}", answered.text());
    let answered = answered.data();
    held.rollback().await.unwrap();

    let id = answered["id"].as_str().unwrap();
    let order = answered["order_id"].as_str().unwrap();
    // Many reads at once on the other instance, each finding it (they share catch-up passes).
    let reads = (0..16).map(|_| {
        b.get(&format!("/api/v1/orders/{order}"))
            .bearer(&buyer)
            .send()
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        assert_eq!(read.data()["status"], "pending_payment");
    }
    let mine = b
        .get(&format!("/api/v1/flash-sales/reservations/{id}"))
        .bearer(&buyer)
        .send()
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    assert_eq!(mine.data()["status"], "reserved");
    let pay = b
        .post(&format!("/api/v1/orders/{order}/payments"))
        .bearer(&buyer)
        .send()
        .await;
    assert_eq!(pay.status, StatusCode::CREATED, "{}", pay.text());
    let admin = admin(&a).await;
    let numbers = stats(&b, &admin, &sale).await;
    assert_eq!(
        (numbers["reserved"].as_u64(), numbers["remaining"].as_u64()),
        (Some(1), Some(4)),
        "{numbers}"
    );
}

/// The contest API in scaled mode: a caller-named user's 10 checkouts are 10 whichever instance
/// takes them, a code made on one instance is bought on the other (the same answer every time),
/// and a reservation past its hour cannot be bought.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_contest_api_sells_across_instances() {
    use axum::http::Method;
    let (a, b) = two_instances_with(|c| {
        c.compat.contest = true;
        c.flash_sale.ack = flashmart_server::config::AckChoice::Redis;
    })
    .await;
    let checkout = |app: &TestApp, item: u32| {
        app.compat(Method::POST, &format!("/checkout?user_id=u1&id={item}"))
            .send()
    };
    let mut codes = Vec::new();
    for item in 1..=10 {
        let on = if item % 2 == 0 { &a } else { &b };
        let res = checkout(on, item).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text());
        codes.push(res.json()["code"].as_str().unwrap().to_owned());
    }
    checkout(&a, 11)
        .await
        .assert_error(StatusCode::CONFLICT, 60005);
    checkout(&b, 12)
        .await
        .assert_error(StatusCode::CONFLICT, 60005);
    // Item 1 is u1's: another user finds it sold out on either instance.
    a.compat(Method::POST, "/checkout?user_id=u2&id=1")
        .send()
        .await
        .assert_error(StatusCode::CONFLICT, 60004);

    // Made on b, bought on a; again on b, the same answer.
    let buy = |app: &TestApp, code: &str| {
        app.compat(Method::POST, &format!("/purchase?code={code}"))
            .send()
    };
    let first = buy(&a, &codes[0]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = buy(&b, &codes[0]).await;
    assert_eq!(again.json(), first.json());
    assert_eq!(first.json()["user_id"], "u1");
    assert_eq!(first.json()["item"]["id"], 1);

    // An hour on: the rest expired and cannot be bought; the one bought stays bought.
    a.clock.advance(Duration::minutes(61));
    b.clock.advance(Duration::minutes(61));
    buy(&b, &codes[1])
        .await
        .assert_error(StatusCode::CONFLICT, 60009);
    assert_eq!(buy(&a, &codes[0]).await.json(), first.json());
}

/// Redis does not keep a sale for ever: once it has ended, every key of it is given an expiry a
/// day after its last reservation can have run out. Until then a key's answer is replayed; a
/// request without one is refused as ended without asking Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_sale_leaves_redis_in_its_own_time() {
    let (a, b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    let first = reserve_keyed(&a, &buyer, &sale, "before-the-end").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let ends_at = ends_at(&a, &sale).await;

    a.clock.advance(Duration::minutes(61));
    b.clock.advance(Duration::minutes(61));
    let (buyer, _) = b.login("buyer@example.com", "buyer password").await;
    let again = reserve_keyed(&b, &buyer, &sale, "before-the-end").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text());
    assert_eq!(again.data(), first.data());
    reserve(&b, &buyer, &sale, 1, 1)
        .await
        .assert_error(StatusCode::CONFLICT, 60003);
    reserve_keyed(&b, &buyer, &sale, "after-the-end")
        .await
        .assert_error(StatusCode::CONFLICT, 60003);

    // The reservation ran out with the sale: settled, it leaves its state in Redis, a key the
    // sale must not keep for ever either.
    assert_eq!(
        a.services.state.flash_sales.sweep_expired().await.unwrap(),
        1
    );
    a.services.state.flash_sales.write_logged().await.unwrap();
    let keys = sale_key_expiries(&a, &sale);
    // meta, stock, held, keys, log, reservations, key_counts
    assert_eq!(keys.len(), 7, "{keys:?}");
    for (key, at) in &keys {
        assert_eq!(*at, retired_at_ms(ends_at), "{key}");
    }
}

/// A sale that ended while no instance held it in memory (none ran at its end, or each had
/// dropped it before a log writer pass found it ended) is given its expiry in Redis all the
/// same, by the next pass of any instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_that_ended_unwatched_leaves_redis_too() {
    let (a, _b) = two_instances().await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    let reserved = reserve(&a, &buyer, &sale, 1, 1).await;
    assert_eq!(reserved.status, StatusCode::CREATED, "{}", reserved.text());
    let ends_at = ends_at(&a, &sale).await;

    // Hours after the end, and out of memory before any writer pass saw it ended.
    a.clock.advance(Duration::hours(3));
    a.services.state.flash_sales.housekeeping();
    let keys = sale_key_expiries(&a, &sale);
    assert!(keys.len() >= 3, "{keys:?}");
    for (key, at) in &keys {
        assert_eq!(*at, -1, "{key} has an expiry already");
    }

    a.services.state.flash_sales.write_logged().await.unwrap();
    for (key, at) in sale_key_expiries(&a, &sale) {
        assert_eq!(at, retired_at_ms(ends_at), "{key}");
    }
    let url = a.config.redis.url.as_ref().unwrap().expose().to_owned();
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let unretired: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}sales:unretired", a.config.redis.key_prefix))
        .query(&mut conn)
        .unwrap();
    assert!(!unretired.contains(&sale), "{unretired:?}");
}

/// When a sale ends, as the API tells it.
async fn ends_at(app: &TestApp, sale: &str) -> time::OffsetDateTime {
    let ends_at = app
        .get(&format!("/api/v1/flash-sales/{sale}"))
        .send()
        .await
        .data()["ends_at"]
        .as_str()
        .unwrap()
        .to_owned();
    time::OffsetDateTime::parse(&ends_at, &time::format_description::well_known::Rfc3339).unwrap()
}

/// A sale's keys in `app`'s Redis, each with when it expires (`PEXPIRETIME`, unix ms; -1:
/// never).
fn sale_key_expiries(app: &TestApp, sale: &str) -> Vec<(String, i64)> {
    let url = app.config.redis.url.as_ref().unwrap().expose().to_owned();
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{{sale:{sale}}}*", app.config.redis.key_prefix))
        .query(&mut conn)
        .unwrap();
    keys.into_iter()
        .map(|key| {
            let at = redis::cmd("PEXPIRETIME")
                .arg(&key)
                .query(&mut conn)
                .unwrap();
            (key, at)
        })
        .collect()
}

/// When the keys of a sale that ended at `ends_at` expire: a day after its last reservation
/// (600 s in these tests) can have run out.
fn retired_at_ms(ends_at: time::OffsetDateTime) -> i64 {
    let at = ends_at + Duration::seconds(600) + Duration::days(1);
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// `redis.cluster_nodes`: two instances on a Redis Cluster of three masters (the test's own)
/// report Redis ready and sell one sale's stock exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_on_a_redis_cluster_sell_exactly_the_stock() {
    let cluster = flashmart_redis::testing::LocalRedis::start_cluster();
    let (a, b) = two_instances_on(&cluster).await;
    assert!(a.config.redis.url.is_none());
    let ready = b.get("/readyz").send().await.data();
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[7], 1).await;
    let sale = &sale;
    let mut tasks = Vec::new();
    for n in 0..12 {
        let on = if n % 2 == 0 { &a } else { &b };
        let (token, _) = on
            .customer(&format!("buyer{n}@example.com"), "buyer password")
            .await;
        tasks.push(async move { reserve(on, &token, sale, 1, 1).await.status });
    }
    let answers = futures_util::future::join_all(tasks).await;
    let created = answers
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, 7, "{answers:?}");
    let admin = admin(&a).await;
    let numbers = stats(&b, &admin, sale).await;
    assert_eq!(
        (numbers["reserved"].as_u64(), numbers["remaining"].as_u64()),
        (Some(7), Some(0)),
        "{numbers}"
    );
}

/// A sale Redis lost is found by the instances' own look at its stock (every publish of live
/// numbers, and so at start), marked lost, and rebuilt once the grace has passed, before any
/// buyer asks.
#[tokio::test]
async fn a_lost_sale_is_rebuilt_without_waiting_for_a_buyer() {
    let redis = flashmart_redis::testing::LocalRedis::start();
    let (a, b) = two_instances_on(&redis).await;
    let op = operator(&a).await;
    let sale = live_sale(&a, &op, &[5], 2).await;
    let (buyer, _) = a.customer("buyer@example.com", "buyer password").await;
    assert_eq!(
        reserve(&a, &buyer, &sale, 1, 2).await.status,
        StatusCode::CREATED
    );
    flush(&redis);
    let port = redis.ports()[0];
    let meta = format!("{}{{sale:{sale}}}:meta", a.config.redis.key_prefix);
    let starts = || flashmart_redis::testing::redis_cli(port, &["hexists", &meta, "starts_at"]);

    a.services.state.flash_sales.publish_all().await;
    assert_eq!(starts().trim(), "0", "not rebuilt during the grace");
    let (other, _) = b.customer("other@example.com", "other password").await;
    reserve(&b, &other, &sale, 1, 1)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);

    a.clock.advance(Duration::seconds(11));
    b.clock.advance(Duration::seconds(11));
    b.services.state.flash_sales.publish_all().await;
    assert_eq!(starts().trim(), "1", "rebuilt by the look at its stock");
    // From the records: 2 held by the first buyer, 3 left.
    let (other, _) = b.login("other@example.com", "other password").await;
    assert_eq!(
        reserve(&b, &other, &sale, 1, 2).await.status,
        StatusCode::CREATED
    );
    let admin = admin(&a).await;
    assert_eq!(stats(&a, &admin, &sale).await["remaining"], 1);
}

/// Every sale key in the test's own Redis on `port`.
fn sale_keys(port: u16) -> Vec<String> {
    let listed = flashmart_redis::testing::redis_cli(port, &["--scan", "--pattern", "*{sale:*"]);
    let mut keys: Vec<String> = listed.lines().map(str::to_owned).collect();
    keys.sort();
    keys
}

/// A new sale is in Redis before the records show it. The other way round, an instance that
/// found it in the records first (its log writer's look at live sales, a buyer's request, a
/// live-events subscriber) took it for a sale Redis had lost and kept it off sale for the
/// rebuild grace: every reservation answered 503 for ten seconds. Here the records' table of
/// sales is held by another session while the sale is made, and Redis is looked at while the
/// creation waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sale_is_in_redis_before_the_records_show_it() {
    use sqlx::Connection as _;
    let redis = flashmart_redis::testing::LocalRedis::start();
    let port = redis.ports()[0];
    let (a, b) = two_instances_on(&redis).await;
    let op = operator(&a).await;
    let url = a.config.database.url.as_ref().unwrap().expose().to_owned();
    // The instances' connections carry the test schema's name.
    let app_name = url
        .split("application_name=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap()
        .to_owned();
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE flash_sales IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(sale_keys(port), Vec::<String>::new());

    let look = async {
        let mut watcher = sqlx::PgConnection::connect(&url).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO flash_sales %'",
            )
            .bind(&app_name)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sale's INSERT never waited for the table"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The creation waits for the records: Redis has the sale already, window and all.
        let keys = sale_keys(port);
        let meta = keys
            .iter()
            .find(|k| k.ends_with(":meta"))
            .unwrap_or_else(|| panic!("no sale in Redis while its INSERT waits: {keys:?}"))
            .clone();
        let starts = flashmart_redis::testing::redis_cli(port, &["hexists", &meta, "starts_at"]);
        assert_eq!(starts.trim(), "1", "{meta}");
        sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
        meta
    };
    let (sale, meta) = tokio::join!(live_sale(&a, &op, &[5], 2), look);
    assert!(meta.contains(&sale), "{meta} is not the key of sale {sale}");
    // The other instance sells it at once.
    let (buyer, _) = b.customer("buyer@example.com", "buyer password").await;
    assert_eq!(
        reserve(&b, &buyer, &sale, 1, 2).await.status,
        StatusCode::CREATED
    );
}

/// A sale the records refuse (an item takes more of its product's stock than there is) leaves
/// nothing in Redis, where it was loaded first.
#[tokio::test]
async fn a_sale_the_records_refuse_leaves_nothing_in_redis() {
    let redis = flashmart_redis::testing::LocalRedis::start();
    let port = redis.ports()[0];
    let (a, _b) = two_instances_on(&redis).await;
    let op = operator(&a).await;
    let product = crate::catalog::product_id(
        &a,
        &op,
        serde_json::json!({"name": "Drop sneaker", "price_cents": 20000, "stock": 10}),
    )
    .await;
    let item = serde_json::json!(
        {"name": "Drop sneaker", "product_id": product, "price_cents": 9900, "stock": 11}
    );
    post_live_sale(&a, &op, 2, &[item])
        .await
        .assert_error(StatusCode::CONFLICT, 60010);
    assert_eq!(sale_keys(port), Vec::<String>::new());
}

/// With Redis away a sale cannot be made: it would go into the records with nothing to sell it
/// from. The answer is 503 and the records keep nothing of it. Nor does a request wait for
/// Redis for long: the connection gives up within seconds (its library's defaults retried for
/// minutes, and every rate-limited request waited as long). The instances' request timeout is
/// raised far above the test's bound, so that no answer here is the timeout's.
#[tokio::test]
async fn a_sale_made_while_redis_is_away_is_refused_and_not_stored() {
    made_while_away(LocalRedis::start(), LocalRedis::stop).await;
}

/// The same with a Redis that hangs: connected, answering nothing.
#[tokio::test]
async fn a_sale_made_while_redis_hangs_is_refused_and_not_stored() {
    made_while_away(LocalRedis::start(), |r| r.freeze()).await;
}

/// The same with a Redis Cluster, whose client has retries of its own.
#[tokio::test]
async fn a_sale_made_while_the_redis_cluster_is_away_is_refused_and_not_stored() {
    made_while_away(LocalRedis::start_cluster(), LocalRedis::stop).await;
}

async fn made_while_away(mut redis: LocalRedis, away: impl FnOnce(&mut LocalRedis)) {
    let urls = redis.urls();
    let (a, b) = two_instances_with(|c| {
        if urls.len() == 1 {
            c.redis.url = Some(Secret::new(urls[0].clone()));
        } else {
            c.redis.url = None;
            c.redis.cluster_nodes = urls.clone();
        }
        c.http.request_timeout_secs = 600;
    })
    .await;
    let op = operator(&a).await;
    away(&mut redis);
    let bound = std::time::Duration::from_secs(60);
    let item = serde_json::json!({"name": "Lamp", "price_cents": 1500, "stock": 3});
    let items = [item];
    let made = post_live_sale(&a, &op, 2, &items);
    tokio::time::timeout(bound, made)
        .await
        .expect("a sale made with Redis away is answered within a minute")
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, 503);
    // Neither instance finds it (the list is read from the records; its rate-limit check
    // cannot reach Redis and lets the request through).
    for on in [&a, &b] {
        let listed = on.get("/api/v1/admin/flash-sales").bearer(&op).send();
        let sales = tokio::time::timeout(bound, listed)
            .await
            .expect("a list with Redis away is answered within a minute")
            .data();
        assert_eq!(sales["total"], 0, "{sales}");
    }
    // Gone for good, so that the instances' teardown is not kept waiting by a hanging one.
    redis.stop();
}
