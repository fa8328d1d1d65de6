//! The contracts every storage adapter must meet, as plain async functions over a fresh, empty
//! store. Each adapter's test suite calls every one of them (see `flashmart_embedded`'s
//! `tests/contract.rs`), so the SQLite and PostgreSQL adapters cannot drift apart in behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod catalog;
mod flash_sale;
mod shop;

pub use accounts::*;
pub use catalog::*;
pub use flash_sale::*;
pub use shop::*;
