//! The crash test: the server runs as a child process under concurrent reservations and is killed
//! with SIGKILL at a random moment, again and again. After each restart every reservation that was
//! answered 2xx must be stored exactly once, the counts must add up, and nothing may be oversold.
//!
//! It runs on both record stores: the embedded SQLite file, and PostgreSQL (a schema of its own),
//! where the group commit is one PostgreSQL transaction per batch; and in scaled mode, with
//! reservations decided in Redis and answered after PostgreSQL has them or before.
//!
//! CI runs 5 kills of each; `FLASHMART_CRASH_KILLS=25 cargo test -p flashmart-server --test it
//! crash -- --nocapture` runs a longer one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashmart_stampede::api::{Admin, Buyer};
use flashmart_stampede::http::{Conn, Target};
use hyper::StatusCode;
use serde_json::json;

use crate::support::Server;

// Demand (2,000 buyers x 3) far above what the rounds reserve, so every round kills a server
// that is busy reserving, not refusing.
const STOCK: u64 = 4000;
const LIMIT: u64 = 3;
const BUYERS: usize = 2000;

/// Where the server under test keeps things.
#[derive(Debug, Clone, Copy)]
enum Mode<'a> {
    Embedded,
    /// Records in PostgreSQL (this URL), the engine in process.
    Postgres(&'a str),
    /// Records in PostgreSQL, reservations decided in Redis under a key prefix, answered
    /// after they are stored (`ack`: "database") or once Redis has them ("redis").
    Scaled {
        database_url: &'a str,
        redis_url: &'a str,
        prefix: &'a str,
        ack: &'a str,
    },
}

impl Mode<'_> {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "sqlite",
            Self::Postgres(_) => "postgres",
            Self::Scaled { ack: "redis", .. } => "postgres+redis, ack=redis",
            Self::Scaled { .. } => "postgres+redis",
        }
    }
}

/// The server's environment.
fn envs(mode: Mode<'_>) -> Vec<(&'static str, &str)> {
    let mut envs = vec![
        ("FLASHMART__LOADTEST__ENABLED", "true"),
        ("FLASHMART__RATE_LIMIT__ENABLED", "false"),
    ];
    match mode {
        Mode::Embedded => {}
        Mode::Postgres(url) => envs.push(("FLASHMART__DATABASE__URL", url)),
        Mode::Scaled {
            database_url,
            redis_url,
            prefix,
            ack,
        } => envs.extend(
            [
                ("FLASHMART__DATABASE__URL", database_url),
                ("FLASHMART__REDIS__URL", redis_url),
                ("FLASHMART__REDIS__KEY_PREFIX", prefix),
                ("FLASHMART__FLASH_SALE__ACK", ack),
            ]
            .into_iter()
            .chain(crate::support::SHARED_SECRETS),
        ),
    }
    envs
}

/// An accepted reservation as the client was told: (id, buyer index, quantity).
type Accepted = (String, usize, u64);

/// Sends reservations from `workers` connections until the server goes away.
async fn hammer(
    base: String,
    sale: String,
    buyers: Arc<Vec<Buyer>>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    workers: usize,
) {
    let target = Target::parse(&base).await.unwrap();
    let path = format!("/api/v1/flash-sales/{sale}/reservations");
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (target, path) = (target.clone(), path.clone());
        let (buyers, accepted) = (Arc::clone(&buyers), Arc::clone(&accepted));
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = Conn::open(&target).await else {
                return;
            };
            for i in 0.. {
                let buyer = rand::random_range(0..buyers.len());
                let quantity = 1 + (i % 2) as u64;
                let body = bytes::Bytes::from(
                    json!({"item_id": 1 + (i % 2), "quantity": quantity}).to_string(),
                );
                let answer = conn
                    .send(
                        &hyper::Method::POST,
                        &path,
                        Some(&buyers[buyer].token),
                        Some(body),
                        None,
                    )
                    .await;
                match answer {
                    Ok(a) if a.status == StatusCode::CREATED => {
                        let id = a.data().unwrap()["id"].as_str().unwrap().to_owned();
                        accepted.lock().unwrap().push((id, buyer, quantity));
                    }
                    Ok(a) => assert!(
                        a.status == StatusCode::CONFLICT,
                        "unexpected answer {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    ),
                    // The server was killed.
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Checks the invariants from the restarted server's view; returns how many reservations are
/// stored without their answer having reached the client (in flight at the kill).
async fn verify(
    server: &Server,
    sale: &str,
    accepted: &[Accepted],
    buyers: &[Buyer],
    mode: Mode<'_>,
) -> usize {
    let target = Target::parse(&server.base).await.unwrap();
    let mut admin = Admin::login(&target, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await
        .unwrap();
    let mut stats = admin.stats(sale).await.unwrap();
    if let Mode::Scaled { .. } = mode {
        // Redis decided some reservations whose write died with the server: the restarted
        // server's log writer stores them (taking over the dead writer's entries after 5 s).
        // Until then their units are held in Redis and in no record: never on sale twice.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stats.reserved + stats.sold + stats.remaining < STOCK {
            assert!(
                stats.reserved + stats.sold + stats.remaining <= STOCK,
                "more on sale than the stock: {stats:?}"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the log writer did not store what Redis decided: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            stats = admin.stats(sale).await.unwrap();
        }
    }
    let stored = admin.reservations(sale).await.unwrap();
    let held = stats.reserved + stats.sold;
    assert_eq!(stats.stock, STOCK);
    assert!(held <= STOCK, "oversold: {stats:?}");
    assert_eq!(
        held + stats.remaining,
        STOCK,
        "counts add up after restart: {stats:?}"
    );

    let mut seen: HashMap<&str, u32> = HashMap::new();
    for r in &stored {
        *seen.entry(r.id.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "a reservation stored twice");
    for (id, _, _) in accepted {
        assert_eq!(
            seen.get(id.as_str()),
            Some(&1),
            "answered 2xx but lost: {id}"
        );
    }
    let stored_units: u64 = stored.iter().map(|r| u64::from(r.quantity)).sum();
    assert_eq!(stored_units, held, "stored reservations are what is held");
    let accepted_units: u64 = accepted.iter().map(|a| a.2).sum();
    assert!(accepted_units <= held, "more answered than held");

    let ids: HashMap<&str, usize> = buyers
        .iter()
        .enumerate()
        .map(|(i, b)| (b.user_id.as_str(), i))
        .collect();
    let mut per_buyer: HashMap<usize, u64> = HashMap::new();
    for r in &stored {
        *per_buyer.entry(ids[r.buyer_id.as_str()]).or_default() += u64::from(r.quantity);
    }
    assert!(
        per_buyer.values().all(|q| *q <= LIMIT),
        "a buyer over the limit"
    );
    stored.len() - accepted.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_answered_survive_sigkill() {
    crash_rounds(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_answered_survive_sigkill_on_postgres() {
    let schema = flashmart_postgres::testing::TestSchema::create().await;
    crash_rounds(Mode::Postgres(&schema.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_answered_survive_sigkill_in_scaled_mode() {
    scaled_crash_rounds("database").await;
}

/// Answered before PostgreSQL has them: what a killed server had not written is written from
/// Redis's logs after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_answered_by_redis_survive_sigkill() {
    scaled_crash_rounds("redis").await;
}

async fn scaled_crash_rounds(ack: &str) {
    let stores = crate::support::ScaledStores::create().await;
    let (schema, redis_url, prefix) = (&stores.schema, &stores.redis_url, &stores.prefix);
    crash_rounds(Mode::Scaled {
        database_url: &schema.url(),
        redis_url,
        prefix,
        ack,
    })
    .await;
}

async fn crash_rounds(mode: Mode<'_>) {
    let kills: usize = std::env::var("FLASHMART_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["demo"], &envs(mode));

    let target = Target::parse(&server.base).await.unwrap();
    let mut admin = Admin::login(&target, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await
        .unwrap();
    let buyers = Arc::new(admin.mint_buyers(BUYERS).await.unwrap());
    let now = time::OffsetDateTime::now_utc();
    let fmt = &time::format_description::well_known::Rfc3339;
    let sale = admin
        .create_sale(&json!({
            "name": "crash test",
            "starts_at": (now - time::Duration::minutes(1)).format(fmt).unwrap(),
            "ends_at": (now + time::Duration::hours(1)).format(fmt).unwrap(),
            "per_user_limit": LIMIT,
            "reservation_ttl_secs": 3600,
            "items": [
                {"name": "A", "price_cents": 100, "stock": STOCK / 2},
                {"name": "B", "price_cents": 100, "stock": STOCK / 2},
            ],
        }))
        .await
        .unwrap();
    let sale = sale["id"].as_str().unwrap().to_owned();
    drop(admin);

    let accepted = Arc::new(Mutex::new(Vec::new()));
    for round in 0..kills {
        let load = tokio::spawn(hammer(
            server.base.clone(),
            sale.clone(),
            Arc::clone(&buyers),
            Arc::clone(&accepted),
            16,
        ));
        // A random moment: the load is running, commits are in flight.
        let delay = rand::random_range(20..250);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        load.await.unwrap();
        server = Server::start(dir.path(), &["serve"], &envs(mode));
        let answered = accepted.lock().unwrap().clone();
        let unanswered = verify(&server, &sale, &answered, &buyers, mode).await;
        eprintln!(
            "{} kill {}/{kills} after {delay} ms: {} reservations answered so far, all stored \
             once; {unanswered} stored whose answer was lost in the kill",
            mode.name(),
            round + 1,
            answered.len()
        );
    }
    let answered = accepted.lock().unwrap().clone();
    assert!(!answered.is_empty(), "the load reserved something");
    let distinct: HashSet<&str> = answered.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(distinct.len(), answered.len());
    server.terminate();
}
