//! `flashmart backup` under reservation load and `flashmart restore`: every reservation answered
//! before the backup started is in the restored shop, and the sale's numbers add up.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::support::{Server, login_at};

fn flashmart(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flashmart"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON an API request answers.
async fn body(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

async fn token_of(client: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    login_at(client, base, email, password).await["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every reservation id of `sale`, as the admin list gives them.
async fn reservation_ids(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    sale: &str,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    for page in 1.. {
        let body = body(
            client
                .get(format!(
                    "{base}/api/v1/admin/flash-sales/{sale}/reservations?page={page}&per_page=100"
                ))
                .bearer_auth(admin),
        )
        .await;
        let items = body["data"]["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        ids.extend(items.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_reservation_answered_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let made = flashmart(
        dir.path(),
        &[
            "admin",
            "create-user",
            "--email",
            "root@example.com",
            "--password",
            "an admin password",
            "--role",
            "admin",
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    let server = Server::start(
        dir.path(),
        &["serve"],
        &[("FLASHMART__RATE_LIMIT__ENABLED", "false")],
    );
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let admin = token_of(&client, &base, "root@example.com", "an admin password").await;
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let sale = body(
        client
            .post(format!("{base}/api/v1/admin/flash-sales"))
            .bearer_auth(&admin)
            .json(&json!({
                "name": "Backup drop", "starts_at": rfc(now - time::Duration::seconds(1)),
                "ends_at": rfc(now + time::Duration::hours(1)), "per_user_limit": 10_000,
                "items": [{"name": "A", "price_cents": 100, "stock": 100_000},
                          {"name": "B", "price_cents": 100, "stock": 100_000}]
            })),
    )
    .await;
    let sale = sale["data"]["id"].as_str().unwrap().to_owned();
    let mut buyers = Vec::new();
    for n in 0..8 {
        let email = format!("buyer{n}@example.com");
        client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&json!({"email": email, "password": "a buyer password", "name": "Buyer"}))
            .send()
            .await
            .unwrap();
        buyers.push(token_of(&client, &base, &email, "a buyer password").await);
    }

    // Reservations, as fast as 8 buyers make them, each recorded with when it was answered.
    let answered: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for (n, token) in buyers.into_iter().enumerate() {
        let (client, base, sale) = (client.clone(), base.clone(), sale.clone());
        let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res = client
                    .post(format!("{base}/api/v1/flash-sales/{sale}/reservations"))
                    .bearer_auth(&token)
                    .json(&json!({"item_id": 1 + n % 2}))
                    .send()
                    .await;
                let Ok(res) = res else { break };
                if res.status() == 201 {
                    let body: Value = res.json().await.unwrap();
                    let id = body["data"]["id"].as_str().unwrap().to_owned();
                    answered.lock().push((Instant::now(), id));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The backup, while the load goes on.
    let started = Instant::now();
    let out = {
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || flashmart(&dir, &["backup", "--to", "shop.tar"]))
            .await
            .unwrap()
    };
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("backup written to shop.tar"), "{said}");
    assert!(
        said.contains("outbox: ") && said.contains("database: snapshot"),
        "{said}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A running server's data directory is never restored over.
    let busy = flashmart(dir.path(), &["restore", "--from", "shop.tar", "--force"]);
    assert!(!busy.status.success());
    assert!(text(&busy).contains("in use"), "{}", text(&busy));
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    server.kill();

    let answered = answered.lock().clone();
    let before: HashSet<String> = answered
        .iter()
        .filter(|(at, _)| *at < started)
        .map(|(_, id)| id.clone())
        .collect();
    let after = answered.len() - before.len();
    assert!(
        before.len() > 50,
        "only {} reservations before the backup",
        before.len()
    );
    assert!(after > 0, "no load while the backup ran");

    // Restored into a directory of its own, and served from there.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("shop.tar"),
        restored.path().join("shop.tar"),
    )
    .unwrap();
    let out = flashmart(restored.path(), &["restore", "--from", "shop.tar"]);
    assert!(out.status.success(), "{}", text(&out));
    let again = flashmart(restored.path(), &["restore", "--from", "shop.tar"]);
    assert!(
        !again.status.success(),
        "a restore over a restored directory needs --force"
    );
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    let server = Server::start(
        restored.path(),
        &["serve"],
        &[("FLASHMART__RATE_LIMIT__ENABLED", "false")],
    );
    let base = server.base.clone();
    let admin = token_of(&client, &base, "root@example.com", "an admin password").await;
    let ids = reservation_ids(&client, &base, &admin, &sale).await;
    let missing: Vec<&String> = before.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} reservations answered before the backup are missing",
        missing.len(),
        before.len()
    );
    // Nothing was made up either: every restored reservation was answered to a buyer.
    let all: HashSet<&String> = answered.iter().map(|(_, id)| id).collect();
    assert!(ids.iter().all(|id| all.contains(id)));
    // And the sale's numbers add up: stock = held + sold + left, one unit per reservation.
    let stats = body(
        client
            .get(format!("{base}/api/v1/admin/flash-sales/{sale}/stats"))
            .bearer_auth(&admin),
    )
    .await;
    let s = &stats["data"];
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(n("stock"), 200_000);
    assert_eq!(
        n("reserved") + n("sold") + n("remaining"),
        n("stock"),
        "{s}"
    );
    assert_eq!(n("reserved"), ids.len() as u64, "{s}");
    eprintln!(
        "{} answered before the backup, {} after it began; {} restored\n{said}",
        before.len(),
        after,
        ids.len()
    );
    server.terminate();
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
}

/// Scaled mode's records are backed up with pg_dump and restored with pg_restore
/// (scripts/pg-backup): an account made before the dump is in the restored database.
#[test]
fn scaled_records_are_dumped_and_restored_by_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::process::id();
    let (from, to) = (
        format!("flashmart_pgdump_{n}_a"),
        format!("flashmart_pgdump_{n}_b"),
    );
    for db in [&from, &to] {
        psql(&format!("DROP DATABASE IF EXISTS {db}"));
        psql(&format!("CREATE DATABASE {db}"));
    }
    let url = |db: &str| format!("postgres://postgres@127.0.0.1:5432/{db}");
    let run = |db: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flashmart"))
            .args(args)
            .current_dir(dir.path())
            .env("FLASHMART__DATABASE__URL", url(db))
            .output()
            .unwrap()
    };
    let create = [
        "admin",
        "create-user",
        "--email",
        "kept@example.com",
        "--password",
        "a kept password",
        "--role",
        "operator",
    ];
    let made = run(&from, &create);
    assert!(made.status.success(), "{}", text(&made));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-backup");
    let dump = dir.path().join("shop.dump");
    let out = Command::new(script)
        .args(["dump", dump.to_str().unwrap()])
        .env("FLASHMART__DATABASE__URL", url(&from))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(script)
        .args(["restore", dump.to_str().unwrap()])
        .env("FLASHMART__DATABASE__URL", url(&to))
        .env_remove("FLASHMART__REDIS__URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("flashmart reconcile"));

    // The account is there: making it again is refused.
    let again = run(&to, &create);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already registered"),
        "{}",
        text(&again)
    );
    for db in [&from, &to] {
        psql(&format!("DROP DATABASE IF EXISTS {db}"));
    }
}
