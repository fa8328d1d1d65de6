//! flashmart's pure rules and types. Nothing here does I/O or knows about an async runtime, so the
//! rules can be unit- and property-tested in isolation and reused by every adapter.

pub mod address;
pub mod coupon;
pub mod email;
pub mod flash_sale;
pub mod id;
pub mod image;
pub mod money;
pub mod order;
pub mod password;
pub mod user;

pub use email::{Email, EmailError};
pub use id::{
    AddressId, CouponId, EventId, OrderId, PaymentId, ProductId, RefundId, ReservationId, SaleId,
    ScheduleId, SessionId, UserId, WebhookId,
};
pub use money::{Currency, Money, MoneyError, Quantity, QuantityError};
pub use order::OrderStatus;
pub use password::{NewPassword, PasswordError};
pub use user::{DisplayName, DisplayNameError, Role, RoleError, User};
