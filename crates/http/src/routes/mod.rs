//! The routers, one module per area. Every route is registered through `utoipa_axum::routes!`, so
//! a route cannot exist without its OpenAPI entry.

pub mod auth;
pub mod ops;
pub mod users;
