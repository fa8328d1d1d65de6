//! The routers, one module per area. Every route is registered through `utoipa_axum::routes!`, so
//! a route cannot exist without its OpenAPI entry.

pub mod admin_flash_sales;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod compat;
pub mod flash_sales;
pub mod images;
pub mod ops;
pub mod payments;
pub mod shop;
pub mod uploads;
pub mod users;
pub mod webhooks;
