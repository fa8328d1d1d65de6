//! A schema of its own for each test, on the local PostgreSQL (`testing` feature): the test
//! database is `FLASHMART_TEST_DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/flashmart_test`, made when it is missing; each test's
//! schema is dropped when its `TestSchema` is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/flashmart_test";

/// A schema that lives as long as its test. Connections made through `options` or `url` use it
/// (`search_path`) and carry its name as their `application_name`, so that the drop can end
/// them first.
#[derive(Debug)]
pub struct TestSchema {
    base: String,
    admin: PgConnectOptions,
    name: String,
}

impl TestSchema {
    pub async fn create() -> Self {
        let base =
            std::env::var("FLASHMART_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let admin = database(&base).await;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self { base, admin, name }
    }

    /// Connection options that work in this schema.
    pub fn options(&self) -> PgConnectOptions {
        self.admin
            .clone()
            .application_name(&self.name)
            .options([("search_path", self.name.as_str())])
    }

    /// The same, as a `database.url`.
    pub fn url(&self) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}application_name={name}&options=-c%20search_path%3D{name}",
            self.base,
            name = self.name
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (options, name) = (self.admin.clone(), self.name.clone());
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
async fn database(url: &str) -> PgConnectOptions {
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
            admin.close().await.unwrap();
        }
        Err(e) => panic!(
            "PostgreSQL does not answer at {url}: {e} (scripts/setup starts the local server)"
        ),
    }
    options
}
