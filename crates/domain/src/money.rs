//! Money in integer minor units with its currency, and quantities. Floating point never touches a
//! price; every arithmetic step is checked, and amounts in different currencies never mix.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// An ISO 4217 code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be three letters, like USD")]
    BadCurrency,
    #[error("amount must not be negative")]
    Negative,
    #[error("amounts in {0} and {1} cannot be combined")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount is too large (a unit costs at most 100000000000 minor units)")]
    Overflow,
}

impl Currency {
    pub const USD: Self = Self(*b"USD");
    pub const EUR: Self = Self(*b"EUR");

    /// Accepts any case and stores upper case.
    pub fn parse(raw: &str) -> Result<Self, MoneyError> {
        let bytes: [u8; 3] = raw
            .trim()
            .as_bytes()
            .try_into()
            .map_err(|_| MoneyError::BadCurrency)?;
        if !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(MoneyError::BadCurrency);
        }
        Ok(Self(bytes.map(|b| b.to_ascii_uppercase())))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

/// A non-negative amount in minor units (cents) of one currency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    cents: i64,
    currency: Currency,
}

/// The highest price one unit may have (a billion in major units): with at most 99 units a line,
/// no order total can come near `i64::MAX`.
pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;

impl Money {
    /// A price of one unit: as `new`, and at most `MAX_PRICE_CENTS`.
    pub fn price(cents: i64, currency: Currency) -> Result<Self, MoneyError> {
        if cents > MAX_PRICE_CENTS {
            return Err(MoneyError::Overflow);
        }
        Self::new(cents, currency)
    }

    pub fn new(cents: i64, currency: Currency) -> Result<Self, MoneyError> {
        if cents < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self { cents, currency })
    }

    pub const fn zero(currency: Currency) -> Self {
        Self { cents: 0, currency }
    }

    pub const fn cents(&self) -> i64 {
        self.cents
    }

    pub const fn currency(&self) -> Currency {
        self.currency
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let cents = self
            .cents
            .checked_add(other.cents)
            .ok_or(MoneyError::Overflow)?;
        Ok(Self { cents, ..self })
    }

    /// `self - other`, floored at zero: a discount larger than the total makes it free, never
    /// negative.
    pub fn saturating_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        Ok(Self {
            cents: (self.cents - other.cents).max(0),
            ..self
        })
    }

    pub fn checked_mul(self, quantity: Quantity) -> Result<Money, MoneyError> {
        let cents = self
            .cents
            .checked_mul(i64::from(quantity.get()))
            .ok_or(MoneyError::Overflow)?;
        Ok(Self { cents, ..self })
    }

    /// `percent`% of this amount, rounded half up to the nearest minor unit.
    pub fn percent(self, percent: u8) -> Money {
        let share = (i128::from(self.cents) * i128::from(percent.min(100)) + 50) / 100;
        Self {
            // At most `self.cents`, so it fits.
            cents: i64::try_from(share).unwrap_or(self.cents),
            ..self
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.cents / 100,
            self.cents % 100,
            self.currency
        )
    }
}

/// How many units of one thing: at least one, at most [`Quantity::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(NonZeroU32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("must be at least 1")]
    TooSmall,
    #[error("must be at most {}", Quantity::MAX)]
    TooLarge,
}

impl Quantity {
    pub const MAX: u32 = 1_000_000;
    pub const ONE: Self = Self(NonZeroU32::MIN);

    pub fn new(n: i64) -> Result<Self, QuantityError> {
        if n < 1 {
            return Err(QuantityError::TooSmall);
        }
        let n = u32::try_from(n).map_err(|_| QuantityError::TooLarge)?;
        if n > Self::MAX {
            return Err(QuantityError::TooLarge);
        }
        NonZeroU32::new(n).map(Self).ok_or(QuantityError::TooSmall)
    }

    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<i64> for Quantity {
    type Error = QuantityError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Quantity> for u32 {
    fn from(value: Quantity) -> Self {
        value.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd(cents: i64) -> Money {
        Money::new(cents, Currency::USD).unwrap()
    }

    #[test]
    fn currencies_are_three_letters_in_upper_case() {
        assert_eq!(Currency::parse("usd").unwrap(), Currency::USD);
        assert_eq!(Currency::parse(" EUR ").unwrap(), Currency::EUR);
        for bad in ["", "US", "USDD", "U5D", "€€€"] {
            assert_eq!(
                Currency::parse(bad),
                Err(MoneyError::BadCurrency),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn negative_amounts_are_refused() {
        assert_eq!(Money::new(-1, Currency::USD), Err(MoneyError::Negative));
        assert_eq!(usd(0), Money::zero(Currency::USD));
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(usd(150).checked_add(usd(250)).unwrap(), usd(400));
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(
            usd(1).checked_add(Money::zero(Currency::EUR)),
            Err(MoneyError::CurrencyMismatch(Currency::USD, Currency::EUR))
        );
        assert_eq!(
            usd(1999).checked_mul(Quantity::new(3).unwrap()).unwrap(),
            usd(5997)
        );
        assert_eq!(
            usd(i64::MAX / 2).checked_mul(Quantity::new(3).unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(usd(500).saturating_sub(usd(700)).unwrap(), usd(0));
    }

    #[test]
    fn percentages_round_half_up() {
        assert_eq!(usd(1999).percent(10), usd(200));
        assert_eq!(usd(1).percent(50), usd(1));
        assert_eq!(usd(1).percent(49), usd(0));
        assert_eq!(usd(1234).percent(200), usd(1234));
    }

    #[test]
    fn displays_major_and_minor_units() {
        assert_eq!(usd(123_456).to_string(), "1234.56 USD");
        assert_eq!(usd(5).to_string(), "0.05 USD");
    }

    #[test]
    fn quantities_are_bounded() {
        assert_eq!(Quantity::new(0), Err(QuantityError::TooSmall));
        assert_eq!(Quantity::new(-3), Err(QuantityError::TooSmall));
        assert_eq!(Quantity::new(1).unwrap(), Quantity::ONE);
        assert_eq!(
            Quantity::new(i64::from(Quantity::MAX) + 1),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(Quantity::new(i64::MAX), Err(QuantityError::TooLarge));
    }

    #[test]
    fn serde_uses_the_validating_constructors() {
        let q: Quantity = serde_json::from_str("3").unwrap();
        assert_eq!(q.get(), 3);
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        let c: Currency = serde_json::from_str("\"eur\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"EUR\"");
    }

    proptest! {
        #[test]
        fn addition_commutes_and_never_goes_negative(a in 0i64..1_000_000_000_000, b in 0i64..1_000_000_000_000) {
            let x = usd(a).checked_add(usd(b)).unwrap();
            prop_assert_eq!(x, usd(b).checked_add(usd(a)).unwrap());
            prop_assert!(x.cents() >= a.max(b));
        }

        #[test]
        fn a_percentage_never_exceeds_the_whole(a in 0i64..i64::MAX, p in 0u8..=255) {
            let part = usd(a).percent(p);
            prop_assert!(part.cents() >= 0 && part.cents() <= a);
        }

        #[test]
        fn subtraction_is_floored_at_zero(a in 0i64..1_000_000, b in 0i64..1_000_000) {
            prop_assert_eq!(usd(a).saturating_sub(usd(b)).unwrap().cents(), (a - b).max(0));
        }
    }
}
