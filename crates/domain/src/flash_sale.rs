//! The flash-sale rules: the sale window, per-user limits, reservation lifetimes, the states a
//! reservation goes through, and the stock accounting every adapter must keep:
//! for each item, reserved + sold + remaining = stock, with remaining never below zero.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// Why a reservation attempt is refused by the rules (not by storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlashSaleError {
    #[error("the sale has not started")]
    NotStarted,
    #[error("the sale has ended")]
    Ended,
    #[error("sold out")]
    SoldOut,
    #[error("per-user limit reached")]
    LimitReached,
}

/// Where a sale stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalePhase {
    Upcoming,
    Live,
    Ended,
}

impl SalePhase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Upcoming => "upcoming",
            Self::Live => "live",
            Self::Ended => "ended",
        }
    }
}

impl std::str::FromStr for SalePhase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "upcoming" => Ok(Self::Upcoming),
            "live" => Ok(Self::Live),
            "ended" => Ok(Self::Ended),
            other => Err(format!(
                "unknown sale status {other:?}: expected upcoming, live or ended"
            )),
        }
    }
}

/// `[starts_at, ends_at)`: a sale is live from its start, inclusive, to its end, exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleWindow {
    starts_at: OffsetDateTime,
    ends_at: OffsetDateTime,
}

/// A rule a new sale's settings broke, with the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleViolation {
    pub field: &'static str,
    pub message: String,
}

fn violation(field: &'static str, message: impl fmt::Display) -> RuleViolation {
    RuleViolation {
        field,
        message: message.to_string(),
    }
}

impl SaleWindow {
    pub fn new(starts_at: OffsetDateTime, ends_at: OffsetDateTime) -> Result<Self, RuleViolation> {
        if ends_at <= starts_at {
            return Err(violation("ends_at", "must be after starts_at"));
        }
        Ok(Self { starts_at, ends_at })
    }

    pub const fn starts_at(&self) -> OffsetDateTime {
        self.starts_at
    }

    pub const fn ends_at(&self) -> OffsetDateTime {
        self.ends_at
    }

    pub fn phase(&self, now: OffsetDateTime) -> SalePhase {
        if now < self.starts_at {
            SalePhase::Upcoming
        } else if now < self.ends_at {
            SalePhase::Live
        } else {
            SalePhase::Ended
        }
    }
}

/// Bounds on a sale's settings.
pub const MAX_PER_USER_LIMIT: u32 = 10_000;
pub const MIN_RESERVATION_TTL_SECS: i64 = 10;
pub const MAX_RESERVATION_TTL_SECS: i64 = 7 * 24 * 60 * 60;

/// What governs every reservation of one sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRules {
    window: SaleWindow,
    per_user_limit: u32,
    reservation_ttl: Duration,
}

impl SaleRules {
    pub fn new(
        window: SaleWindow,
        per_user_limit: i64,
        reservation_ttl_secs: i64,
    ) -> Result<Self, RuleViolation> {
        let per_user_limit = u32::try_from(per_user_limit)
            .ok()
            .filter(|n| (1..=MAX_PER_USER_LIMIT).contains(n))
            .ok_or_else(|| {
                violation(
                    "per_user_limit",
                    format!("must be between 1 and {MAX_PER_USER_LIMIT}"),
                )
            })?;
        if !(MIN_RESERVATION_TTL_SECS..=MAX_RESERVATION_TTL_SECS).contains(&reservation_ttl_secs) {
            return Err(violation(
                "reservation_ttl_secs",
                format!(
                    "must be between {MIN_RESERVATION_TTL_SECS} and {MAX_RESERVATION_TTL_SECS}"
                ),
            ));
        }
        Ok(Self {
            window,
            per_user_limit,
            reservation_ttl: Duration::seconds(reservation_ttl_secs),
        })
    }

    pub const fn window(&self) -> &SaleWindow {
        &self.window
    }

    pub const fn per_user_limit(&self) -> u32 {
        self.per_user_limit
    }

    pub const fn reservation_ttl(&self) -> Duration {
        self.reservation_ttl
    }

    /// The checks that need neither stock nor storage: the window, and whether `quantity` more
    /// would take a buyer already holding `held` past the limit.
    pub fn admit(
        &self,
        now: OffsetDateTime,
        quantity: u32,
        held: u32,
    ) -> Result<(), FlashSaleError> {
        match self.window.phase(now) {
            SalePhase::Upcoming => Err(FlashSaleError::NotStarted),
            SalePhase::Ended => Err(FlashSaleError::Ended),
            SalePhase::Live if held.saturating_add(quantity) > self.per_user_limit => {
                Err(FlashSaleError::LimitReached)
            }
            SalePhase::Live => Ok(()),
        }
    }

    /// When a reservation made at `now` lapses unless paid for.
    pub fn expires_at(&self, now: OffsetDateTime) -> OffsetDateTime {
        now + self.reservation_ttl
    }
}

/// The life of a reservation: `reserved`, then `purchased` (paid), `expired` (not paid in time)
/// or `cancelled`. Only `reserved` can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Reserved,
    Purchased,
    Expired,
    Cancelled,
}

impl ReservationStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Purchased => "purchased",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn can_become(self, next: ReservationStatus) -> bool {
        matches!(
            (self, next),
            (
                Self::Reserved,
                Self::Purchased | Self::Expired | Self::Cancelled
            )
        )
    }

    /// Whether the quantity is taken from stock (and counts against the buyer's limit).
    pub const fn holds_stock(self) -> bool {
        matches!(self, Self::Reserved | Self::Purchased)
    }
}

impl std::str::FromStr for ReservationStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reserved" => Ok(Self::Reserved),
            "purchased" => Ok(Self::Purchased),
            "expired" => Ok(Self::Expired),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!("unknown reservation status {other:?}")),
        }
    }
}

/// The accounting of one item's stock. Adapters keep the same numbers in their own way (atomics,
/// a Lua script); this is the reference they are tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ItemStock {
    stock: u32,
    reserved: u32,
    sold: u32,
}

impl ItemStock {
    pub const fn new(stock: u32) -> Self {
        Self {
            stock,
            reserved: 0,
            sold: 0,
        }
    }

    pub const fn stock(&self) -> u32 {
        self.stock
    }

    pub const fn reserved(&self) -> u32 {
        self.reserved
    }

    pub const fn sold(&self) -> u32 {
        self.sold
    }

    pub const fn remaining(&self) -> u32 {
        self.stock - self.reserved - self.sold
    }

    /// Holds `quantity`; refused whole, never partly, when not that many remain.
    pub fn reserve(&mut self, quantity: u32) -> Result<(), FlashSaleError> {
        if quantity > self.remaining() {
            return Err(FlashSaleError::SoldOut);
        }
        self.reserved += quantity;
        Ok(())
    }

    /// A paid reservation: held becomes sold.
    pub fn purchase(&mut self, quantity: u32) {
        let quantity = quantity.min(self.reserved);
        self.reserved -= quantity;
        self.sold += quantity;
    }

    /// An expired or cancelled reservation: held goes back to remaining.
    pub fn release(&mut self, quantity: u32) {
        self.reserved -= quantity.min(self.reserved);
    }
}

/// How often a schedule makes a sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recurrence {
    /// Every hour on the hour (UTC).
    Hourly,
    /// Every day at midnight UTC.
    Daily,
}

impl Recurrence {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
        }
    }

    pub const fn period(self) -> Duration {
        match self {
            Self::Hourly => Duration::HOUR,
            Self::Daily => Duration::DAY,
        }
    }

    /// The start of the slot `now` falls in.
    pub fn slot_start(self, now: OffsetDateTime) -> OffsetDateTime {
        let period = self.period().whole_seconds();
        let t = now.unix_timestamp();
        let start = t - t.rem_euclid(period);
        OffsetDateTime::from_unix_timestamp(start).unwrap_or(now)
    }
}

impl std::str::FromStr for Recurrence {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hourly" => Ok(Self::Hourly),
            "daily" => Ok(Self::Daily),
            other => Err(format!(
                "unknown recurrence {other:?}: expected hourly or daily"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use time::macros::datetime;

    fn rules(limit: i64) -> SaleRules {
        let w = SaleWindow::new(
            datetime!(2026-11-22 10:00 UTC),
            datetime!(2026-11-22 11:00 UTC),
        )
        .unwrap();
        SaleRules::new(w, limit, 900).unwrap()
    }

    #[test]
    fn the_window_is_half_open() {
        let r = rules(2);
        let w = r.window();
        assert_eq!(
            w.phase(datetime!(2026-11-22 09:59:59.999 UTC)),
            SalePhase::Upcoming
        );
        assert_eq!(w.phase(datetime!(2026-11-22 10:00 UTC)), SalePhase::Live);
        assert_eq!(
            w.phase(datetime!(2026-11-22 10:59:59.999 UTC)),
            SalePhase::Live
        );
        assert_eq!(w.phase(datetime!(2026-11-22 11:00 UTC)), SalePhase::Ended);
        assert!(SaleWindow::new(w.ends_at(), w.starts_at()).is_err());
        assert!(SaleWindow::new(w.starts_at(), w.starts_at()).is_err());
    }

    #[test]
    fn admission_checks_window_then_limit() {
        let r = rules(3);
        assert_eq!(
            r.admit(datetime!(2026-11-22 09:00 UTC), 1, 0),
            Err(FlashSaleError::NotStarted)
        );
        assert_eq!(
            r.admit(datetime!(2026-11-22 12:00 UTC), 1, 0),
            Err(FlashSaleError::Ended)
        );
        let live = datetime!(2026-11-22 10:30 UTC);
        assert_eq!(r.admit(live, 3, 0), Ok(()));
        assert_eq!(r.admit(live, 1, 2), Ok(()));
        assert_eq!(r.admit(live, 2, 2), Err(FlashSaleError::LimitReached));
        assert_eq!(
            r.admit(live, u32::MAX, 1),
            Err(FlashSaleError::LimitReached)
        );
        assert_eq!(r.expires_at(live), datetime!(2026-11-22 10:45 UTC));
    }

    #[test]
    fn settings_are_bounded() {
        let w = *rules(1).window();
        assert_eq!(
            SaleRules::new(w, 0, 900).unwrap_err().field,
            "per_user_limit"
        );
        assert_eq!(
            SaleRules::new(w, -1, 900).unwrap_err().field,
            "per_user_limit"
        );
        assert_eq!(
            SaleRules::new(w, 1, 5).unwrap_err().field,
            "reservation_ttl_secs"
        );
        assert!(SaleRules::new(w, 10_000, 10).is_ok());
    }

    #[test]
    fn only_a_live_reservation_changes_state() {
        use ReservationStatus::*;
        for next in [Purchased, Expired, Cancelled] {
            assert!(Reserved.can_become(next));
            for terminal in [Purchased, Expired, Cancelled] {
                assert!(!terminal.can_become(next));
            }
        }
        assert!(!Reserved.can_become(Reserved));
        assert!(Reserved.holds_stock() && Purchased.holds_stock());
        assert!(!Expired.holds_stock() && !Cancelled.holds_stock());
        for s in [Reserved, Purchased, Expired, Cancelled] {
            assert_eq!(s.as_str().parse::<ReservationStatus>().unwrap(), s);
        }
    }

    #[test]
    fn slots_start_on_the_hour_and_the_day() {
        let t = datetime!(2026-11-22 10:37:12.5 UTC);
        assert_eq!(
            Recurrence::Hourly.slot_start(t),
            datetime!(2026-11-22 10:00 UTC)
        );
        assert_eq!(
            Recurrence::Daily.slot_start(t),
            datetime!(2026-11-22 00:00 UTC)
        );
        let on = datetime!(2026-11-22 10:00 UTC);
        assert_eq!(Recurrence::Hourly.slot_start(on), on);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve { user: u8, qty: u32 },
        Purchase(usize),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 1u32..5).prop_map(|(user, qty)| Op::Reserve { user, qty }),
            (0usize..64).prop_map(Op::Purchase),
            (0usize..64).prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Any sequence of reservations, purchases and releases keeps the conservation law, never
        /// drives remaining below zero, and never lets a buyer hold more than the limit.
        #[test]
        fn stock_and_limits_are_conserved(stock in 0u32..40, limit in 1i64..8, ops in prop::collection::vec(op(), 0..200)) {
            let r = rules(limit);
            let now = datetime!(2026-11-22 10:30 UTC);
            let mut item = ItemStock::new(stock);
            let mut held: HashMap<u8, u32> = HashMap::new();
            // (user, qty, status) of every accepted reservation
            let mut reservations: Vec<(u8, u32, ReservationStatus)> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve { user, qty } => {
                        let h = held.get(&user).copied().unwrap_or(0);
                        if r.admit(now, qty, h).is_ok() && item.reserve(qty).is_ok() {
                            *held.entry(user).or_default() += qty;
                            reservations.push((user, qty, ReservationStatus::Reserved));
                        }
                    }
                    Op::Purchase(i) | Op::Release(i) if reservations.is_empty() => { let _ = i; }
                    Op::Purchase(i) => {
                        let n = reservations.len();
                        let (_, qty, status) = &mut reservations[i % n];
                        if status.can_become(ReservationStatus::Purchased) {
                            *status = ReservationStatus::Purchased;
                            item.purchase(*qty);
                        }
                    }
                    Op::Release(i) => {
                        let n = reservations.len();
                        let (user, qty, status) = &mut reservations[i % n];
                        if status.can_become(ReservationStatus::Expired) {
                            *status = ReservationStatus::Expired;
                            item.release(*qty);
                            *held.get_mut(user).unwrap() -= *qty;
                        }
                    }
                }
                prop_assert_eq!(item.reserved() + item.sold() + item.remaining(), stock);
                let holding: u32 = reservations.iter().filter(|(_, _, s)| s.holds_stock()).map(|(_, q, _)| q).sum();
                prop_assert_eq!(holding, item.reserved() + item.sold());
                for (user, h) in &held {
                    prop_assert!(*h <= r.per_user_limit(), "user {} holds {}", user, h);
                    let from_records: u32 = reservations.iter().filter(|(u, _, s)| u == user && s.holds_stock()).map(|(_, q, _)| q).sum();
                    prop_assert_eq!(*h, from_records);
                }
            }
        }

        /// Reserving more than remains is refused whole and changes nothing.
        #[test]
        fn an_oversized_reservation_changes_nothing(stock in 0u32..50, taken in 0u32..50, qty in 1u32..100) {
            let mut item = ItemStock::new(stock);
            let _ = item.reserve(taken.min(stock));
            let before = item;
            if qty > item.remaining() {
                prop_assert_eq!(item.reserve(qty), Err(FlashSaleError::SoldOut));
                prop_assert_eq!(item, before);
            } else {
                prop_assert!(item.reserve(qty).is_ok());
            }
        }

        #[test]
        fn every_instant_is_in_exactly_one_phase(offset in -10_000i64..10_000) {
            let w = *rules(1).window();
            let now = w.starts_at() + Duration::seconds(offset);
            let phase = w.phase(now);
            prop_assert_eq!(phase == SalePhase::Live, now >= w.starts_at() && now < w.ends_at());
        }

        #[test]
        fn a_slot_contains_its_instant(secs in 0i64..4_000_000_000) {
            let now = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            for rec in [Recurrence::Hourly, Recurrence::Daily] {
                let start = rec.slot_start(now);
                prop_assert!(start <= now && now < start + rec.period());
            }
        }
    }
}
