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
use crate::load::{KeepAnswer, MakeRequest, Spec, connect, hammer};
use crate::stats::{Checks, Recorder, Summary};

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

/// What the server spent and served over the phases of one kind, summed from its counters at
/// each phase's edges; `None` once any edge could not be read (a server without
/// `process_cpu_seconds_total`).
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    cpu_seconds: f64,
    served: f64,
}

impl Spent {
    fn add(total: Option<Self>, from: Option<Usage>, to: Option<Usage>) -> Option<Self> {
        let (total, from, to) = (total?, from?, to?);
        Some(Self {
            cpu_seconds: total.cpu_seconds + (to.cpu_seconds - from.cpu_seconds),
            served: total.served + (to.requests - from.requests),
        })
    }
}

/// The server's CPU time per request of each kind, and their ratio: the share of the throughput
/// ratio that is the server's own, since the load generator shares the machine and spends more
/// on some requests than on others. Only when the server that answered `/metrics` served every
/// request of the phases: behind a load balancer it is one of several, and its CPU is not the
/// requests'.
fn cpu_per_request(
    healthz: Option<(Spent, &Summary)>,
    reservation: (Option<Spent>, &Summary),
) -> Option<String> {
    let per_request = |spent: Spent, phase: &Summary| {
        let sent = phase.requests.max(1) as f64;
        if spent.served < sent {
            return Err(format!(
                "server CPU per request: not shown, the server that answered /metrics served \
                 {:.0} of the phase's {sent:.0} requests",
                spent.served
            ));
        }
        Ok(spent.cpu_seconds * 1e6 / sent)
    };
    let reservation = match per_request(reservation.0?, reservation.1) {
        Ok(micros) => micros,
        Err(line) => return Some(line),
    };
    Some(match healthz {
        Some((spent, base)) => match per_request(spent, base) {
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

/// The CPU time this process (the load generator) has used so far, every thread's, in seconds;
/// `None` where the system has no such clock.
fn own_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        use nix::time::{ClockId, clock_gettime};
        let spent = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
        Some(spent.tv_sec() as f64 + spent.tv_nsec() as f64 / 1e9)
    }
    #[cfg(not(unix))]
    None
}

/// The load generator's own CPU time per request of each kind: with the server's, what the
/// throughput ratio is made of on a machine both share.
fn own_cpu_per_request(healthz: Option<(f64, &Summary)>, reservation: (f64, &Summary)) -> String {
    let per_request = |seconds: f64, phase: &Summary| seconds * 1e6 / phase.requests.max(1) as f64;
    let reservation = per_request(reservation.0, reservation.1);
    match healthz {
        Some((seconds, base)) => format!(
            "load generator CPU per request: healthz {:.1} us, reservation {reservation:.1} us",
            per_request(seconds, base)
        ),
        None => format!("load generator CPU per request: reservation {reservation:.1} us"),
    }
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
    let reserve: MakeRequest = {
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
    let healthz: MakeRequest = Arc::new(|_| Spec {
        method: Method::GET,
        path: Arc::from("/healthz"),
        token: None,
        body: None,
        idempotency_key: None,
    });
    let ignore: KeepAnswer<()> = Arc::new(|_, _| None);

    // Round by round, a share of the `/healthz` requests and then the same share of the
    // reservations, on the same connections; the server's CPU time read at each phase's edges,
    // so that what it spent per request is known whatever the load generator beside it spent.
    let rounds = u64::from(args.rounds).clamp(1, requests.max(1));
    let mut conns = connect(&target, args.concurrency).await?;
    let (mut base_recorder, mut base_elapsed) = (Recorder::default(), Duration::ZERO);
    let (mut load_recorder, mut load_elapsed) = (Recorder::default(), Duration::ZERO);
    let mut accepted = Vec::new();
    let (mut base_spent, mut load_spent) = (Some(Spent::default()), Some(Spent::default()));
    let (mut base_own, mut load_own) = (Some(0.0), Some(0.0));
    let add_own =
        |total: Option<f64>, from: Option<f64>, to: Option<f64>| Some(total? + to? - from?);
    let mut each_round = Vec::new();
    for round in 0..rounds {
        let range = requests * round / rounds..requests * (round + 1) / rounds;
        let mut edge = admin.usage().await?;
        let mut own_edge = own_cpu_seconds();
        let mut base_rate = None;
        if !args.no_baseline {
            let phase = hammer(
                "healthz",
                &mut conns,
                range.clone(),
                deadline,
                Arc::clone(&healthz),
                Arc::clone(&ignore),
            )
            .await?;
            let own_after = own_cpu_seconds();
            let after = admin.usage().await?;
            base_spent = Spent::add(base_spent, edge, after);
            base_own = add_own(base_own, own_edge, own_after);
            edge = after;
            own_edge = own_cpu_seconds();
            base_rate = Some(phase.throughput());
            base_elapsed += phase.elapsed;
            base_recorder.merge(phase.recorder);
        }
        let phase = hammer(
            "reserve",
            &mut conns,
            range,
            deadline,
            Arc::clone(&reserve),
            Arc::clone(&keep),
        )
        .await?;
        load_own = add_own(load_own, own_edge, own_cpu_seconds());
        load_spent = Spent::add(load_spent, edge, admin.usage().await?);
        if let Some(base_rate) = base_rate {
            each_round.push(format!("{:.0} / {base_rate:.0}", phase.throughput()));
        }
        load_elapsed += phase.elapsed;
        load_recorder.merge(phase.recorder);
        accepted.extend(phase.kept);
        if round + 1 < rounds {
            // What the server does after answering (an embedded server writes the answered
            // reservations from its outbox into the tables) finishes before the next round, as
            // after the last round: the sale's figures are read once it has (every read waits
            // for it), so that the next `/healthz` share does not pay for it.
            admin.stats(&sale_id).await?;
        }
    }
    drop(conns);
    let baseline = (!args.no_baseline).then(|| base_recorder.finish("healthz", base_elapsed));
    let load = load_recorder.finish("reserve", load_elapsed);

    if let Some(base) = &baseline {
        report.push(format!(
            "reservation throughput / healthz throughput = {:.0} / {:.0} = {:.2}",
            load.throughput(),
            base.throughput(),
            load.throughput() / base.throughput().max(1.0)
        ));
        if rounds > 1 {
            report.push(format!(
                "  in {rounds} rounds, each /healthz then reservations (req/s): {}",
                each_round.join(", ")
            ));
        }
    }
    if let Some(line) = cpu_per_request(
        baseline.as_ref().and_then(|b| Some((base_spent?, b))),
        (load_spent, &load),
    ) {
        report.push(line);
    }
    if let Some(load_own) = load_own {
        let base_own = baseline.as_ref().and_then(|b| Some((base_own?, b)));
        report.push(own_cpu_per_request(base_own, (load_own, &load)));
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

    fn spent(cpu_seconds: f64, served: f64) -> Spent {
        Spent {
            cpu_seconds,
            served,
        }
    }

    #[test]
    fn spends_add_up_over_the_rounds_until_an_edge_is_missing() {
        let at = |cpu_seconds, requests| {
            Some(Usage {
                cpu_seconds,
                requests,
            })
        };
        let total = Spent::add(Some(Spent::default()), at(1.0, 10.0), at(1.5, 110.0));
        let total = Spent::add(total, at(2.0, 200.0), at(2.25, 300.0)).unwrap();
        assert!((total.cpu_seconds - 0.75).abs() < 1e-9, "{total:?}");
        assert!((total.served - 200.0).abs() < 1e-9, "{total:?}");
        assert!(Spent::add(Some(total), None, at(3.0, 400.0)).is_none());
        assert!(Spent::add(None, at(3.0, 400.0), at(4.0, 500.0)).is_none());
    }

    #[test]
    fn cpu_per_request_is_the_phases_cpu_over_its_requests() {
        let (base, load) = (phase(1000), phase(500));
        let line = cpu_per_request(
            Some((spent(0.012, 1001.0), &base)),
            (Some(spent(0.009, 501.0)), &load),
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
    fn the_load_generators_cpu_is_per_request_of_each_phase() {
        let (base, load) = (phase(1000), phase(500));
        assert_eq!(
            own_cpu_per_request(Some((0.0064, &base)), (0.0041, &load)),
            "load generator CPU per request: healthz 6.4 us, reservation 8.2 us"
        );
        assert_eq!(
            own_cpu_per_request(None, (0.0041, &load)),
            "load generator CPU per request: reservation 8.2 us"
        );
        // Its own clock is there wherever the stampede runs.
        assert!(own_cpu_seconds().is_some_and(|s| s > 0.0));
    }

    #[test]
    fn nothing_is_claimed_for_a_server_that_served_part_of_the_requests() {
        // Behind a balancer: the instance answering /metrics served a third of each phase.
        let (base, load) = (phase(900), phase(900));
        let line = cpu_per_request(
            Some((spent(0.004, 300.0), &base)),
            (Some(spent(0.004, 300.0)), &load),
        )
        .unwrap();
        assert!(line.contains("not shown"), "{line}");
        assert!(line.contains("served 300 of the phase's 900"), "{line}");
        // A server that does not export its CPU time: no line at all.
        assert_eq!(cpu_per_request(None, (None, &load)), None);
    }
}
