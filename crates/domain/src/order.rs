//! The order state machine: `pending_payment -> paid -> refunded | partially_refunded`, and
//! `pending_payment -> cancelled | expired`. Stock is held while an order is pending or paid.

use serde::{Deserialize, Serialize};

use crate::Money;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
    Refunded,
    PartiallyRefunded,
}

/// A change the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from} cannot become {to}")]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    #[error("only a paid order can be refunded")]
    NotPaid,
    #[error("a refund must be more than zero")]
    Zero,
    #[error("refunds would exceed what was paid")]
    ExceedsPaid,
    #[error("refund currency differs from the order's")]
    Currency,
}

impl OrderStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "pending_payment",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Refunded => "refunded",
            Self::PartiallyRefunded => "partially_refunded",
        }
    }

    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (PendingPayment, Paid | Cancelled | Expired)
                | (Paid | PartiallyRefunded, Refunded | PartiallyRefunded)
        )
    }

    /// Every status that may become `self`: what a guarded write that moves an order to `self`
    /// checks the stored status against.
    pub const fn sources(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Paid | Cancelled | Expired => &[PendingPayment],
            Refunded | PartiallyRefunded => &[Paid, PartiallyRefunded],
            PendingPayment => &[],
        }
    }

    pub fn transition(self, next: OrderStatus) -> Result<OrderStatus, IllegalTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                from: self,
                to: next,
            })
        }
    }

    /// Whether the order's items are taken from stock (they go back on cancel or expiry).
    pub const fn holds_stock(self) -> bool {
        !matches!(self, Self::Cancelled | Self::Expired)
    }

    /// The status after refunding `amount` more of an order of `total` of which `refunded`
    /// was refunded before.
    pub fn after_refund(
        self,
        total: Money,
        refunded: Money,
        amount: Money,
    ) -> Result<OrderStatus, RefundError> {
        if !matches!(self, Self::Paid | Self::PartiallyRefunded) {
            return Err(RefundError::NotPaid);
        }
        if amount.cents() == 0 {
            return Err(RefundError::Zero);
        }
        let after = refunded
            .checked_add(amount)
            .map_err(|_| RefundError::Currency)?;
        if after.currency() != total.currency() {
            return Err(RefundError::Currency);
        }
        match after.cents().cmp(&total.cents()) {
            std::cmp::Ordering::Greater => Err(RefundError::ExceedsPaid),
            std::cmp::Ordering::Equal => Ok(Self::Refunded),
            std::cmp::Ordering::Less => Ok(Self::PartiallyRefunded),
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for OrderStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending_payment" => Self::PendingPayment,
            "paid" => Self::Paid,
            "cancelled" => Self::Cancelled,
            "expired" => Self::Expired,
            "refunded" => Self::Refunded,
            "partially_refunded" => Self::PartiallyRefunded,
            other => return Err(format!("unknown order status {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;
    use OrderStatus::*;

    fn usd(c: i64) -> Money {
        Money::new(c, Currency::USD).unwrap()
    }

    #[test]
    fn the_state_machine() {
        let all = [
            PendingPayment,
            Paid,
            Cancelled,
            Expired,
            Refunded,
            PartiallyRefunded,
        ];
        let allowed = [
            (PendingPayment, Paid),
            (PendingPayment, Cancelled),
            (PendingPayment, Expired),
            (Paid, Refunded),
            (Paid, PartiallyRefunded),
            (PartiallyRefunded, PartiallyRefunded),
            (PartiallyRefunded, Refunded),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
                assert_eq!(
                    to.sources().contains(&from),
                    from.can_become(to),
                    "{to}'s sources and {from}"
                );
            }
            assert_eq!(from.as_str().parse::<OrderStatus>().unwrap(), from);
        }
        assert!(Paid.transition(Cancelled).is_err());
        assert!(!Cancelled.holds_stock() && !Expired.holds_stock());
        assert!(PendingPayment.holds_stock() && Refunded.holds_stock());
    }

    #[test]
    fn refunds_add_up_to_the_total() {
        assert_eq!(
            Paid.after_refund(usd(1000), usd(0), usd(400)),
            Ok(PartiallyRefunded)
        );
        assert_eq!(
            PartiallyRefunded.after_refund(usd(1000), usd(400), usd(600)),
            Ok(Refunded)
        );
        assert_eq!(
            PartiallyRefunded.after_refund(usd(1000), usd(400), usd(601)),
            Err(RefundError::ExceedsPaid)
        );
        assert_eq!(
            Paid.after_refund(usd(1000), usd(0), usd(0)),
            Err(RefundError::Zero)
        );
        assert_eq!(
            PendingPayment.after_refund(usd(1000), usd(0), usd(1)),
            Err(RefundError::NotPaid)
        );
        let eur = Money::new(1, Currency::EUR).unwrap();
        assert_eq!(
            Paid.after_refund(usd(1000), usd(0), eur),
            Err(RefundError::Currency)
        );
    }
}
