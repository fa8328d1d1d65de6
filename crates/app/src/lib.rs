//! flashmart's use cases, one module per business area, and the ports (small traits) they need
//! from storage and the outside world. Adapters implement the ports; the HTTP layer calls the use
//! cases. Nothing here knows about HTTP or SQL.

pub mod audit;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod error;
pub mod flash_sale;
pub mod health;
pub mod leader;
pub mod page;
pub mod payments;
pub mod ports;
pub mod rate_limit;
pub mod shop;
pub mod signature;
#[cfg(feature = "testing")]
pub mod testing;
pub mod uploads;
pub mod webhooks;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{FieldError, StoreError};
pub use page::{Page, PageRequest};
