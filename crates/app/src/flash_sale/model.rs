//! The records the flash-sale use cases and their storage ports exchange.

use flashmart_domain::flash_sale::{Recurrence, ReservationStatus, SaleRules};
use flashmart_domain::{Currency, OrderId, ReservationId, SaleId, ScheduleId, UserId};
use time::OffsetDateTime;
use uuid::Uuid;

/// Who holds a reservation: a user's id, or (compatibility API) a stable id derived from the
/// caller-named user. Limits are counted per buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuyerId(pub Uuid);

/// Namespace of buyer ids derived from compatibility-API user names (UUID v5).
const EXTERNAL_BUYERS: Uuid = Uuid::from_u128(0x6c1f_4f3e_9b1d_4c1e_a0f4_5a7d_2b8e_91c3);

impl BuyerId {
    pub fn user(user: UserId) -> Self {
        Self(*user.as_uuid())
    }

    /// The same caller-named user always maps to the same buyer, and never to a real user's id.
    pub fn external(name: &str) -> Self {
        Self(Uuid::new_v5(&EXTERNAL_BUYERS, name.as_bytes()))
    }
}

/// A sale as stored (its items apart).
#[derive(Debug, Clone, PartialEq)]
pub struct SaleRecord {
    pub id: SaleId,
    pub name: String,
    pub rules: SaleRules,
    pub currency: Currency,
    /// The schedule and slot that made it, for a recurring sale.
    pub slot: Option<(ScheduleId, OffsetDateTime)>,
    pub item_count: u32,
    pub total_stock: u64,
    pub created_at: OffsetDateTime,
}

/// What storing a new sale did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaleInsert {
    Stored,
    /// Its schedule slot has a sale already; nothing was stored.
    SlotTaken,
    /// An item's product has fewer units in stock than the item takes out of it; nothing was
    /// stored.
    ProductShort {
        product_id: Uuid,
        available: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub name: String,
    pub image_url: Option<String>,
    pub product_id: Option<Uuid>,
    pub price_cents: i64,
    pub stock: u32,
}

/// An item of a sale. Items are numbered from 1 within their sale; the number is the item's id in
/// the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub sale_id: SaleId,
    pub no: u32,
    pub name: String,
    pub image_url: Option<String>,
    pub product_id: Option<Uuid>,
    pub price_cents: i64,
    pub stock: u32,
}

/// What an accepted reservation is, as stored and as answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationRecord {
    pub id: ReservationId,
    pub sale_id: SaleId,
    pub item_no: u32,
    pub buyer: BuyerId,
    /// The caller-named user of the compatibility API.
    pub buyer_ref: Option<String>,
    pub quantity: u32,
    pub status: ReservationStatus,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The `pending_payment` order made with it (reservations through the compatibility API
    /// have none: they are confirmed by `/purchase`).
    pub order_id: Option<OrderId>,
    pub purchased_at: Option<OffsetDateTime>,
}

impl ReservationRecord {
    /// The code the buyer is given (the compatibility API's purchase takes it).
    pub fn code(&self) -> String {
        reservation_code(self.id)
    }
}

/// Crockford's base-32 alphabet: no I, L, O or U, so a code read aloud or typed is unambiguous.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
pub const CODE_LEN: usize = 26;

/// A reservation's code: its id in base 32 (26 characters). Deriving the code from the id means
/// storage needs no second unique index, and a code finds its reservation by primary key.
pub fn reservation_code(id: ReservationId) -> String {
    reservation_code_bytes(id)
        .iter()
        .map(|b| char::from(*b))
        .collect()
}

/// The code's ASCII characters, for writing it out without a `String`.
pub fn reservation_code_bytes(id: ReservationId) -> [u8; CODE_LEN] {
    let n = id.as_uuid().as_u128();
    let mut code = [0; CODE_LEN];
    for (pos, digit) in code.iter_mut().enumerate() {
        let shift = (CODE_LEN - 1 - pos) * 5;
        *digit = CODE_ALPHABET[((n >> shift) & 31) as usize];
    }
    code
}

/// The reservation a code names; `None` for anything that is not a code. Lower case is accepted.
pub fn parse_reservation_code(code: &str) -> Option<ReservationId> {
    if code.len() != CODE_LEN {
        return None;
    }
    let mut n: u128 = 0;
    for (i, c) in code.bytes().enumerate() {
        let v = CODE_ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())? as u128;
        // The first digit carries only the top 3 of 130 bits' worth of room.
        if i == 0 && v > 7 {
            return None;
        }
        n = (n << 5) | v;
    }
    Some(ReservationId::from_uuid(Uuid::from_u128(n)))
}

/// A reservation to make durable, with what its order needs.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub record: std::sync::Arc<ReservationRecord>,
    pub user_id: Option<UserId>,
    pub unit_price_cents: i64,
    /// The item's name, for the order line.
    pub item_name: std::sync::Arc<str>,
    pub currency: Currency,
    pub idempotency: Option<IdempotencyRecord>,
}

/// An `Idempotency-Key` and the fingerprint of the request that first used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    pub fingerprint: [u8; 16],
}

/// One checkout attempt through the compatibility API, whatever its outcome.
#[derive(Debug, Clone)]
pub struct CheckoutAttempt {
    pub sale_id: Option<SaleId>,
    pub item_no: i64,
    pub buyer_ref: String,
    pub at: OffsetDateTime,
    /// `reserved`, or the refusal (`sold_out`, `limit_reached`, ...).
    pub outcome: &'static str,
    pub code: Option<String>,
}

/// A write for the group commit: many are gathered into one transaction.
#[derive(Debug, Clone)]
pub enum JournalOp {
    Reserve(Box<NewReservation>),
    /// Marks the reservation purchased (compatibility API), unless it expired, and answers what
    /// storage then holds: for a reservation the engine has no entry of.
    Purchase {
        id: ReservationId,
        at: OffsetDateTime,
    },
    /// A purchase the engine decided (compatibility API): the reservation is purchased at `at`.
    /// Storage only records it (a reservation no longer `reserved` is left as it is).
    MarkPurchased {
        id: ReservationId,
        at: OffsetDateTime,
    },
    Attempt(Box<CheckoutAttempt>),
    /// A reservation a shared engine (Redis) decided, with its order: stored unless it is
    /// already (a retry of the same `Idempotency-Key`, or a worker catching up from the
    /// engine's log write the same reservation again, identically). Only stores that serve a
    /// shared engine take it.
    Record {
        reservation: Box<NewReservation>,
        /// The engine's answer was replayed for its `Idempotency-Key`: the reservation is most
        /// likely stored already (by the request that first used the key), and is written again
        /// only in case that write failed. A store may take a cheaper way for a batch in which
        /// no reservation is expected to be there.
        replayed: bool,
    },
}

#[derive(Debug, Clone)]
pub enum JournalOutcome {
    Done,
    Purchase(PurchaseOutcome),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PurchaseOutcome {
    /// Purchased now or before; the same answer every time.
    Purchased {
        reservation: Box<ReservationRecord>,
        item_name: String,
        unit_price_cents: i64,
        currency: Currency,
    },
    NotFound,
    Expired,
}

/// What the in-memory ledger needs of a sale at start: its items' stock and what is held.
#[derive(Debug, Clone)]
pub struct LiveSaleState {
    pub sale: SaleRecord,
    /// Each item's stock, price, name and what reserved or purchased reservations hold, in item
    /// order.
    pub items: Vec<LiveItemState>,
    /// What each buyer holds in this sale.
    pub buyers: Vec<(BuyerId, u32)>,
}

impl LiveSaleState {
    /// A sale about to be stored, as the records will read it back: its items numbered from 1
    /// in order, nothing held.
    pub fn unsold(sale: &SaleRecord, items: &[NewItem]) -> Self {
        Self {
            sale: sale.clone(),
            items: (1..)
                .zip(items)
                .map(|(no, item)| LiveItemState {
                    no,
                    stock: item.stock,
                    price_cents: item.price_cents,
                    name: item.name.as_str().into(),
                    held: 0,
                })
                .collect(),
            buyers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveItemState {
    pub no: u32,
    pub stock: u32,
    pub price_cents: i64,
    pub name: std::sync::Arc<str>,
    pub held: u32,
}

/// Stock that went back on sale (an expired or cancelled reservation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub reservation: ReservationId,
    pub sale_id: SaleId,
    pub item_no: u32,
    pub buyer: BuyerId,
    pub quantity: u32,
}

/// A sale's numbers as storage knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoredStats {
    pub stock: u64,
    pub reserved: u64,
    pub sold: u64,
    pub released: u64,
    pub buyers: u64,
    /// Checkout attempts recorded through the compatibility API.
    pub attempts: u64,
}

/// A recurring sale.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: ScheduleId,
    pub name: String,
    pub recurrence: Recurrence,
    pub item_count: u32,
    pub price_cents: i64,
    pub currency: Currency,
    pub per_user_limit: u32,
    pub reservation_ttl_secs: i64,
    /// How long each sale lasts from its slot's start (at most the period).
    pub duration_secs: i64,
    pub active: bool,
    pub created_at: OffsetDateTime,
}

/// One idempotency key as restored at start.
#[derive(Debug, Clone)]
pub struct StoredIdempotency {
    pub buyer: BuyerId,
    pub record: IdempotencyRecord,
    pub reservation: ReservationRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_reject_garbage() {
        for _ in 0..1000 {
            let id = ReservationId::new();
            let code = reservation_code(id);
            assert_eq!(code.len(), 26);
            assert_eq!(parse_reservation_code(&code), Some(id));
            assert_eq!(parse_reservation_code(&code.to_lowercase()), Some(id));
        }
        let max = ReservationId::from_uuid(Uuid::from_u128(u128::MAX));
        assert_eq!(parse_reservation_code(&reservation_code(max)), Some(max));
        for bad in [
            "",
            "short",
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "0000000000000000000000000U",
            "ÄÄÄÄÄÄÄÄÄÄÄÄÄ",
        ] {
            assert_eq!(parse_reservation_code(bad), None, "{bad}");
        }
    }
}
