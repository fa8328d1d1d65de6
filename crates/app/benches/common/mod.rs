//! A live sale for the ledger benchmarks.

#![allow(clippy::expect_used, dead_code)]

use flashmart_app::flash_sale::model::{BuyerId, LiveItemState, LiveSaleState, SaleRecord};
use flashmart_domain::flash_sale::{SaleRules, SaleWindow};
use flashmart_domain::{Currency, SaleId};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

pub fn buyer(n: u64) -> BuyerId {
    // Spread like real (random) ids, not sequential ones.
    BuyerId(Uuid::from_u128(
        u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
    ))
}

/// A sale live at `now` with `items` items of `stock` units, limit 10, where buyers
/// `0..holders` already hold one unit each.
pub fn sale(now: OffsetDateTime, items: u32, stock: u32, holders: u64) -> LiveSaleState {
    let window =
        SaleWindow::new(now - Duration::minutes(1), now + Duration::hours(1)).expect("window");
    LiveSaleState {
        sale: SaleRecord {
            id: SaleId::new(),
            name: "bench".into(),
            rules: SaleRules::new(window, 10, 900).expect("rules"),
            currency: Currency::USD,
            slot: None,
            item_count: items,
            total_stock: u64::from(items) * u64::from(stock),
            created_at: now,
        },
        items: (1..=items)
            .map(|no| LiveItemState {
                no,
                stock,
                price_cents: 100,
                name: "bench item".into(),
                held: 0,
            })
            .collect(),
        buyers: (0..holders).map(|n| (buyer(n), 1)).collect(),
    }
}
