//! Coupons: a percentage or a fixed amount off, with a minimum spend, a validity window, and
//! limits on total and per-user use. The rules decide the discount; counting uses atomically is
//! storage's job.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Money;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Discount {
    /// 1 to 100 percent off the subtotal.
    Percent { percent: u8 },
    /// A fixed amount off, never more than the subtotal.
    Fixed { amount: Money },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRules {
    pub discount: Discount,
    pub min_spend: Option<Money>,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    /// Uses across all users.
    pub max_uses: Option<u32>,
    /// Uses per user.
    pub per_user_limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    #[error("the coupon is not valid yet")]
    NotStarted,
    #[error("the coupon has expired")]
    Expired,
    #[error("the order does not reach the coupon's minimum spend")]
    MinSpendNotMet,
    #[error("the coupon is in another currency")]
    Currency,
    #[error("the coupon has been used up")]
    UsedUp,
    #[error("you have used this coupon as often as allowed")]
    UserLimitReached,
    #[error("invalid coupon: {0}")]
    Invalid(&'static str),
}

impl CouponRules {
    pub fn new(
        discount: Discount,
        min_spend: Option<Money>,
        starts_at: OffsetDateTime,
        ends_at: OffsetDateTime,
        max_uses: Option<u32>,
        per_user_limit: Option<u32>,
    ) -> Result<Self, CouponError> {
        match discount {
            Discount::Percent { percent } if !(1..=100).contains(&percent) => {
                return Err(CouponError::Invalid("percent must be 1 to 100"));
            }
            Discount::Fixed { amount } if amount.cents() == 0 => {
                return Err(CouponError::Invalid("amount must be more than zero"));
            }
            Discount::Fixed { amount }
                if min_spend.is_some_and(|m| m.currency() != amount.currency()) =>
            {
                return Err(CouponError::Invalid(
                    "min_spend and amount differ in currency",
                ));
            }
            _ => {}
        }
        if ends_at <= starts_at {
            return Err(CouponError::Invalid("ends_at must be after starts_at"));
        }
        if max_uses == Some(0) || per_user_limit == Some(0) {
            return Err(CouponError::Invalid("limits must be at least 1"));
        }
        Ok(Self {
            discount,
            min_spend,
            starts_at,
            ends_at,
            max_uses,
            per_user_limit,
        })
    }

    /// The discount on `subtotal` at `now`, given how often the coupon and this user have used
    /// it so far. Never more than the subtotal.
    pub fn discount_for(
        &self,
        subtotal: Money,
        now: OffsetDateTime,
        uses: u32,
        user_uses: u32,
    ) -> Result<Money, CouponError> {
        if now < self.starts_at {
            return Err(CouponError::NotStarted);
        }
        if now >= self.ends_at {
            return Err(CouponError::Expired);
        }
        if self.max_uses.is_some_and(|max| uses >= max) {
            return Err(CouponError::UsedUp);
        }
        if self.per_user_limit.is_some_and(|max| user_uses >= max) {
            return Err(CouponError::UserLimitReached);
        }
        if let Some(min) = self.min_spend {
            if min.currency() != subtotal.currency() {
                return Err(CouponError::Currency);
            }
            if subtotal.cents() < min.cents() {
                return Err(CouponError::MinSpendNotMet);
            }
        }
        match self.discount {
            Discount::Percent { percent } => Ok(subtotal.percent(percent)),
            Discount::Fixed { amount } => {
                if amount.currency() != subtotal.currency() {
                    return Err(CouponError::Currency);
                }
                Money::new(amount.cents().min(subtotal.cents()), subtotal.currency())
                    .map_err(|_| CouponError::Currency)
            }
        }
    }
}

/// Coupon codes: 3 to 32 letters, digits, `-` or `_`, compared without case.
pub fn normalize_code(raw: &str) -> Option<String> {
    let code = raw.trim().to_ascii_uppercase();
    let ok = (3..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn usd(c: i64) -> Money {
        Money::new(c, Currency::USD).unwrap()
    }

    fn rules(discount: Discount) -> CouponRules {
        CouponRules::new(
            discount,
            Some(usd(5000)),
            datetime!(2026-11-01 0:00 UTC),
            datetime!(2026-12-01 0:00 UTC),
            Some(100),
            Some(1),
        )
        .unwrap()
    }

    const NOW: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    #[test]
    fn percent_and_fixed_discounts() {
        let ten = rules(Discount::Percent { percent: 10 });
        assert_eq!(ten.discount_for(usd(12_345), NOW, 0, 0), Ok(usd(1_235)));
        let fixed = rules(Discount::Fixed { amount: usd(7_000) });
        assert_eq!(
            fixed.discount_for(usd(6_000), NOW, 0, 0),
            Ok(usd(6_000)),
            "capped"
        );
        assert_eq!(fixed.discount_for(usd(9_000), NOW, 0, 0), Ok(usd(7_000)));
    }

    #[test]
    fn refusals() {
        let c = rules(Discount::Percent { percent: 10 });
        assert_eq!(
            c.discount_for(usd(9_000), datetime!(2026-10-31 0:00 UTC), 0, 0),
            Err(CouponError::NotStarted)
        );
        assert_eq!(
            c.discount_for(usd(9_000), datetime!(2026-12-01 0:00 UTC), 0, 0),
            Err(CouponError::Expired)
        );
        assert_eq!(
            c.discount_for(usd(4_999), NOW, 0, 0),
            Err(CouponError::MinSpendNotMet)
        );
        assert_eq!(
            c.discount_for(usd(9_000), NOW, 100, 0),
            Err(CouponError::UsedUp)
        );
        assert_eq!(
            c.discount_for(usd(9_000), NOW, 5, 1),
            Err(CouponError::UserLimitReached)
        );
        let eur = Money::new(9_000, Currency::EUR).unwrap();
        assert_eq!(c.discount_for(eur, NOW, 0, 0), Err(CouponError::Currency));
    }

    #[test]
    fn invalid_rules_are_refused() {
        let start = datetime!(2026-11-01 0:00 UTC);
        let end = datetime!(2026-12-01 0:00 UTC);
        assert!(
            CouponRules::new(
                Discount::Percent { percent: 0 },
                None,
                start,
                end,
                None,
                None
            )
            .is_err()
        );
        assert!(
            CouponRules::new(
                Discount::Percent { percent: 101 },
                None,
                start,
                end,
                None,
                None
            )
            .is_err()
        );
        assert!(
            CouponRules::new(
                Discount::Percent { percent: 5 },
                None,
                end,
                start,
                None,
                None
            )
            .is_err()
        );
        assert!(
            CouponRules::new(
                Discount::Percent { percent: 5 },
                None,
                start,
                end,
                Some(0),
                None
            )
            .is_err()
        );
        assert!(
            CouponRules::new(
                Discount::Fixed { amount: usd(0) },
                None,
                start,
                end,
                None,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn codes_are_normalized() {
        assert_eq!(normalize_code(" welcome10 ").as_deref(), Some("WELCOME10"));
        assert_eq!(normalize_code("a"), None);
        assert_eq!(normalize_code("has space"), None);
        assert_eq!(normalize_code(&"x".repeat(33)), None);
    }

    proptest! {
        #[test]
        fn a_discount_never_exceeds_the_subtotal(sub in 5_000i64..10_000_000, p in 1u8..=100, fixed in 1i64..20_000_000) {
            for d in [Discount::Percent { percent: p }, Discount::Fixed { amount: usd(fixed) }] {
                let got = rules(d).discount_for(usd(sub), NOW, 0, 0).unwrap();
                prop_assert!(got.cents() >= 0 && got.cents() <= sub);
            }
        }
    }
}
