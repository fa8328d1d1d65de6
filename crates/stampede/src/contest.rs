//! `stampede contest`: the 10,000-item hourly sale through `/checkout` and `/purchase`, users each
//! trying more than their limit; checked out and purchased, then checked from the server's view.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper::{Method, StatusCode};
use rand::seq::SliceRandom as _;

use crate::ContestArgs;
use crate::api::{Admin, totals};
use crate::http::{Conn, Target};
use crate::stats::{Checks, Progress, Recorder, Summary};

const ITEMS: u32 = 10_000;
const LIMIT: u64 = 10;

pub struct Outcome {
    pub checkout: Summary,
    pub purchase: Summary,
    pub sell_out: Option<Duration>,
    pub checks: Checks,
    pub report: Vec<String>,
}

/// Items nobody holds yet, in random order; an item refused for the buyer's limit goes back.
#[derive(Debug)]
struct Pool(Mutex<Vec<u32>>);

impl Pool {
    fn take(&self) -> Option<u32> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn give_back(&self, item: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
    }
}

#[derive(Debug, Default)]
struct WorkerResult {
    checkout: Recorder,
    purchase: Recorder,
    /// (user, code, purchase answer body)
    bought: Vec<(usize, String, bytes::Bytes)>,
    attempts: u64,
}

pub async fn run(args: &ContestArgs) -> anyhow::Result<Outcome> {
    let api = Target::parse(&args.common.url).await?;
    let target = Target::parse(&args.compat).await?;
    let deadline = Instant::now() + Duration::from_secs(args.common.max_seconds);
    let mut probe = Conn::open(&target).await.with_context(|| {
        format!(
            "cannot reach the contest API at {}: start the server with \
             FLASHMART__COMPAT__CONTEST=true and pass its compat.addr as --compat",
            args.compat
        )
    })?;
    let health = probe.get("/health", None).await?;
    if health.status != StatusCode::OK {
        // Most likely the API's own address (`http.addr`), where the contest API is never
        // served.
        bail!(
            "{} is not the contest API (GET /health answered {}): the contest API is served \
             only on compat.addr (127.0.0.1:8081 unless set) of a server started with \
             FLASHMART__COMPAT__CONTEST=true, never on http.addr; pass that address as --compat",
            args.compat,
            health.status
        );
    }
    let mut admin =
        Admin::login(&api, &args.common.admin_email, &args.common.admin_password).await?;
    let sale_id = current_sale(&mut admin).await?;
    let before = admin.stats(&sale_id).await?;
    if before.remaining != u64::from(ITEMS) || before.reserved + before.sold != 0 {
        bail!(
            "this hour's contest sale is not fresh ({} reserved, {} sold): run against a new data \
             directory, or wait for the next hour's sale",
            before.reserved,
            before.sold
        );
    }

    let mut items: Vec<u32> = (1..=ITEMS).collect();
    items.shuffle(&mut rand::rng());
    let pool = Arc::new(Pool(Mutex::new(items)));
    let next_user = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start("contest", args.users as u64 * (LIMIT + args.extra_attempts));
    let started = Instant::now();
    let sold_out_at = Arc::new(Mutex::new(None::<Duration>));
    let purchased = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (pool, next_user, done) = (
            Arc::clone(&pool),
            Arc::clone(&next_user),
            Arc::clone(&progress.done),
        );
        let (target, sold_out_at, purchased) = (
            target.clone(),
            Arc::clone(&sold_out_at),
            Arc::clone(&purchased),
        );
        let (users, extra) = (args.users, args.extra_attempts);
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(&target).await?;
            let mut out = WorkerResult::default();
            loop {
                let user = next_user.fetch_add(1, Ordering::Relaxed);
                if user >= users || Instant::now() >= deadline {
                    break;
                }
                for _ in 0..(LIMIT + extra) {
                    // Unheld items first; once none are left, items someone holds (sold out).
                    let (item, from_pool) = match pool.take() {
                        Some(item) => (item, true),
                        None => (rand::random_range(1..=ITEMS), false),
                    };
                    let path = format!("/checkout?user_id=u{user}&id={item}");
                    let answer = conn.send(&Method::POST, &path, None, None, None).await?;
                    out.attempts += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                    out.checkout
                        .record(answer.status.as_u16(), answer.code(), answer.latency);
                    if answer.status == StatusCode::OK {
                        let code: serde_json::Value = answer.json()?;
                        let code = code["code"]
                            .as_str()
                            .context("checkout without code")?
                            .to_owned();
                        let paid = conn
                            .send(
                                &Method::POST,
                                &format!("/purchase?code={code}"),
                                None,
                                None,
                                None,
                            )
                            .await?;
                        out.purchase
                            .record(paid.status.as_u16(), paid.code(), paid.latency);
                        if paid.status == StatusCode::OK {
                            if purchased.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(ITEMS) {
                                *sold_out_at.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(started.elapsed());
                            }
                            out.bought.push((user, code, paid.body));
                        }
                    } else if from_pool {
                        if answer.code() == 60005 {
                            pool.give_back(item);
                            break; // this user is at the limit
                        }
                        if answer.status.is_server_error() {
                            pool.give_back(item);
                        }
                    }
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = WorkerResult::default();
    for w in workers {
        let r = w.await??;
        all.checkout.merge(r.checkout);
        all.purchase.merge(r.purchase);
        all.bought.extend(r.bought);
        all.attempts += r.attempts;
    }
    let elapsed = started.elapsed();
    drop(progress);
    let checkout = std::mem::take(&mut all.checkout).finish("checkout", elapsed);
    let purchase = std::mem::take(&mut all.purchase).finish("purchase", elapsed);
    let sell_out = *sold_out_at.lock().unwrap_or_else(PoisonError::into_inner);

    let mut report = vec![format!(
        "contest sale {sale_id}: {} users, each up to {} checkouts (limit {LIMIT}), concurrency {}",
        args.users,
        LIMIT + args.extra_attempts,
        args.concurrency
    )];
    match sell_out {
        Some(t) => report.push(format!(
            "all {ITEMS} items checked out and purchased {:.3} s after the first request",
            t.as_secs_f64()
        )),
        None => report.push(format!(
            "the sale did not sell out: {} purchased",
            all.bought.len()
        )),
    }

    let checks = check(&mut admin, &mut probe, &sale_id, &all).await?;
    Ok(Outcome {
        checkout,
        purchase,
        sell_out,
        checks,
        report,
    })
}

/// The live contest sale, with at least a minute to run: near the end of the hour, wait for the
/// next hour's sale rather than race across two sales.
async fn current_sale(admin: &mut Admin) -> anyhow::Result<String> {
    const MARGIN: time::Duration = time::Duration::MINUTE;
    for _ in 0..3 {
        let sale = admin
            .live_sales()
            .await?
            .into_iter()
            .find(|s| {
                s["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("contest "))
            })
            .context("no live contest sale: is compat.contest on?")?;
        let ends_at = sale["ends_at"]
            .as_str()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .context("contest sale without ends_at")?;
        let left = ends_at - time::OffsetDateTime::now_utc();
        if left >= MARGIN {
            return Ok(sale["id"].as_str().unwrap_or_default().to_owned());
        }
        let wait = (left + time::Duration::seconds(6)).max(time::Duration::ZERO);
        eprintln!(
            "the current contest sale ends in {:.0} s: waiting {:.0} s for the next hour's",
            left.as_seconds_f64(),
            wait.as_seconds_f64()
        );
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    bail!("no contest sale with a minute left to run")
}

async fn check(
    admin: &mut Admin,
    conn: &mut Conn,
    sale_id: &str,
    run: &WorkerResult,
) -> anyhow::Result<Checks> {
    let mut checks = Checks::default();
    // Attempts are recorded without holding up the answer: give the last batch a moment.
    let mut stats = admin.stats(sale_id).await?;
    for _ in 0..50 {
        if stats.attempts >= run.attempts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = admin.stats(sale_id).await?;
    }
    checks.check(
        "exactly the 10,000 items sold",
        stats.sold == u64::from(ITEMS) && stats.reserved == 0 && stats.remaining == 0,
        format!(
            "sold {}, reserved {}, remaining {}",
            stats.sold, stats.reserved, stats.remaining
        ),
    );
    checks.check(
        "every purchase answered is stored once",
        run.bought.len() as u64 == stats.sold,
        format!(
            "{} purchases answered, {} sold",
            run.bought.len(),
            stats.sold
        ),
    );
    let stored = admin.reservations(sale_id).await?;
    let server = totals(
        stored
            .iter()
            .filter(|r| r.status == "reserved" || r.status == "purchased")
            .map(|r| (r.buyer_ref.clone().unwrap_or_default(), r.quantity)),
    );
    let client = totals(run.bought.iter().map(|(u, _, _)| (*u, 1)));
    let worst = server
        .values()
        .chain(client.values())
        .copied()
        .max()
        .unwrap_or(0);
    checks.check(
        "no user over 10 items",
        worst <= LIMIT,
        format!("most items held by one user: {worst}"),
    );
    let mut items: HashMap<u32, u32> = HashMap::new();
    for r in stored.iter().filter(|r| r.status == "purchased") {
        *items.entry(r.item_id).or_default() += 1;
    }
    checks.check(
        "each item sold once",
        items.len() == ITEMS as usize && items.values().all(|n| *n == 1),
        format!("{} distinct items sold", items.len()),
    );
    checks.check(
        "every checkout attempt recorded",
        stats.attempts == run.attempts,
        format!(
            "{} attempts sent, {} recorded",
            run.attempts, stats.attempts
        ),
    );
    let mut same = 0;
    let sample: Vec<_> = run.bought.iter().take(100).collect();
    for (_, code, body) in &sample {
        let again = conn
            .send(
                &Method::POST,
                &format!("/purchase?code={code}"),
                None,
                None,
                None,
            )
            .await?;
        if again.status == StatusCode::OK && again.body == *body {
            same += 1;
        }
    }
    checks.check(
        "a repeated purchase answers the same",
        same == sample.len(),
        format!("{same} of {} repeated purchases identical", sample.len()),
    );
    Ok(checks)
}
