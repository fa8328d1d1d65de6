//! Cost of one reservation on the in-memory ledger (take stock for a buyer, then give it back so
//! that every iteration meets the same stock), and whether it depends on how many sales are live
//! or how many buyers already hold something. It should not: sales are found in a hash map,
//! buyers in a sharded hash map, stock is one atomic per item.
//!
//! `cargo bench -p flashmart-app --bench ledger`

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flashmart_app::flash_sale::ledger::Ledger;
use time::OffsetDateTime;

fn reserve(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let mut group = c.benchmark_group("reserve_and_give_back");
    for (label, sales, buyers) in [
        ("1 sale, 1k buyers", 1usize, 1_000u64),
        ("1000 sales, 1k buyers", 1_000, 1_000),
        ("1 sale, 1M buyers", 1, 1_000_000),
    ] {
        let ledger = Ledger::default();
        for _ in 1..sales {
            ledger.install(common::sale(now, 10, 100, 0), now);
        }
        let sale = ledger.install(common::sale(now, 100, 1_000_000, buyers), now);
        let id = sale.record.id;
        let mut n = 0u64;
        group.bench_function(label, |b| {
            b.iter(|| {
                n = (n + 7919) % buyers;
                let sale = ledger.get(black_box(&id)).expect("sale");
                let hold = sale
                    .try_hold(1 + (n % 100) as u32, common::buyer(n), 1, now)
                    .expect("hold");
                hold.give_back();
            });
        });
    }
    group.finish();
}

criterion_group!(benches, reserve);
criterion_main!(benches);
