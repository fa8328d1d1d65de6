//! `flashmart stampede`: a load generator and invariant checker for a running flashmart server.
//! It loads only loopback addresses, bounded in requests and time, prints progress while it runs,
//! then throughput, latency percentiles and answers by status and code, and checks the engine's
//! invariants from the server's own view. A failed invariant makes it exit non-zero.

pub mod api;
mod contest;
pub mod http;
pub mod load;
mod reserve;
pub mod stats;

use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin account of that server (the demo admin by default).
    #[arg(long, default_value = "admin@demo.flashmart.dev")]
    pub admin_email: String,
    #[arg(long, default_value = "demo-admin-pass")]
    pub admin_password: String,
    /// Stop sending after this many seconds whatever is left.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ReserveArgs {
    #[command(flatten)]
    pub common: Common,
    /// Buyers, each with a real access token (the server needs loadtest.enabled = true).
    #[arg(long, default_value_t = 1000)]
    pub buyers: usize,
    /// Units of each item.
    #[arg(long, default_value_t = 500)]
    pub stock: u32,
    /// Items in the sale.
    #[arg(long, default_value_t = 1)]
    pub items: u32,
    /// Per-user limit across the sale.
    #[arg(long, default_value_t = 2)]
    pub limit: u32,
    /// Reservation attempts per buyer.
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// Units per reservation.
    #[arg(long, default_value_t = 1)]
    pub quantity: u32,
    /// Open connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Other live sales to create first (cost per reservation must not depend on them).
    #[arg(long, default_value_t = 0)]
    pub extra_sales: u32,
    /// Send an Idempotency-Key with every reservation.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Skip the /healthz baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// The phases in turns: the requests are split into this many rounds, each its share of
    /// /healthz requests and then its share of the reservations, on the same connections, so
    /// that both kinds of request meet the same moments of a shared, noisy machine. The figures
    /// are those of all rounds together; 1 sends every /healthz request first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ContestArgs {
    #[command(flatten)]
    pub common: Common,
    /// The server's contest API listener (`compat.addr`), loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub compat: String,
    /// Users, named u0, u1, ...; at least 1,000 so that demand exceeds the 10,000 items.
    #[arg(long, default_value_t = 1500)]
    pub users: usize,
    /// Checkouts each user tries beyond the limit of 10.
    #[arg(long, default_value_t = 2)]
    pub extra_attempts: u64,
    /// Open connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// N buyers with access tokens race for a sale of S units with limit L.
    Reserve(ReserveArgs),
    /// The 10,000-item hourly sale through /checkout and /purchase (compat.contest = true).
    Contest(ContestArgs),
}

/// Runs a scenario, printing its report to stdout. `Ok(false)` when an invariant failed.
pub async fn run(scenario: &Scenario) -> anyhow::Result<bool> {
    match scenario {
        Scenario::Reserve(args) => {
            let outcome = reserve::run(args).await?;
            if let Some(base) = &outcome.baseline {
                println!("{base}");
            }
            println!("{}", outcome.load);
            for line in &outcome.report {
                println!("{line}");
            }
            println!("{}", outcome.checks);
            Ok(outcome.checks.passed())
        }
        Scenario::Contest(args) => {
            let outcome = contest::run(args).await?;
            println!("{}", outcome.checkout);
            println!("{}", outcome.purchase);
            for line in &outcome.report {
                println!("{line}");
            }
            println!("{}", outcome.checks);
            Ok(outcome.checks.passed() && outcome.sell_out.is_some())
        }
    }
}
