//! The PostgreSQL adapter against every port contract suite, each test in a schema of its own
//! (dropped afterwards) on the local server (`flashmart_postgres::testing`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use flashmart_postgres::PgStore;
use flashmart_postgres::testing::TestSchema;

async fn store() -> (TestSchema, Arc<PgStore>) {
    let schema = TestSchema::create().await;
    let store = PgStore::connect(schema.options(), 8).await.unwrap();
    (schema, Arc::new(store))
}

flashmart_app::port_contracts!(store);
