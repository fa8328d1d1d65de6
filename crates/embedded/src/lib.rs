//! The embedded adapter: everything flashmart stores, in one SQLite file in WAL mode, so that
//! `flashmart serve` needs nothing else installed. Writes go through a single connection (SQLite
//! has one writer anyway, and a lone writer never meets `SQLITE_BUSY`); reads use a small pool of
//! read-only connections that WAL lets run beside the writer.

mod accounts;
mod audit;
mod catalog;
mod db;
mod flash_sale;
mod journal;
mod order_index;
mod payments;
mod second_factor;
mod shop;
mod webhooks;

pub use db::{Durability, SqliteStore};
pub use order_index::IndexStep;

use std::path::{Path, PathBuf};

use flashmart_app::StoreError;
use sqlx::ConnectOptions as _;

/// The outbox directory beside the database at `db` (`flashmart.outbox/` beside `flashmart.db`):
/// reservations answered and not yet applied to the database.
pub fn outbox_dir(db: &Path) -> PathBuf {
    journal::outbox_path(db)
}

/// A consistent copy of the SQLite database at `src`, written to `dst` (which must not exist),
/// taken while a server may be writing it: `VACUUM INTO`, one read transaction, which neither
/// blocks the writer nor sees half of one of its transactions.
pub async fn snapshot(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let unavailable = |e: sqlx::Error| StoreError::Unavailable(format!("{}: {e}", src.display()));
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(src)
        .create_if_missing(false)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(unavailable)?;
    sqlx::query("VACUUM INTO ?")
        .bind(dst.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(unavailable)?;
    sqlx::Connection::close(conn).await.map_err(unavailable)
}
