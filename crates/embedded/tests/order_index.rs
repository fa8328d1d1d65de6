//! The order indexer: a user's flash-sale orders are listed the same before, during and after it
//! runs, and what it had not reached when the process stopped is found again at the next open.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flashmart_app::testing;
use flashmart_embedded::{Durability, SqliteStore};

#[tokio::test]
async fn orders_are_listed_the_same_at_every_step_of_the_indexer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path, Durability::Normal).await.unwrap();
    // One order per step, so that every position of pending_from is seen.
    testing::flash_sale_orders_are_listed_for_their_buyer(&store, || async {
        store.index_flash_orders(1).await.unwrap().more
    })
    .await;
    assert_eq!(store.flash_orders_waiting().await.unwrap(), 0);
}

#[tokio::test]
async fn what_was_not_indexed_before_a_stop_is_indexed_after_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path, Durability::Normal).await.unwrap();
    testing::flash_sale_orders_are_listed_for_their_buyer(&store, || async { false }).await;
    assert_eq!(store.flash_orders_waiting().await.unwrap(), 9);
    store.close().await;
    drop(store);

    let reopened = SqliteStore::open(&path, Durability::Normal).await.unwrap();
    assert_eq!(reopened.flash_orders_waiting().await.unwrap(), 9);
    // Nothing was committed since the open: the writer is idle, so one run takes everything.
    assert_eq!(reopened.run_order_indexer().await.unwrap(), 9);
    assert_eq!(reopened.flash_orders_waiting().await.unwrap(), 0);
    assert_eq!(reopened.run_order_indexer().await.unwrap(), 0);
}
