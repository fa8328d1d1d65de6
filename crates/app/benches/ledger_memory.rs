//! In-memory state per buyer: heap bytes the ledger allocates as 100,000 distinct buyers each
//! reserve one unit, counted by an instrumented global allocator (so the figure is the ledger's
//! own, not the process's resident memory).
//!
//! `cargo bench -p flashmart-app --bench ledger_memory`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::System;

use flashmart_app::flash_sale::ledger::Ledger;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use time::OffsetDateTime;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    const BUYERS: u64 = 100_000;
    let now = OffsetDateTime::now_utc();
    let ledger = Ledger::default();
    let sale = ledger.install(common::sale(now, 10_000, 100, 0), now);
    // Allocated before measuring: its own growth is not ledger state.
    let mut holds = Vec::with_capacity(BUYERS as usize);
    let region = Region::new(GLOBAL);
    for n in 0..BUYERS {
        let hold = sale
            .try_hold(1 + (n % 10_000) as u32, common::buyer(n), 1, now)
            .expect("hold");
        holds.push(hold);
    }
    let change = region.change();
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64;
    println!(
        "ledger heap for {BUYERS} buyers holding one unit each: {net} bytes net, {:.1} bytes per \
         buyer ({} buyers in the map)",
        net as f64 / BUYERS as f64,
        sale.buyer_count()
    );
    drop(holds);
}
