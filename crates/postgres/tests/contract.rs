//! The PostgreSQL adapter against the port contract suites it implements, each test in a schema
//! of its own (dropped afterwards) on the local server: `FLASHMART_TEST_DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/flashmart_test`, a database made here when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use flashmart_postgres::PgStore;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/flashmart_test";

/// A schema that lives as long as its test.
struct Schema {
    options: PgConnectOptions,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (options, name) = (self.options.clone(), self.name.clone());
        // Dropped inside a test's runtime: a thread and a runtime of its own, waited for.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut conn = options.connect().await?;
                // The test's own connections go first: one may still hold a transaction whose
                // rollback waits for the test's runtime, which this drop is blocking.
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(&name)
                .execute(&mut conn)
                .await?;
                sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{name}\" CASCADE")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schema {}: {dropped:?}", self.name);
        }
    }
}

/// The test database, made when missing.
async fn database() -> PgConnectOptions {
    let url = std::env::var("FLASHMART_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let options: PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    match options.connect().await {
        Ok(conn) => {
            conn.close().await.unwrap();
        }
        // 3D000: no such database.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            let name = options.get_database().expect("the URL names a database");
            let mut admin = options
                .clone()
                .database("postgres")
                .connect()
                .await
                .unwrap();
            let made = sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut admin)
                .await;
            match made {
                Ok(_) => {}
                // Another test made it first (42P04, or 23505 when both raced in the catalog).
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
                Err(e) => panic!("cannot create the test database {name}: {e}"),
            }
        }
        Err(e) => panic!(
            "PostgreSQL does not answer at {url}: {e} (scripts/setup starts the local server)"
        ),
    }
    options
}

async fn store() -> (Schema, Arc<PgStore>) {
    let options = database().await;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = options.connect().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let store = PgStore::connect(
        options
            .clone()
            .application_name(&name)
            .options([("search_path", name.as_str())]),
        8,
    )
    .await
    .unwrap();
    (Schema { options, name }, Arc::new(store))
}

flashmart_app::port_contracts!(store);
