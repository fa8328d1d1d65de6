//! flashmart's pure rules and types. Nothing here does I/O or knows about an async runtime, so the
//! rules can be unit- and property-tested in isolation and reused by every adapter.

pub mod email;
pub mod flash_sale;
pub mod id;
pub mod money;
pub mod password;
pub mod user;

pub use email::{Email, EmailError};
pub use id::{OrderId, ReservationId, SaleId, ScheduleId, SessionId, UserId};
pub use money::{Currency, Money, MoneyError, Quantity, QuantityError};
pub use password::{NewPassword, PasswordError};
pub use user::{DisplayName, DisplayNameError, Role, RoleError, User};
