//! The scaled adapter's records: the storage ports on PostgreSQL, so that several stateless
//! instances share one database. Every port method is one transaction (or one statement);
//! every write that must not happen twice is a guarded, conditional statement; a constraint that
//! refuses a write is reported by its name, which the migrations give as the application knows
//! it (`users.email`). The schema is `migrations/postgres`, applied at connect.
//!
//! Ports arrive here one suite at a time, each proved by the same contract tests the SQLite
//! adapter passes (`flashmart_app::port_contracts!`): today accounts and sessions, second
//! factors, the catalog, the shop (addresses, carts, coupons, orders), payments and refunds,
//! and flash sales with the reservation journal.

mod accounts;
mod audit;
mod catalog;
mod db;
mod flash_sale;
mod journal;
mod payments;
mod second_factor;
mod shop;
#[cfg(feature = "testing")]
pub mod testing;
mod webhooks;

pub use db::{PgStore, SoleEngine};
/// How to reach the database: parsed from a `postgres://` URL.
pub use sqlx::postgres::PgConnectOptions;
