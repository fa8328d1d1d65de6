//! `stampede reserve`: N buyers with real access tokens race for a sale of S units with a
//! per-user limit L, after a `/healthz` baseline at the same concurrency; then the invariants are
//! checked from the server's own view.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ReserveArgs;
use crate::api::{Admin, Usage, totals};
use crate::http::{Answer, Target};
use crate::load::{KeepAnswer, MakeRequest, Spec, hammer};
use crate::stats::{Checks, Summary};

/// An accepted reservation as the client saw it.
#[derive(Debug, Clone)]
struct Accepted {
    id: String,
    buyer: usize,
    quantity: u32,
}

pub struct Outcome {
    pub baseline: Option<Summary>,
    pub load: Summary,
    pub checks: Checks,
    pub report: Vec<String>,
}

/// The server's CPU time per request in each phase, from its CPU time at the phases' edges,
/// and their ratio: the share of the throughput ratio that is the server's own, since the load
/// generator shares the machine and spends more on some requests than on others. Only when the
/// server that answered `/metrics` served every request of the phases: behind a load balancer it
/// is one of several, and its CPU is not the requests'.
fn cpu_per_request(
    [start, between, end]: [Option<Usage>; 3],
    baseline: Option<&Summary>,
    load: &Summary,
) -> Option<String> {
    let (between, end) = (between?, end?);
    let spent = |from: Usage, to: Usage, phase: &Summary| {
        let sent = phase.requests.max(1) as f64;
        if to.requests - from.requests < sent {
            return Err(format!(
                "server CPU per request: not shown, the server that answered /metrics served \
                 {:.0} of the phase's {sent:.0} requests",
                to.requests - from.requests
            ));
        }
        Ok((to.cpu_seconds - from.cpu_seconds) * 1e6 / sent)
    };
    let reservation = match spent(between, end, load) {
        Ok(micros) => micros,
        Err(line) => return Some(line),
    };
    Some(match baseline {
        Some(base) => match spent(start?, between, base) {
            Ok(healthz) => format!(
                "server CPU per request: healthz {healthz:.1} us, reservation {reservation:.1} us; \
                 healthz / reservation = {:.2}",
                healthz / reservation.max(f64::MIN_POSITIVE)
            ),
            Err(line) => line,
        },
        None => format!("server CPU per request: reservation {reservation:.1} us"),
    })
}

fn rfc3339(t: OffsetDateTime) -> anyhow::Result<String> {
    Ok(t.format(&Rfc3339)?)
}

pub async fn run(args: &ReserveArgs) -> anyhow::Result<Outcome> {
    let target = Target::parse(&args.common.url).await?;
    let deadline = Instant::now() + Duration::from_secs(args.common.max_seconds);
    let mut admin = Admin::login(
        &target,
        &args.common.admin_email,
        &args.common.admin_password,
    )
    .await?;
    let mut report = Vec::new();

    eprintln!("minting {} buyers ...", args.buyers);
    let buyers = Arc::new(admin.mint_buyers(args.buyers).await?);
    let rss_before = admin.resident_memory().await?;

    let now = OffsetDateTime::now_utc();
    for i in 0..args.extra_sales {
        admin
            .create_sale(&json!({
                "name": format!("stampede filler {i}"),
                "starts_at": rfc3339(now - time::Duration::seconds(1))?,
                "ends_at": rfc3339(now + time::Duration::hours(2))?,
                "per_user_limit": 1,
                "generate_items": {"count": 10, "price_cents": 100, "stock": 10},
            }))
            .await?;
    }
    let sale = admin
        .create_sale(&json!({
            "name": "stampede reserve",
            "starts_at": rfc3339(now - time::Duration::seconds(1))?,
            "ends_at": rfc3339(now + time::Duration::hours(2))?,
            "per_user_limit": args.limit,
            "reservation_ttl_secs": 3600,
            "generate_items": {"count": args.items, "price_cents": 1999, "stock": args.stock},
        }))
        .await?;
    let sale_id = sale["id"].as_str().unwrap_or_default().to_owned();
    let total_stock = u64::from(args.items) * u64::from(args.stock);
    let requests = args.buyers as u64 * u64::from(args.attempts);
    report.push(format!(
        "sale {sale_id}: {} item(s) x {} units = {total_stock}, limit {} per buyer; \
         {} buyers x {} attempts of quantity {} = {requests} requests at concurrency {}{}",
        args.items,
        args.stock,
        args.limit,
        args.buyers,
        args.attempts,
        args.quantity,
        args.concurrency,
        if args.extra_sales > 0 {
            format!(" ({} other live sales)", args.extra_sales)
        } else {
            String::new()
        }
    ));

    // The server's CPU time at each phase's edges: what it spent per request, whatever the load
    // generator beside it on the same machine spent.
    let cpu_at_start = admin.usage().await?;
    let baseline = if args.no_baseline {
        None
    } else {
        let make: MakeRequest = Arc::new(|_| Spec {
            method: Method::GET,
            path: Arc::from("/healthz"),
            token: None,
            body: None,
            idempotency_key: None,
        });
        let keep: KeepAnswer<()> = Arc::new(|_, _| None);
        let (summary, _) = hammer(
            "healthz",
            &target,
            requests,
            args.concurrency,
            deadline,
            make,
            keep,
        )
        .await?;
        Some(summary)
    };

    let cpu_after_baseline = admin.usage().await?;

    let path: Arc<str> = Arc::from(format!("/api/v1/flash-sales/{sale_id}/reservations"));
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (1..=args.items)
            .map(|item| {
                Bytes::from(json!({"item_id": item, "quantity": args.quantity}).to_string())
            })
            .collect(),
    );
    let n = args.buyers as u64;
    let items = u64::from(args.items);
    let with_keys = args.idempotency_keys;
    let make: MakeRequest = {
        let (buyers, bodies, path) = (Arc::clone(&buyers), Arc::clone(&bodies), Arc::clone(&path));
        Arc::new(move |i| {
            let buyer = (i % n) as usize;
            let round = i / n;
            Spec {
                method: Method::POST,
                path: Arc::clone(&path),
                token: Some(buyers[buyer].token.clone()),
                body: Some(bodies[((buyer as u64 + round) % items) as usize].clone()),
                idempotency_key: with_keys
                    .then(|| HeaderValue::from_str(&format!("stampede-{i}")).ok())
                    .flatten(),
            }
        })
    };
    let keep: KeepAnswer<Accepted> = Arc::new(move |i, answer: &Answer| {
        if answer.status != StatusCode::CREATED {
            return None;
        }
        // Only the two fields kept, read in place rather than into a whole `Value`: what the
        // load generator spends comes out of the machine the server is measured on.
        #[derive(Deserialize)]
        struct Reserved<'a> {
            code: i64,
            #[serde(borrow)]
            data: ReservedData<'a>,
        }
        #[derive(Deserialize)]
        struct ReservedData<'a> {
            #[serde(borrow)]
            id: Cow<'a, str>,
            quantity: u32,
        }
        let reserved: Reserved<'_> = serde_json::from_slice(&answer.body).ok()?;
        (reserved.code == 0).then(|| Accepted {
            id: reserved.data.id.into_owned(),
            buyer: (i % n) as usize,
            quantity: reserved.data.quantity,
        })
    });
    let (load, accepted) = hammer(
        "reserve",
        &target,
        requests,
        args.concurrency,
        deadline,
        make,
        keep,
    )
    .await?;

    if let Some(base) = &baseline {
        report.push(format!(
            "reservation throughput / healthz throughput = {:.0} / {:.0} = {:.2}",
            load.throughput(),
            base.throughput(),
            load.throughput() / base.throughput().max(1.0)
        ));
    }
    let cpu_at_end = admin.usage().await?;
    if let Some(line) = cpu_per_request(
        [cpu_at_start, cpu_after_baseline, cpu_at_end],
        baseline.as_ref(),
        &load,
    ) {
        report.push(line);
    }
    let rss_after = admin.resident_memory().await?;
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let holders = totals(accepted.iter().map(|a| (a.buyer, a.quantity)))
            .len()
            .max(1);
        // Resident memory also holds the allocator's free pages and SQLite's caches, which come
        // and go with the minting of buyers; the ledger's own bytes per buyer are what
        // `cargo bench -p flashmart-app --bench ledger_memory` counts.
        report.push(format!(
            "server resident memory: {:.1} MiB before the race, {:.1} MiB after it, with {} \
             buyers holding stock",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            holders,
        ));
    }

    let checks = check(
        args,
        &mut admin,
        &sale_id,
        total_stock,
        &load,
        &accepted,
        &buyers,
    )
    .await?;
    Ok(Outcome {
        baseline,
        load,
        checks,
        report,
    })
}

async fn check(
    args: &ReserveArgs,
    admin: &mut Admin,
    sale_id: &str,
    total_stock: u64,
    load: &Summary,
    accepted: &[Accepted],
    buyers: &[crate::api::Buyer],
) -> anyhow::Result<Checks> {
    let mut checks = Checks::default();
    let stats = admin.stats(sale_id).await?;
    let stored = admin.reservations(sale_id).await?;
    let accepted_units: u64 = accepted.iter().map(|a| u64::from(a.quantity)).sum();
    let held = stats.reserved + stats.sold;

    checks.check(
        "nothing oversold",
        held <= total_stock && stats.stock == total_stock,
        format!(
            "reserved {} + sold {} <= stock {}",
            stats.reserved, stats.sold, stats.stock
        ),
    );
    checks.check(
        "stock is conserved",
        held + stats.remaining == stats.stock,
        format!(
            "reserved {} + sold {} + remaining {} = {} (stock {})",
            stats.reserved,
            stats.sold,
            stats.remaining,
            held + stats.remaining,
            stats.stock
        ),
    );
    checks.check(
        "what was answered is what is held",
        accepted_units == held,
        format!("{accepted_units} units answered 2xx, {held} held by the server"),
    );

    let client = totals(accepted.iter().map(|a| (a.buyer, a.quantity)));
    let worst_client = client.values().copied().max().unwrap_or(0);
    let server = totals(
        stored
            .iter()
            .filter(|r| r.status == "reserved" || r.status == "purchased")
            .map(|r| (r.buyer_id.clone(), r.quantity)),
    );
    let worst_server = server.values().copied().max().unwrap_or(0);
    checks.check(
        "no buyer over the limit",
        worst_client <= u64::from(args.limit) && worst_server <= u64::from(args.limit),
        format!(
            "most held by one buyer: {worst_client} answered, {worst_server} stored (limit {})",
            args.limit
        ),
    );
    let known: HashSet<&str> = buyers.iter().map(|b| b.user_id.as_str()).collect();
    checks.check(
        "every stored reservation belongs to a buyer of this run",
        server.keys().all(|b| known.contains(b.as_str())),
        format!("{} distinct buyers stored", server.len()),
    );

    let mut stored_ids: HashMap<&str, u32> = HashMap::new();
    for r in &stored {
        *stored_ids.entry(r.id.as_str()).or_default() += 1;
    }
    let duplicates = stored_ids.values().filter(|n| **n > 1).count();
    let missing = accepted
        .iter()
        .filter(|a| !stored_ids.contains_key(a.id.as_str()))
        .count();
    let answered: HashSet<&str> = accepted.iter().map(|a| a.id.as_str()).collect();
    let unanswered = stored
        .iter()
        .filter(|r| !answered.contains(r.id.as_str()))
        .count();
    checks.check(
        "every accepted reservation present exactly once",
        duplicates == 0 && missing == 0 && unanswered == 0,
        format!(
            "{} accepted, {} stored; {missing} missing, {duplicates} duplicated, \
             {unanswered} stored but never answered",
            accepted.len(),
            stored.len()
        ),
    );

    // What the buyers could hold at most, each trying `attempts` times `quantity` units.
    let per_buyer = u64::from(args.attempts).min(u64::from(args.limit / args.quantity.max(1)))
        * u64::from(args.quantity);
    let demand = args.buyers as u64 * per_buyer;
    // With one item every attempt competes for the same stock; with several, a buyer's attempt
    // may land on an item already gone, so only one item is checked for exactness.
    if args.items == 1
        && demand >= total_stock
        && load.requests == args.buyers as u64 * u64::from(args.attempts)
    {
        checks.check(
            "exact sell-out (demand exceeds stock)",
            held == total_stock && stats.remaining == 0,
            format!(
                "demand {demand} >= stock {total_stock}; held {held}, remaining {}",
                stats.remaining
            ),
        );
    }
    let server_errors: u64 = load
        .answers
        .iter()
        .filter(|((status, _), _)| *status >= 500)
        .map(|(_, n)| n)
        .sum();
    checks.check(
        "no server errors",
        server_errors == 0 && load.errors == 0,
        format!(
            "{server_errors} 5xx answers, {} requests without an answer",
            load.errors
        ),
    );
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(requests: u64) -> Summary {
        Summary {
            name: "phase".into(),
            requests,
            errors: 0,
            elapsed: Duration::from_secs(1),
            p50: Duration::ZERO,
            p90: Duration::ZERO,
            p99: Duration::ZERO,
            max: Duration::ZERO,
            answers: Default::default(),
        }
    }

    fn at(cpu_seconds: f64, requests: f64) -> Option<Usage> {
        Some(Usage {
            cpu_seconds,
            requests,
        })
    }

    #[test]
    fn cpu_per_request_is_the_phases_cpu_over_its_requests() {
        let (base, load) = (phase(1000), phase(500));
        let line = cpu_per_request(
            [at(1.0, 10.0), at(1.012, 1011.0), at(1.021, 1512.0)],
            Some(&base),
            &load,
        );
        assert_eq!(
            line.as_deref(),
            Some(
                "server CPU per request: healthz 12.0 us, reservation 18.0 us; \
                 healthz / reservation = 0.67"
            )
        );
    }

    #[test]
    fn nothing_is_claimed_for_a_server_that_served_part_of_the_requests() {
        // Behind a balancer: the instance answering /metrics served a third of each phase.
        let (base, load) = (phase(900), phase(900));
        let line = cpu_per_request(
            [at(1.0, 0.0), at(1.004, 300.0), at(1.008, 600.0)],
            Some(&base),
            &load,
        )
        .unwrap();
        assert!(line.contains("not shown"), "{line}");
        assert!(line.contains("served 300 of the phase's 900"), "{line}");
        // A server that does not export its CPU time: no line at all.
        assert_eq!(
            cpu_per_request([None, None, None], Some(&base), &load),
            None
        );
    }
}
