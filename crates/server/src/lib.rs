//! The `flashmart` binary's library half: configuration, logging, wiring of the chosen adapters
//! into the HTTP application, and the commands. Kept as a library so that integration tests
//! build exactly what the binary builds.

pub mod backup;
pub mod commands;
pub mod config;
pub mod lock;
pub mod logging;
pub mod records;
pub mod reload;
pub mod roles;
mod secrets;
mod webhook_sender;
pub mod wiring;
pub mod workers;

pub use config::Config;
pub use roles::Roles;
pub use webhook_sender::HttpWebhookSender;
pub use wiring::{Services, build};
