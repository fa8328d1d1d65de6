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

flashmart_app::port_contracts!(store);

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
