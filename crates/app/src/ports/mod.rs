//! The ports the use cases need from storage. Each method is one use-case-shaped step and one
//! transaction inside the adapter; no transaction handle ever crosses a trait.
//!
//! Record stores are called through `Arc<dyn …>`: every call is a round-trip to a database, next to
//! which the boxed future `async_trait` costs is noise. The reservation hot path does not go
//! through them: it runs on the in-memory ledger and reaches storage once per group commit.

mod accounts;
mod audit;
mod catalog;
mod flash_sale;
mod lease;
mod payments;
mod second_factor;
mod shared_state;
mod shop;
mod webhooks;

use async_trait::async_trait;

pub use crate::error::StoreError;
pub use accounts::*;
pub use audit::*;
pub use catalog::*;
pub use flash_sale::*;
pub use lease::*;
pub use payments::*;
pub use second_factor::*;
pub use shared_state::*;
pub use shop::*;
pub use webhooks::*;

/// A dependency whose health `/readyz` reports.
#[async_trait]
pub trait Probe: Send + Sync + std::fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    async fn check(&self) -> Result<(), StoreError>;
}
