//! The SQLite adapter against the port contract suites, each test on its own database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use flashmart_app::ports::AccountStore;
use flashmart_app::testing;
use flashmart_embedded::{Durability, SqliteStore};
use tempfile::TempDir;

async fn store() -> (TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("test.db"), Durability::Normal)
        .await
        .unwrap();
    (dir, Arc::new(store))
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_dir, store) = store().await;
                testing::$name(store.as_ref()).await;
            }
        )*
    };
}

contract!(
    users_round_trip,
    email_is_unique,
    users_list_newest_first,
    refresh_rotation,
    an_expired_refresh_token_changes_nothing,
    password_change_revokes_every_session,
    revoking_twice_keeps_the_first_time,
    buyers_are_inserted_with_sessions,
    products_round_trip,
    products_search_filter_and_page,
    addresses_keep_one_default,
    checkout_takes_all_or_nothing,
    unpaid_orders_expire_and_restock,
    checkout_caps_open_orders_and_units,
    checkout_refuses_totals_that_do_not_fit,
    coupons_are_counted_once_per_use,
);

contract!(
    sales_round_trip,
    one_sale_per_schedule_slot,
    sales_list_by_phase,
    journal_makes_reservations_durable,
    a_failed_batch_leaves_nothing,
    purchases_by_code,
    decided_purchases_are_recorded,
    expiry_releases_stock,
    large_batches_are_written_whole,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_rotations_rotate_once() {
    let (_dir, store) = store().await;
    testing::racing_rotations_rotate_once(store as Arc<dyn AccountStore>).await;
}

#[tokio::test]
async fn reopening_keeps_the_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.db");
    let first = SqliteStore::open(&path, Durability::Full).await.unwrap();
    testing::users_round_trip(&first).await;
    first.close().await;
    let second = SqliteStore::open(&path, Durability::Normal).await.unwrap();
    let page = second
        .list_users(flashmart_app::PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    second.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_for_the_last_unit() {
    let (_dir, store) = store().await;
    testing::racing_for_the_last_unit(store).await;
}
