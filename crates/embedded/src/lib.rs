//! The embedded adapter: everything flashmart stores, in one SQLite file in WAL mode, so that
//! `flashmart serve` needs nothing else installed. Writes go through a single connection (SQLite
//! has one writer anyway, and a lone writer never meets `SQLITE_BUSY`); reads use a small pool of
//! read-only connections that WAL lets run beside the writer.

mod accounts;
mod catalog;
mod db;
mod flash_sale;
mod journal;
mod order_index;
mod payments;
mod second_factor;
mod shop;

pub use db::{Durability, SqliteStore};
pub use order_index::IndexStep;
