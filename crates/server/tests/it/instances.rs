//! Several `flashmart` processes on one PostgreSQL and one Redis, each running the roles it was
//! given (`serve --role api,worker,scheduler`).

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::flash_sales::at;
use crate::support::{SHARED_SECRETS, ScaledStores, Server};

/// The environment of a scaled instance on `stores`.
fn scaled_env(stores: &ScaledStores) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        ("FLASHMART__DATABASE__URL", stores.schema.url()),
        ("FLASHMART__REDIS__URL", stores.redis_url.clone()),
        ("FLASHMART__REDIS__KEY_PREFIX", stores.prefix.clone()),
    ];
    envs.extend(SHARED_SECRETS.map(|(k, v)| (k, v.to_owned())));
    envs
}

fn borrowed<'a>(envs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn get(url: String) -> (u16, String) {
    let res = reqwest::get(url).await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_answers_health_only_api_serves_the_api() {
    let stores = ScaledStores::create().await;
    let envs = scaled_env(&stores);
    let dir = tempfile::tempdir().unwrap();
    let worker = Server::start(dir.path(), &["serve", "--role", "worker"], &borrowed(&envs));
    // A second instance on the same data directory: scaled, it holds no records.
    let api = Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs));

    let (status, _) = get(format!("{}/healthz", worker.base)).await;
    assert_eq!(status, 200);
    let (status, body) = get(format!("{}/readyz", worker.base)).await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["data"]["checks"]["postgres"], "ok", "{body}");
    assert_eq!(ready["data"]["checks"]["redis"], "ok", "{body}");
    let names = worker_names(&body);
    for name in ["log_writer", "refund_worker", "sandbox_resender"] {
        assert!(names.contains(&name.to_owned()), "{name} not in {names:?}");
    }
    for name in ["scheduler", "events_publisher", "log_forgetter"] {
        assert!(!names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    let (status, body) = get(format!("{}/metrics", worker.base)).await;
    assert_eq!(status, 200);
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
    for path in ["/api/v1/products", "/api/v1/flash-sales", "/openapi.json"] {
        let (status, body) = get(format!("{}{path}", worker.base)).await;
        assert_eq!(status, 404, "{path} on a worker: {body}");
    }

    let (status, body) = get(format!("{}/api/v1/products", api.base)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(format!("{}/readyz", api.base)).await;
    assert_eq!(status, 200, "{body}");
    let names = worker_names(&body);
    for name in ["events_publisher", "log_forgetter", "group_commit"] {
        assert!(names.contains(&name.to_owned()), "{name} not in {names:?}");
    }
    for name in ["log_writer", "scheduler", "reservation_sweeper"] {
        assert!(!names.contains(&name.to_owned()), "{name} in {names:?}");
    }
}

/// The names of the background work a `/readyz` answer lists.
fn worker_names(body: &str) -> Vec<String> {
    let ready: Value = serde_json::from_str(body).unwrap();
    ready["data"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_split_only_in_scaled_mode_and_scaled_mode_needs_shared_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .args(args)
            .current_dir(dir.path())
            .env("FLASHMART__HTTP__ADDR", "127.0.0.1:0")
            .env("FLASHMART__LOG__LEVEL", "warn")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "it started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&["serve", "--role", "api"], &[]);
    assert!(
        stderr.contains("--role api: without the shared engine every role runs in one process"),
        "{stderr}"
    );
    let stderr = run(&["serve", "--role", "cron"], &[]);
    assert!(stderr.contains("unknown role \"cron\""), "{stderr}");

    let stores = ScaledStores::create().await;
    let url = stores.schema.url();
    let scaled = [
        ("FLASHMART__DATABASE__URL", url.as_str()),
        ("FLASHMART__REDIS__URL", stores.redis_url.as_str()),
        ("FLASHMART__REDIS__KEY_PREFIX", stores.prefix.as_str()),
    ];
    let stderr = run(&["serve"], &scaled);
    assert!(
        stderr.contains("auth.jwt_secret is not set: scaled mode"),
        "{stderr}"
    );
    let mut with_jwt = scaled.to_vec();
    with_jwt.push(SHARED_SECRETS[0]);
    let stderr = run(&["serve"], &with_jwt);
    assert!(
        stderr.contains("payments.sandbox_secret is not set: scaled mode"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data/jwt_secret").exists(),
        "no key generated"
    );
}

/// The process id in the scheduler lease's holder name (`host/pid/nonce`), when it is held.
fn lease_holder(conn: &mut redis::Connection, key: &str) -> Option<u32> {
    let holder: Option<String> = redis::cmd("GET").arg(key).query(conn).unwrap();
    holder.and_then(|h| h.split('/').nth(1).and_then(|pid| pid.parse().ok()))
}

/// Asks `probe` every 20 ms until it answers, for at most `limit`.
async fn poll<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(started.elapsed() < limit, "nothing within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds an hourly schedule straight to the records (not through the API, which would make
/// its current sale at once): only a scheduler can make that sale.
async fn add_schedule(pool: &sqlx::PgPool, name: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO flash_sale_schedules (id, name, recurrence, item_count, price_cents, \
         currency, per_user_limit, reservation_ttl_secs, duration_secs, active, created_at) \
         VALUES ($1, $2, 'hourly', 3, 100, 'USD', 1, 600, 3600, true, now())",
    )
    .bind(id)
    .bind(name)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn sales_of(pool: &sqlx::PgPool, schedule: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM flash_sales WHERE schedule_id = $1")
        .bind(schedule)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn made_a_sale(server: &mut Server) -> bool {
    server
        .lines_so_far()
        .iter()
        .any(|l| l.contains("scheduled sale created"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_scheduler_at_a_time_and_another_takes_over_when_it_dies() {
    const LEASE_MS: u64 = 1_500;
    let stores = ScaledStores::create().await;
    let mut envs = scaled_env(&stores);
    envs.extend([
        ("FLASHMART__SCHEDULER__LEASE_MS", LEASE_MS.to_string()),
        ("FLASHMART__FLASH_SALE__SCHEDULE_INTERVAL_MS", "100".into()),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::PgPool::connect_with(stores.schema.options())
        .await
        .unwrap();
    let mut conn = redis::Client::open(stores.redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let key = format!("{}lease:scheduler", stores.prefix);

    let a = Server::start(
        dir.path(),
        &["serve", "--role", "scheduler"],
        &borrowed(&envs),
    );
    let b = Server::start(
        dir.path(),
        &["serve", "--role", "scheduler"],
        &borrowed(&envs),
    );
    let leader = poll(Duration::from_secs(30), || {
        std::future::ready(lease_holder(&mut conn, &key))
    })
    .await;
    assert!(leader == a.pid() || leader == b.pid(), "held by {leader}");
    let (mut leader, mut standby) = if leader == a.pid() { (a, b) } else { (b, a) };
    let metric = |server: &Server| {
        let url = format!("{}/metrics", server.base);
        async move {
            let (_, body) = get(url).await;
            body.lines()
                .find_map(|l| l.strip_prefix("scheduler_leader "))
                .map(str::to_owned)
        }
    };
    assert_eq!(metric(&leader).await.as_deref(), Some("1"));
    let standby_metric = poll(Duration::from_secs(10), || metric(&standby)).await;
    assert_eq!(standby_metric, "0");

    // A schedule's sale is made once, by the leader.
    // (Waited for by name: within minutes of the hour, a schedule's next sale is made too.)
    let made = |name: &'static str| {
        move |v: &serde_json::Value| {
            v["message"] == "scheduled sale created" && v["schedule"] == name
        }
    };
    // One sale per slot: this hour's, and the next hour's when the hour is near its end.
    let slots = |at: time::OffsetDateTime| {
        let next =
            flashmart_domain::flash_sale::Recurrence::Hourly.slot_start(at) + time::Duration::HOUR;
        if next - at <= flashmart_app::flash_sale::SCHEDULE_LEAD {
            1..=2
        } else {
            1..=1
        }
    };
    let first = add_schedule(&pool, "first").await;
    leader.wait_for(made("first"));
    let made_first = sales_of(&pool, first).await;
    assert!(slots(time::OffsetDateTime::now_utc()).contains(&made_first));
    assert!(!made_a_sale(&mut standby), "the standby made a sale");

    // The leader dies without a word; the standby takes the lease once it runs out.
    let killed_at = Instant::now();
    let dead = leader.pid();
    leader.kill();
    let survivor = standby.pid();
    poll(Duration::from_secs(30), || {
        std::future::ready((lease_holder(&mut conn, &key) == Some(survivor)).then_some(()))
    })
    .await;
    let took = killed_at.elapsed();
    eprintln!("the standby took the lease over {took:?} after the leader was killed");
    // Within the lease and one renewal period (a third of it), with a second of slack for a
    // slow machine.
    assert!(
        took < Duration::from_millis(LEASE_MS + LEASE_MS / 3 + 1_000),
        "took {took:?}"
    );
    assert_ne!(dead, survivor);
    standby.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("this instance holds the scheduler lease"))
    });

    // The new leader does the schedules' work, still once per slot.
    let second = add_schedule(&pool, "second").await;
    standby.wait_for(made("second"));
    let now = time::OffsetDateTime::now_utc();
    assert!(slots(now).contains(&sales_of(&pool, second).await));
    assert!(sales_of(&pool, first).await >= made_first);
    assert!(slots(now).contains(&sales_of(&pool, first).await));
    assert_eq!(metric(&standby).await.as_deref(), Some("1"));

    // A clean stop gives the lease up at once.
    assert!(standby.terminate().success());
    assert_eq!(lease_holder(&mut conn, &key), None);
}

/// Registers and signs in `email` on `base`; the access token.
async fn sign_in(client: &reqwest::Client, base: &str, email: &str) -> String {
    let res = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({"email": email, "password": "a long enough password", "name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = crate::support::login_at(client, base, email, "a long enough password").await;
    res["data"]["access_token"].as_str().unwrap().to_owned()
}

async fn me(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    client
        .get(format!("{base}/api/v1/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn listening_for_revocations(v: &Value) -> bool {
    v["message"] == "listening for news of revoked sessions"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_instance_is_refused_on_the_others_within_a_second() {
    let stores = ScaledStores::create().await;
    let envs = scaled_env(&stores);
    let dir = tempfile::tempdir().unwrap();
    let mut a = Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs));
    let mut b = Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs));
    a.wait_for(listening_for_revocations);
    b.wait_for(listening_for_revocations);
    let client = reqwest::Client::new();
    let token = sign_in(&client, &a.base, "ada@example.com").await;
    assert_eq!(
        me(&client, &b.base, &token).await,
        200,
        "B accepts A's token"
    );

    let res = client
        .post(format!("{}/api/v1/auth/logout", a.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let logged_out = Instant::now();
    poll(Duration::from_secs(5), || {
        let (client, base, token) = (client.clone(), b.base.clone(), token.clone());
        async move { (me(&client, &base, &token).await == 401).then_some(()) }
    })
    .await;
    let took = logged_out.elapsed();
    eprintln!("B refused the token {took:?} after the logout on A");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(me(&client, &a.base, &token).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_budget_is_the_same_on_every_instance() {
    let stores = ScaledStores::create().await;
    let mut envs = scaled_env(&stores);
    envs.extend([
        (
            "FLASHMART__RATE_LIMIT__PUBLIC__PER_USER_PER_MINUTE",
            "5".to_owned(),
        ),
        (
            "FLASHMART__RATE_LIMIT__PUBLIC__PER_IP_PER_MINUTE",
            "0".to_owned(),
        ),
        (
            "FLASHMART__RATE_LIMIT__LOGIN_PER_EMAIL_IP_PER_MINUTE",
            "3".to_owned(),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let instances: Vec<Server> = (0..3)
        .map(|_| Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs)))
        .collect();
    let client = reqwest::Client::new();
    let token = sign_in(&client, &instances[0].base, "ada@example.com").await;

    // Twelve requests round the three instances: the user's five a minute, no more.
    let mut answers = Vec::new();
    for i in 0..12 {
        let res = client
            .get(format!("{}/api/v1/users/me", instances[i % 3].base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
        }
        answers.push(res.status().as_u16());
    }
    assert_eq!(
        answers.iter().filter(|s| **s == 200).count(),
        5,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 429).count(),
        7,
        "{answers:?}"
    );
    // Another user has a budget of its own.
    let other = sign_in(&client, &instances[1].base, "grace@example.com").await;
    assert_eq!(me(&client, &instances[2].base, &other).await, 200);

    // Three wrong passwords for one account from one address, each on another instance: the
    // fourth attempt is refused wherever it goes, even with the right password.
    for (i, server) in instances.iter().enumerate() {
        let res = client
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&serde_json::json!({"email": "ada@example.com", "password": "not the password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "attempt {i}");
    }
    for server in &instances {
        let res = client
            .post(format!("{}/api/v1/auth/login", server.base))
            .json(&serde_json::json!({"email": "ada@example.com", "password": "a long enough password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
    }
}

/// `ops@example.com`, an operator, made with `flashmart admin create-user` on `envs`' stores.
fn create_operator(dir: &std::path::Path, envs: &[(&'static str, String)]) {
    let created = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["admin", "create-user", "--email", "ops@example.com"])
        .args(["--password", "an operator password", "--role", "operator"])
        .current_dir(dir)
        .envs(borrowed(envs))
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
}

/// The `remaining` of each `snapshot` event a stream has sent so far, read until one matches
/// `want` (bounded by the test's poll).
async fn next_remaining(res: &mut reqwest::Response, buffer: &mut String) -> u64 {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                let data: Value = serde_json::from_str(data.trim()).unwrap();
                return data["remaining"].as_u64().unwrap();
            }
            continue;
        }
        let chunk = res.chunk().await.unwrap().expect("the stream ended");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instances_event_stream_shows_the_same_stock_within_a_second() {
    let stores = ScaledStores::create().await;
    let envs = scaled_env(&stores);
    let dir = tempfile::tempdir().unwrap();
    create_operator(dir.path(), &envs);
    let a = Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs));
    let b = Server::start(dir.path(), &["serve", "--role", "api"], &borrowed(&envs));
    let _work = Server::start(
        dir.path(),
        &["serve", "--role", "worker,scheduler"],
        &borrowed(&envs),
    );
    let client = reqwest::Client::new();
    let login: Value = a
        .login(&client, "ops@example.com", "an operator password")
        .await;
    let operator = login["data"]["access_token"].as_str().unwrap().to_owned();
    let now = time::OffsetDateTime::now_utc();
    // Made on A after B started: B has never heard of it.
    let res: Value = client
        .post(format!("{}/api/v1/admin/flash-sales", a.base))
        .bearer_auth(&operator)
        .json(&serde_json::json!({
            "name": "Drop", "starts_at": at(now - time::Duration::minutes(1)),
            "ends_at": at(now + time::Duration::hours(1)), "per_user_limit": 5,
            "reservation_ttl_secs": 600,
            "items": [{"name": "Sneaker", "price_cents": 12900, "stock": 5}],
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sale = res["data"]["id"].as_str().unwrap().to_owned();

    let mut stream = client
        .get(format!("{}/api/v1/flash-sales/{sale}/events", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    assert_eq!(next_remaining(&mut stream, &mut buffer).await, 5);

    let buyer = sign_in(&client, &a.base, "ada@example.com").await;
    let res = client
        .post(format!("{}/api/v1/flash-sales/{sale}/reservations", a.base))
        .bearer_auth(&buyer)
        .json(&serde_json::json!({"item_id": 1, "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let reserved = Instant::now();
    let remaining = tokio::time::timeout(
        Duration::from_secs(5),
        next_remaining(&mut stream, &mut buffer),
    )
    .await
    .expect("no event within 5 s");
    let took = reserved.elapsed();
    eprintln!("B's stream showed the reservation made on A {took:?} after its answer");
    assert_eq!(remaining, 3);
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // And B's own view of the sale says the same.
    let (status, body) = get(format!("{}/api/v1/flash-sales/{sale}", b.base)).await;
    assert_eq!(status, 200);
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["data"]["remaining"], 3, "{body}");
}

/// Two instances with data directories of their own and one `uploads.dir`: an image uploaded
/// through one is served, byte for byte, by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_uploaded_through_one_instance_is_served_by_another() {
    use base64::Engine as _;
    let stores = ScaledStores::create().await;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared-uploads");
    let mut envs = scaled_env(&stores);
    envs.push((
        "FLASHMART__UPLOADS__DIR",
        shared.to_string_lossy().into_owned(),
    ));
    create_operator(dir.path(), &envs);
    let with_data = |name: &'static str| {
        let mut own = borrowed(&envs);
        own.push(("FLASHMART__DATA_DIR", name));
        own
    };
    let a = Server::start(dir.path(), &["serve", "--role", "api"], &with_data("a"));
    let b = Server::start(dir.path(), &["serve", "--role", "api"], &with_data("b"));
    let client = reqwest::Client::new();
    let login = a
        .login(&client, "ops@example.com", "an operator password")
        .await;
    let operator = login["data"]["access_token"].as_str().unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(crate::catalog::PNG_B64)
        .unwrap();
    let (content_type, body) = crate::catalog::multipart("file", "shoe.png", "image/png", &png);
    let res: Value = client
        .post(format!("{}/api/v1/admin/uploads", a.base))
        .bearer_auth(operator)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = res["data"]["url"].as_str().expect("uploaded").to_owned();
    let served = reqwest::get(format!("{}{url}", b.base)).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(&served.bytes().await.unwrap()[..], &png[..]);
    assert!(
        !dir.path().join("a/uploads").exists(),
        "not in A's data dir"
    );
}
