//! Typed identifiers, so a user id can never be passed where a session id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUID v7), which keeps B-tree inserts local.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A registered account.
    UserId
);
uuid_id!(
    /// One login: the access tokens and the family of refresh tokens it hands out.
    SessionId
);
uuid_id!(
    /// A flash sale.
    SaleId
);
uuid_id!(
    /// Stock held for a buyer in a flash sale.
    ReservationId
);
uuid_id!(
    /// An order, from a cart or from a flash-sale reservation.
    OrderId
);
uuid_id!(
    /// A recurring flash-sale schedule.
    ScheduleId
);
uuid_id!(
    /// A catalog product.
    ProductId
);
uuid_id!(
    /// A user's saved address.
    AddressId
);
uuid_id!(
    /// A coupon.
    CouponId
);
uuid_id!(
    /// A payment attempt for an order.
    PaymentId
);
uuid_id!(
    /// One refund of a payment; also the provider's idempotency key for it.
    RefundId
);
uuid_id!(
    /// An endpoint outbound webhooks are delivered to.
    WebhookId
);
uuid_id!(
    /// One outbound webhook event: its `id` in the body, the key receivers deduplicate on.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = UserId::new();
        let parsed: UserId = id.to_string().parse().unwrap();
        assert_eq!(id, parsed);
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let a = SessionId::new();
        let b = SessionId::new();
        assert!(a < b);
    }
}
