//! The binary as a user runs it: over a real socket, from a fresh directory with no config file,
//! stopped by SIGTERM.

use std::process::Command;

use serde_json::Value;

use crate::support::Server;

#[tokio::test]
async fn the_readme_run_command_serves_healthz_from_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!dir.path().join("flashmart.toml").exists());
    let mut server = Server::start(dir.path(), &["demo"], &[("FLASHMART__LOG__LEVEL", "debug")]);
    let client = reqwest::Client::new();

    let res = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let trace_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], 0);
    assert_eq!(body["data"]["status"], "ok");
    assert_eq!(body["trace_id"], trace_id.as_str());

    // The request's log line carries its trace id.
    server.wait_for(|v| v["span"]["trace_id"] == trace_id.as_str());

    // Demo data is there: the demo admin can log in over a real socket (where per-IP limits
    // see the client's address).
    let login = server
        .login(&client, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await;
    assert_eq!(login["code"], 0, "{login}");

    // And a live sale, made by the demo schedule.
    let live: Value = client
        .get(format!("{}/api/v1/flash-sales?status=live", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["data"]["total"], 1, "{live}");
    assert_eq!(live["data"]["items"][0]["item_count"], 100);

    // And a shop to browse, with a coupon.
    let products: Value = client
        .get(format!("{}/api/v1/products?category=shoes", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(products["data"]["total"], 4, "{products}");
    let coupons: Value = client
        .get(format!("{}/api/v1/admin/coupons", server.base))
        .bearer_auth(login["data"]["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        coupons["data"]["items"][0]["code"], "WELCOME10",
        "{coupons}"
    );

    // Storage went to ./data.
    assert!(dir.path().join("data/flashmart.db").exists());
    assert!(dir.path().join("data/jwt_secret").exists());

    assert!(server.terminate().success(), "SIGTERM is a clean exit");
}

/// At the default level the request's span is not made (it costs every request), yet a line
/// written while serving a request still names it: trace id, method and route, where the span
/// would have put them.
#[tokio::test]
async fn a_line_logged_while_serving_a_request_names_it_at_the_default_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["demo"], &[]);
    let client = reqwest::Client::new();
    let login = server
        .login(&client, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await;
    let first = login["data"]["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String| {
        client
            .post(format!("{}/api/v1/auth/refresh", server.base))
            .json(&serde_json::json!({ "refresh_token": token }))
            .send()
    };
    assert_eq!(refresh(first.clone()).await.unwrap().status(), 200);
    // The same refresh token again: the session is revoked, with a warning in the log.
    let reused = refresh(first).await.unwrap();
    assert_eq!(reused.status(), 401);
    let trace_id = reused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let line = server.wait_for(|v| v["message"] == "refresh token reused; session revoked");
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["span"]["trace_id"], trace_id.as_str(), "{line}");
    assert_eq!(line["span"]["method"], "POST", "{line}");
    assert_eq!(line["span"]["route"], "/api/v1/auth/refresh", "{line}");
    assert_eq!(line["span"]["name"], "request", "{line}");
    assert!(server.terminate().success());
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .arg("serve")
        .current_dir(dir.path())
        .env("FLASHMART__AUTH__ACCESS_TTL_SECS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("auth.access_ttl_secs"), "{stderr}");

    std::fs::write(dir.path().join("flashmart.toml"), "[http]\nadr = \"x\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adr"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["--config", "missing.toml", "serve"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn config_print_shows_layers_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.toml"),
        "[http]\naddr = \"127.0.0.1:9999\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["--config", "custom.toml", "config", "print"])
        .current_dir(dir.path())
        .env("FLASHMART__LOG__LEVEL", "warn")
        .env(
            "FLASHMART__AUTH__JWT_SECRET",
            "a-very-secret-signing-key-of-40-bytes!!!",
        )
        .env("FLASHMART__RATE_LIMIT__ENABLED", "false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Value = toml::from_str(&printed).unwrap();
    assert_eq!(
        parsed["http"]["addr"].as_str(),
        Some("127.0.0.1:9999"),
        "file over default"
    );
    assert_eq!(
        parsed["log"]["level"].as_str(),
        Some("warn"),
        "environment over file"
    );
    assert_eq!(parsed["rate_limit"]["enabled"].as_bool(), Some(false));
    assert_eq!(parsed["auth"]["jwt_secret"].as_str(), Some("***"));
    assert!(!printed.contains("a-very-secret"));
    assert_eq!(parsed["data_dir"].as_str(), Some("./data"));
}

#[test]
fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .arg("migrate")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("schema is up to date"));
    }
    assert!(dir.path().join("data/flashmart.db").is_file());
}

/// `flashmart stampede` against a running server, as the README runs it (small numbers): it must
/// pass its own invariant checks and exit 0.
#[test]
fn stampede_reserve_passes_its_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["demo"],
        &[
            ("FLASHMART__LOADTEST__ENABLED", "true"),
            ("FLASHMART__RATE_LIMIT__ENABLED", "false"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args([
            "stampede",
            "reserve",
            &server.base,
            "--buyers",
            "300",
            "--stock",
            "200",
            "--limit",
            "2",
            "--attempts",
            "3",
            "-c",
            "16",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("result: all invariants hold"), "{stdout}");
    assert!(stdout.contains("[PASS] exact sell-out"), "{stdout}");
    assert!(stdout.contains("reservation throughput / healthz throughput"));
    // The two kinds of request in turns, five rounds of each by default.
    assert!(
        stdout.contains("  in 5 rounds, each /healthz then reservations (req/s): "),
        "{stdout}"
    );
    // The server's own CPU per request in each phase, read from its `/metrics`.
    let cpu = stdout
        .lines()
        .find_map(|l| l.strip_prefix("server CPU per request: healthz "))
        .unwrap_or_else(|| panic!("no CPU line: {stdout}"));
    let figures: Vec<f64> = cpu
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|f| f.parse().ok())
        .collect();
    assert!(
        figures.len() == 3 && figures[..2].iter().all(|f| *f > 0.0),
        "{cpu}"
    );
}

/// The contest scenario sells exactly the 10,000 items of a fresh hourly sale.
#[test]
fn stampede_contest_sells_exactly_10000() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["demo"],
        &[
            ("FLASHMART__COMPAT__CONTEST", "true"),
            ("FLASHMART__RATE_LIMIT__ENABLED", "false"),
        ],
    );
    // The API's own address given as the contest API's: refused before anything is sent,
    // naming the address to give instead.
    let out = run_contest(&server.base, &server.base, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not the contest API") && stderr.contains("compat.addr"),
        "{stderr}"
    );
    contest_stampede(&server);
}

/// The same in scaled mode, checkouts decided in Redis and answered once Redis has them, and
/// purchases decided by PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_contest_sells_exactly_10000_in_scaled_mode() {
    let stores = crate::support::ScaledStores::create().await;
    let (schema, redis_url, prefix) = (&stores.schema, &stores.redis_url, &stores.prefix);
    let dir = tempfile::tempdir().unwrap();
    let url = schema.url();
    let server = Server::start(
        dir.path(),
        &["demo"],
        &[
            ("FLASHMART__COMPAT__CONTEST", "true"),
            ("FLASHMART__RATE_LIMIT__ENABLED", "false"),
            ("FLASHMART__DATABASE__URL", &url),
            ("FLASHMART__REDIS__URL", redis_url),
            ("FLASHMART__REDIS__KEY_PREFIX", prefix),
            ("FLASHMART__FLASH_SALE__ACK", "redis"),
            crate::support::SHARED_SECRETS[0],
            crate::support::SHARED_SECRETS[1],
        ],
    );
    tokio::task::spawn_blocking(move || contest_stampede(&server))
        .await
        .unwrap();
}

/// The contest sells the current hour's sale: a race that ran across the top of the hour would
/// sell two sales and fail the checker's view of one. Started within 3 minutes of the hour's
/// end (the race takes 10-90 s here), it waits for the next hour.
fn contest_stampede(server: &Server) {
    let now = time::OffsetDateTime::now_utc();
    let into_hour = i64::from(now.minute()) * 60 + i64::from(now.second());
    if 3600 - into_hour < 180 {
        let wait = std::time::Duration::from_secs(u64::try_from(3600 - into_hour + 1).unwrap());
        eprintln!("the hour ends in under 3 minutes: the contest race waits {wait:?} for the next");
        std::thread::sleep(wait);
    }
    let out = run_contest(
        &server.base,
        server.compat_base.as_deref().unwrap(),
        &["--users", "1100", "-c", "32"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[PASS] exactly the 10,000 items sold"),
        "{stdout}"
    );
    assert!(
        stdout.contains("all 10000 items checked out and purchased"),
        "{stdout}"
    );
}

/// `flashmart stampede contest API --compat COMPAT ARGS...`, run to its end.
fn run_contest(api: &str, compat: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["stampede", "contest", api, "--compat", compat])
        .args(args)
        .output()
        .unwrap()
}

/// A failed invariant, or a server that cannot be reached, is a non-zero exit.
#[test]
fn stampede_fails_loudly() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["stampede", "reserve", "http://127.0.0.1:9", "--buyers", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(["stampede", "reserve", "http://10.1.2.3:80"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

/// One server per data directory: a second would keep its own ledger and oversell.
#[test]
fn a_second_server_on_one_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &["serve"], &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .arg("serve")
        .current_dir(dir.path())
        .env("FLASHMART__HTTP__ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another flashmart process"),
        "{stderr}"
    );
    // The first one is untouched, and once it is gone the data dir is free again.
    assert!(first.terminate().success());
    let again = Server::start(dir.path(), &["serve"], &[]);
    assert!(again.terminate().success());
}

/// `database.url` puts every record in PostgreSQL: the demo runs there with no SQLite file at
/// all, `/readyz` names PostgreSQL, and a second server on the same database refuses to
/// start (the in-process engine's live stock would be sold twice).
#[tokio::test]
async fn serve_on_postgres_keeps_its_records_there_and_runs_alone() {
    let schema = flashmart_postgres::testing::TestSchema::create().await;
    let url = schema.url();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["demo"],
        &[("FLASHMART__DATABASE__URL", url.as_str())],
    );
    let client = reqwest::Client::new();
    let login = server
        .login(&client, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await;
    assert_eq!(login["code"], 0, "{login}");
    let ready: Value = client
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["data"]["checks"]["postgres"], "ok", "{ready}");
    assert!(ready["data"]["checks"].get("sqlite").is_none(), "{ready}");
    let live: Value = client
        .get(format!("{}/api/v1/flash-sales?status=live", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["data"]["total"], 1, "{live}");

    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .arg("serve")
        .current_dir(other.path())
        .env("FLASHMART__DATABASE__URL", &url)
        .env("FLASHMART__HTTP__ADDR", "127.0.0.1:0")
        .env("FLASHMART__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another flashmart process serves on this database"),
        "{stderr}"
    );

    assert!(server.terminate().success(), "SIGTERM is a clean exit");
    // No SQLite file of records: the shop's and the sandbox provider's books are in PostgreSQL.
    assert!(!dir.path().join("data/flashmart.db").exists());
    assert!(!dir.path().join("data/sandbox.db").exists());
    // Stopped, the database is free for the next server.
    let again = Server::start(
        other.path(),
        &["serve"],
        &[("FLASHMART__DATABASE__URL", url.as_str())],
    );
    let login = again
        .login(&client, "admin@demo.flashmart.dev", "demo-admin-pass")
        .await;
    assert_eq!(login["code"], 0, "{login}");
    assert!(again.terminate().success());
}

/// `flashmart migrate` with `database.url` makes every table in PostgreSQL, the sandbox
/// provider's included, and running it again changes nothing.
#[tokio::test]
async fn migrate_brings_a_postgres_database_up_to_date() {
    use sqlx::ConnectOptions as _;

    let schema = flashmart_postgres::testing::TestSchema::create().await;
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .arg("migrate")
            .current_dir(dir.path())
            .env("FLASHMART__DATABASE__URL", schema.url())
            .env("FLASHMART__LOG__LEVEL", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = schema.options().connect().await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name IN ('users', 'orders', 'reservations', 'flash_sales', \
                            'sandbox_payments', 'sandbox_events') ORDER BY 1",
    )
    .bind(schema.name())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "flash_sales",
            "orders",
            "reservations",
            "sandbox_events",
            "sandbox_payments",
            "users"
        ]
    );
    assert!(!dir.path().join("data/flashmart.db").exists());
}

/// `flashmart reconcile` in scaled mode: a sale as Redis and the records agree on it, then
/// lost by Redis (marked for rebuilding), then differing (reported, exit code 1); without Redis
/// configured it refuses with the keys to set.
#[tokio::test]
async fn reconcile_reports_each_live_sale() {
    let stores = crate::support::ScaledStores::create().await;
    let (schema, redis_url, prefix) = (&stores.schema, &stores.redis_url, &stores.prefix);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .args(args)
            .current_dir(dir.path())
            .env("FLASHMART__DATABASE__URL", schema.url())
            .env("FLASHMART__REDIS__URL", redis_url)
            .env("FLASHMART__REDIS__KEY_PREFIX", prefix)
            .envs(crate::support::SHARED_SECRETS)
            .env("FLASHMART__LOG__LEVEL", "warn")
            .output()
            .unwrap()
    };
    // The demo's hourly sale of 100 items, one unit each, is made and loaded into Redis.
    assert!(run(&["demo", "--seed-only"]).status.success());
    let out = run(&["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per sale not ended: this hour's, and in the hour's last 5 minutes the next one's
    // too (made early, upcoming).
    let lines: Vec<&str> = stdout.lines().collect();
    assert!((1..=2).contains(&lines.len()), "{stdout}");
    assert!(lines.iter().all(|l| l.contains(": agrees: ")), "{stdout}");
    let sale = lines[0].split(' ').next().unwrap();

    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stock_key = format!("{prefix}{{sale:{sale}}}:stock");
    let left: i64 = redis::cmd("HINCRBY")
        .arg(&stock_key)
        .arg(1)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(left, 0, "item 1 of {stock_key} had its one unit");
    let out = run(&["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(stdout.contains("DIFFERS: item 1 has"), "{stdout}");

    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut conn)
        .unwrap();
    redis::cmd("DEL").arg(keys).query::<()>(&mut conn).unwrap();
    let out = run(&["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("not in Redis: marked lost"), "{stdout}");

    let out = Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .arg("reconcile")
        .current_dir(dir.path())
        .env("FLASHMART__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set redis.url"));
}
