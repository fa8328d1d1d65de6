//! Integration tests of the whole application, built exactly as the binary builds it, each with
//! its own temporary data directory and a clock the test controls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod auth;
mod backup;
mod catalog;
mod ci;
mod commerce;
mod compat;
mod crash;
mod envelope;
mod exposure;
mod flash_sales;
mod hoarding;
mod instances;
mod limits;
mod ops;
mod orders;
mod process;
mod refunds;
mod reload;
mod retries;
mod roles;
mod scaled;
mod second_factor;
mod shutdown;
mod support;
mod telemetry;
mod tokens;
mod topology;
mod web;
mod webhooks;
