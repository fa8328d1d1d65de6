//! What a cart costs and whether it can be ordered: the one place these rules live. `Shop::cart`
//! shows them, and every adapter's checkout applies them inside its transaction to what it read
//! there, so the adapters only read, take stock and write, each with a guarded statement.

use flashmart_domain::coupon::CouponError;
use flashmart_domain::{Currency, Money, MoneyError, Quantity};
use time::OffsetDateTime;

use super::model::{CartLine, CheckoutOutcome, Coupon, OrderLine};
use crate::catalog::Product;

/// The total of `quantity` units at `price`; `None` when it does not fit.
pub fn line_total(price: Money, quantity: u32) -> Option<Money> {
    let quantity = Quantity::new(i64::from(quantity)).ok()?;
    price.checked_mul(quantity).ok()
}

/// The sum of the lines whose product is on sale, when every one of them can be priced, they
/// share one currency and the sum fits: what a cart shows before checkout.
pub fn subtotal(lines: &[CartLine]) -> Option<Money> {
    let mut sum: Option<Money> = None;
    for line in lines {
        let Some(product) = line.product.as_ref().filter(|p| p.active) else {
            continue;
        };
        let total = line_total(product.price, line.quantity)?;
        sum = Some(match sum {
            None => total,
            Some(s) => s.checked_add(total).ok()?,
        });
    }
    sum
}

/// A cart line that can be ordered, with its total.
#[derive(Debug, Clone, Copy)]
pub struct PricedLine<'a> {
    pub product: &'a Product,
    pub quantity: u32,
    pub total: Money,
}

/// A cart that can be ordered as it stands, stock aside (taking it is the adapter's guarded
/// write).
#[derive(Debug, Clone)]
pub struct PricedCart<'a> {
    pub lines: Vec<PricedLine<'a>>,
    pub subtotal: Money,
}

/// What an order costs: the subtotal, the coupon's discount and what is left to pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub subtotal: Money,
    pub discount: Money,
    pub total: Money,
}

/// Prices a non-empty cart for an order: every product still on sale, no line above
/// `max_units`, one currency, totals that fit. The first line that fails (in cart order) is the
/// refusal.
pub fn price_for_order(
    lines: &[CartLine],
    max_units: u32,
) -> Result<PricedCart<'_>, CheckoutOutcome> {
    let mut products = Vec::with_capacity(lines.len());
    for line in lines {
        match &line.product {
            Some(p) if p.active && line.quantity > max_units => {
                return Err(CheckoutOutcome::TooManyUnits {
                    product_id: p.id,
                    name: p.name.clone(),
                });
            }
            Some(p) if p.active => products.push((p, line.quantity)),
            other => {
                return Err(CheckoutOutcome::Unavailable {
                    product_id: line.product_id,
                    name: other.as_ref().map(|p| p.name.clone()),
                });
            }
        }
    }
    let Some((first, _)) = products.first() else {
        return Err(CheckoutOutcome::EmptyCart);
    };
    let mut subtotal = Money::zero(first.price.currency());
    let mut priced = Vec::with_capacity(products.len());
    for (product, quantity) in products {
        let total = line_total(product.price, quantity)
            .ok_or(CheckoutOutcome::TooLarge { field: "quantity" })?;
        subtotal = match subtotal.checked_add(total) {
            Ok(s) => s,
            Err(MoneyError::CurrencyMismatch(..)) => return Err(CheckoutOutcome::MixedCurrencies),
            Err(_) => return Err(CheckoutOutcome::TooLarge { field: "total" }),
        };
        priced.push(PricedLine {
            product,
            quantity,
            total,
        });
    }
    Ok(PricedCart {
        lines: priced,
        subtotal,
    })
}

impl PricedCart<'_> {
    pub fn currency(&self) -> Currency {
        self.subtotal.currency()
    }

    /// The totals without a coupon.
    pub fn totals(&self) -> Totals {
        Totals {
            subtotal: self.subtotal,
            discount: Money::zero(self.currency()),
            total: self.subtotal,
        }
    }

    /// The totals with `coupon`, which the whole shop has used `coupon.uses` times and this
    /// buyer `user_uses` times, at `now`; its rules refuse or give the discount.
    pub fn totals_with(
        &self,
        coupon: &Coupon,
        now: OffsetDateTime,
        user_uses: u32,
    ) -> Result<Totals, CheckoutOutcome> {
        let discount = coupon
            .rules
            .discount_for(self.subtotal, now, coupon.uses, user_uses)
            .map_err(CheckoutOutcome::Coupon)?;
        let total = self
            .subtotal
            .saturating_sub(discount)
            // `discount_for` gives a discount in the subtotal's currency or refuses.
            .map_err(|_| CheckoutOutcome::Coupon(CouponError::Currency))?;
        Ok(Totals {
            subtotal: self.subtotal,
            discount,
            total,
        })
    }

    /// The order's lines as they are sold now (name and price kept with the order), numbered from
    /// 1.
    pub fn order_lines(&self) -> Vec<OrderLine> {
        (1..)
            .zip(&self.lines)
            .map(|(line, priced)| OrderLine {
                line,
                product_id: Some(priced.product.id),
                sale_id: None,
                item_no: None,
                name: priced.product.name.clone(),
                unit_price_cents: priced.product.price.cents(),
                quantity: priced.quantity,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use flashmart_domain::coupon::{CouponRules, Discount};
    use flashmart_domain::{CouponId, ProductId};
    use time::Duration;

    use super::*;

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn product(name: &str, cents: i64, currency: Currency) -> Product {
        Product {
            id: ProductId::new(),
            name: name.into(),
            description: String::new(),
            price: Money::new(cents, currency).unwrap(),
            stock: 10,
            sold: 0,
            category: None,
            images: Vec::new(),
            active: true,
            created_at: at(),
            updated_at: at(),
            version: 1,
        }
    }

    fn line(product: Option<Product>, quantity: u32) -> CartLine {
        CartLine {
            product_id: product.as_ref().map_or_else(ProductId::new, |p| p.id),
            quantity,
            product,
            added_at: at(),
        }
    }

    fn usd(cents: i64) -> Money {
        Money::new(cents, Currency::USD).unwrap()
    }

    #[test]
    fn a_cart_is_priced_line_by_line() {
        let lines = [
            line(Some(product("Mug", 1250, Currency::USD)), 2),
            line(Some(product("Tea", 499, Currency::USD)), 3),
        ];
        let priced = price_for_order(&lines, 99).unwrap();
        assert_eq!(subtotal(&lines), Some(usd(3997)));
        assert_eq!(
            priced.lines.iter().map(|l| l.total).collect::<Vec<_>>(),
            [usd(2500), usd(1497)]
        );
        assert_eq!(priced.totals().total, usd(3997));
        let order_lines = priced.order_lines();
        assert_eq!(
            order_lines
                .iter()
                .map(|l| (l.line, l.name.as_str(), l.unit_price_cents, l.quantity))
                .collect::<Vec<_>>(),
            [(1, "Mug", 1250, 2), (2, "Tea", 499, 3)]
        );
    }

    #[test]
    fn the_first_line_that_cannot_be_ordered_is_the_refusal() {
        let mut gone = product("Gone", 100, Currency::USD);
        gone.active = false;
        let lines = [
            line(Some(product("Many", 100, Currency::USD)), 5),
            line(Some(gone), 1),
        ];
        assert!(matches!(
            price_for_order(&lines, 4),
            Err(CheckoutOutcome::TooManyUnits { name, .. }) if name == "Many"
        ));
        assert!(matches!(
            price_for_order(&lines, 5),
            Err(CheckoutOutcome::Unavailable { name: Some(name), .. }) if name == "Gone"
        ));
        assert!(matches!(
            price_for_order(&[line(None, 1)], 5),
            Err(CheckoutOutcome::Unavailable { name: None, .. })
        ));
        assert!(matches!(
            price_for_order(&[], 5),
            Err(CheckoutOutcome::EmptyCart)
        ));
        // What is on sale still adds up for the cart to show.
        assert_eq!(subtotal(&lines), Some(usd(500)));
    }

    #[test]
    fn one_currency_and_totals_that_fit() {
        let mixed = [
            line(Some(product("Here", 100, Currency::USD)), 1),
            line(Some(product("There", 100, Currency::EUR)), 1),
        ];
        assert!(matches!(
            price_for_order(&mixed, 5),
            Err(CheckoutOutcome::MixedCurrencies)
        ));
        assert_eq!(subtotal(&mixed), None);
        let huge = product("Huge", i64::MAX, Currency::USD);
        assert!(matches!(
            price_for_order(&[line(Some(huge.clone()), 2)], 5),
            Err(CheckoutOutcome::TooLarge { field: "quantity" })
        ));
        assert!(matches!(
            price_for_order(&[line(Some(huge.clone()), 1), line(Some(huge), 1)], 5),
            Err(CheckoutOutcome::TooLarge { field: "total" })
        ));
    }

    #[test]
    fn a_coupon_gives_its_discount_or_its_refusal() {
        let lines = [line(Some(product("Mug", 2000, Currency::USD)), 1)];
        let priced = price_for_order(&lines, 5).unwrap();
        let coupon = Coupon {
            id: CouponId::new(),
            code: "WELCOME10".into(),
            rules: CouponRules {
                discount: Discount::Percent { percent: 10 },
                min_spend: None,
                starts_at: at() - Duration::days(1),
                ends_at: at() + Duration::days(1),
                max_uses: Some(5),
                per_user_limit: Some(1),
            },
            uses: 0,
            active: true,
            created_at: at(),
        };
        assert_eq!(
            priced.totals_with(&coupon, at(), 0).unwrap(),
            Totals {
                subtotal: usd(2000),
                discount: usd(200),
                total: usd(1800),
            }
        );
        assert!(matches!(
            priced.totals_with(&coupon, at(), 1),
            Err(CheckoutOutcome::Coupon(CouponError::UserLimitReached))
        ));
        assert!(matches!(
            priced.totals_with(&coupon, at() + Duration::days(2), 0),
            Err(CheckoutOutcome::Coupon(CouponError::Expired))
        ));
    }
}
