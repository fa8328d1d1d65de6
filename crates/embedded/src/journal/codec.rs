//! How a group commit's batch is written to the outbox: one value per batch, a version byte and
//! then one record per reservation or checkout attempt, in the order the engine queued them.
//! Fixed-size fields are little-endian; texts are a `u32` length and UTF-8 bytes. The applier
//! reads a batch back as rows borrowed from it (no copy of any text).
//!
//! A reservation:
//!
//! ```text
//! 1u8 flags:u8 id:[16] sale:[16] buyer:[16] [order:[16]] [user:[16]]
//! item_no:u32 quantity:u32 created_at:i64 expires_at:i64 unit_price_cents:i64 currency:[3]
//! [buyer_ref:text] [idempotency_key:text fingerprint:[16]]
//! ```
//!
//! A checkout attempt (the contest API):
//!
//! ```text
//! 2u8 flags:u8 [sale:[16]] item_no:i64 at:i64 outcome:text buyer_ref:text [code:text]
//! ```
//!
//! A purchase the engine decided (the contest API):
//!
//! ```text
//! 3u8 reservation:[16] at:i64
//! ```
//!
//! Times are unix microseconds, as every table stores them.

use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::{CheckoutAttempt, JournalOp, NewReservation};

use crate::db::{corrupt, micros};

/// The format written; a batch of another version is refused, never guessed at.
const VERSION: u8 = 1;

const RESERVATION: u8 = 1;
const ATTEMPT: u8 = 2;
const PURCHASED: u8 = 3;

// Reservation flags.
const HAS_ORDER: u8 = 1;
const HAS_USER: u8 = 2;
const HAS_BUYER_REF: u8 = 4;
const HAS_KEY: u8 = 8;

// Attempt flags.
const HAS_SALE: u8 = 1;
const HAS_CODE: u8 = 2;

/// A batch as the outbox stores it.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub body: Vec<u8>,
    /// Reservations in it (what the applier's backlog is counted in).
    pub reservations: u32,
}

/// Writes the reservations, checkout attempts and decided purchases of `ops` as one batch
/// (purchases to look up are not records: they read rows already applied). Two reservations with one id refuse the batch
/// whole, as the table's primary key would: the outbox checks no constraint of its own.
pub(crate) fn encode(ops: &[JournalOp]) -> Result<Encoded, StoreError> {
    let mut body = Vec::with_capacity(1 + ops.len() * 128);
    body.push(VERSION);
    let mut ids = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            JournalOp::Reserve(r) => {
                reservation(&mut body, r);
                ids.push(r.record.id.as_uuid().as_u128());
            }
            JournalOp::Attempt(a) => attempt(&mut body, a),
            JournalOp::MarkPurchased { id, at } => {
                body.push(PURCHASED);
                body.extend_from_slice(id.as_uuid().as_bytes());
                body.extend_from_slice(&micros(*at).to_le_bytes());
            }
            JournalOp::Purchase { .. } => {}
            JournalOp::Record { .. } => {
                // The embedded store serves only the in-process engine (configuration refuses
                // a shared engine without PostgreSQL).
                return Err(StoreError::Other(
                    "the embedded store takes no reservations decided by a shared engine".into(),
                ));
            }
        }
    }
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(StoreError::Conflict {
            constraint: "reservations.id".into(),
        });
    }
    Ok(Encoded {
        body,
        reservations: u32::try_from(ids.len()).unwrap_or(u32::MAX),
    })
}

fn reservation(out: &mut Vec<u8>, r: &NewReservation) {
    let rec = &r.record;
    let mut flags = 0;
    if rec.order_id.is_some() {
        flags |= HAS_ORDER;
    }
    if r.user_id.is_some() {
        flags |= HAS_USER;
    }
    if rec.buyer_ref.is_some() {
        flags |= HAS_BUYER_REF;
    }
    if r.idempotency.is_some() {
        flags |= HAS_KEY;
    }
    out.push(RESERVATION);
    out.push(flags);
    out.extend_from_slice(rec.id.as_uuid().as_bytes());
    out.extend_from_slice(rec.sale_id.as_uuid().as_bytes());
    out.extend_from_slice(rec.buyer.0.as_bytes());
    if let Some(order) = rec.order_id {
        out.extend_from_slice(order.as_uuid().as_bytes());
    }
    if let Some(user) = r.user_id {
        out.extend_from_slice(user.as_uuid().as_bytes());
    }
    out.extend_from_slice(&rec.item_no.to_le_bytes());
    out.extend_from_slice(&rec.quantity.to_le_bytes());
    out.extend_from_slice(&micros(rec.created_at).to_le_bytes());
    out.extend_from_slice(&micros(rec.expires_at).to_le_bytes());
    out.extend_from_slice(&r.unit_price_cents.to_le_bytes());
    out.extend_from_slice(r.currency.as_str().as_bytes());
    if let Some(buyer_ref) = &rec.buyer_ref {
        text(out, buyer_ref);
    }
    if let Some(key) = &r.idempotency {
        text(out, &key.key);
        out.extend_from_slice(&key.fingerprint);
    }
}

fn attempt(out: &mut Vec<u8>, a: &CheckoutAttempt) {
    let mut flags = 0;
    if a.sale_id.is_some() {
        flags |= HAS_SALE;
    }
    if a.code.is_some() {
        flags |= HAS_CODE;
    }
    out.push(ATTEMPT);
    out.push(flags);
    if let Some(sale) = a.sale_id {
        out.extend_from_slice(sale.as_uuid().as_bytes());
    }
    out.extend_from_slice(&a.item_no.to_le_bytes());
    out.extend_from_slice(&micros(a.at).to_le_bytes());
    text(out, a.outcome);
    text(out, &a.buyer_ref);
    if let Some(code) = &a.code {
        text(out, code);
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    // Every text here is bounded far below 4 GiB by the API that accepted it.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// A reservation read back from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReservationRow<'a> {
    pub id: [u8; 16],
    pub sale: [u8; 16],
    pub buyer: [u8; 16],
    pub order: Option<[u8; 16]>,
    pub user: Option<[u8; 16]>,
    pub item_no: u32,
    pub quantity: u32,
    pub created_at: i64,
    pub expires_at: i64,
    pub unit_price_cents: i64,
    pub currency: &'a str,
    pub buyer_ref: Option<&'a str>,
    pub idempotency: Option<(&'a str, [u8; 16])>,
}

/// A checkout attempt read back from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptRow<'a> {
    pub sale: Option<[u8; 16]>,
    pub item_no: i64,
    pub at: i64,
    pub outcome: &'a str,
    pub buyer_ref: &'a str,
    pub code: Option<&'a str>,
}

/// What one or more batches hold, in order.
#[derive(Debug, Default)]
pub(crate) struct Decoded<'a> {
    pub reservations: Vec<ReservationRow<'a>>,
    pub attempts: Vec<AttemptRow<'a>>,
    /// Decided purchases: the reservation and the time, in microseconds.
    pub purchased: Vec<([u8; 16], i64)>,
}

impl<'a> Decoded<'a> {
    /// Reads `body`'s records after those already read.
    pub(crate) fn read(&mut self, body: &'a [u8]) -> Result<(), StoreError> {
        let mut r = Reader { rest: body };
        let version = r.byte()?;
        if version != VERSION {
            return Err(corrupt(
                "outbox batch",
                format!("format version {version}, this build reads {VERSION}"),
            ));
        }
        while !r.rest.is_empty() {
            match r.byte()? {
                RESERVATION => {
                    let flags = r.byte()?;
                    let id = r.id()?;
                    let sale = r.id()?;
                    let buyer = r.id()?;
                    let order = r.id_if(flags & HAS_ORDER != 0)?;
                    let user = r.id_if(flags & HAS_USER != 0)?;
                    let item_no = u32::from_le_bytes(r.array()?);
                    let quantity = u32::from_le_bytes(r.array()?);
                    let created_at = i64::from_le_bytes(r.array()?);
                    let expires_at = i64::from_le_bytes(r.array()?);
                    let unit_price_cents = i64::from_le_bytes(r.array()?);
                    let currency = r.str(3)?;
                    let buyer_ref = if flags & HAS_BUYER_REF != 0 {
                        Some(r.text()?)
                    } else {
                        None
                    };
                    let idempotency = if flags & HAS_KEY != 0 {
                        Some((r.text()?, r.array()?))
                    } else {
                        None
                    };
                    self.reservations.push(ReservationRow {
                        id,
                        sale,
                        buyer,
                        order,
                        user,
                        item_no,
                        quantity,
                        created_at,
                        expires_at,
                        unit_price_cents,
                        currency,
                        buyer_ref,
                        idempotency,
                    });
                }
                ATTEMPT => {
                    let flags = r.byte()?;
                    let sale = r.id_if(flags & HAS_SALE != 0)?;
                    let item_no = i64::from_le_bytes(r.array()?);
                    let at = i64::from_le_bytes(r.array()?);
                    let outcome = r.text()?;
                    let buyer_ref = r.text()?;
                    let code = if flags & HAS_CODE != 0 {
                        Some(r.text()?)
                    } else {
                        None
                    };
                    self.attempts.push(AttemptRow {
                        sale,
                        item_no,
                        at,
                        outcome,
                        buyer_ref,
                        code,
                    });
                }
                PURCHASED => {
                    let id = r.id()?;
                    let at = i64::from_le_bytes(r.array()?);
                    self.purchased.push((id, at));
                }
                other => return Err(corrupt("outbox batch", format!("record type {other}"))),
            }
        }
        Ok(())
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(corrupt("outbox batch", "a record is cut short"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn id(&mut self) -> Result<[u8; 16], StoreError> {
        self.array()
    }

    fn id_if(&mut self, present: bool) -> Result<Option<[u8; 16]>, StoreError> {
        if present {
            self.id().map(Some)
        } else {
            Ok(None)
        }
    }

    fn str(&mut self, len: usize) -> Result<&'a str, StoreError> {
        std::str::from_utf8(self.take(len)?).map_err(|e| corrupt("outbox batch", e))
    }

    fn text(&mut self) -> Result<&'a str, StoreError> {
        let len = u32::from_le_bytes(self.array()?);
        self.str(len as usize)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use flashmart_app::flash_sale::model::{BuyerId, IdempotencyRecord, ReservationRecord};
    use flashmart_domain::flash_sale::ReservationStatus;
    use flashmart_domain::{Currency, OrderId, ReservationId, SaleId, UserId};
    use time::macros::datetime;

    use super::*;

    fn reserve(user: Option<UserId>, buyer_ref: Option<&str>, key: Option<&str>) -> JournalOp {
        let at = datetime!(2026-12-03 10:00:00.123456 UTC);
        let buyer = match (user, buyer_ref) {
            (Some(u), _) => BuyerId::user(u),
            (None, r) => BuyerId::external(r.unwrap_or("someone")),
        };
        JournalOp::Reserve(Box::new(NewReservation {
            record: Arc::new(ReservationRecord {
                id: ReservationId::new(),
                sale_id: SaleId::new(),
                item_no: 7,
                buyer,
                buyer_ref: buyer_ref.map(str::to_owned),
                quantity: 2,
                status: ReservationStatus::Reserved,
                created_at: at,
                expires_at: at + time::Duration::minutes(15),
                order_id: user.map(|_| OrderId::new()),
                purchased_at: None,
            }),
            user_id: user,
            unit_price_cents: 1999,
            item_name: "Item".into(),
            currency: Currency::EUR,
            idempotency: key.map(|k| IdempotencyRecord {
                key: k.to_owned(),
                fingerprint: [9; 16],
            }),
        }))
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let alice = UserId::new();
        let ops = vec![
            reserve(Some(alice), None, Some("key-ü")),
            JournalOp::Attempt(Box::new(CheckoutAttempt {
                sale_id: Some(SaleId::new()),
                item_no: -3,
                buyer_ref: "user-1".into(),
                at: datetime!(2026-12-03 10:00:01 UTC),
                outcome: "sold_out",
                code: None,
            })),
            JournalOp::Purchase {
                id: ReservationId::new(),
                at: datetime!(2026-12-03 10:00:02 UTC),
            },
            JournalOp::MarkPurchased {
                id: ReservationId::from_uuid(uuid::Uuid::from_u128(7)),
                at: datetime!(2026-12-03 10:00:02.5 UTC),
            },
            reserve(None, Some("user-2"), None),
            JournalOp::Attempt(Box::new(CheckoutAttempt {
                sale_id: None,
                item_no: 1,
                buyer_ref: String::new(),
                at: datetime!(2026-12-03 10:00:03 UTC),
                outcome: "reserved",
                code: Some("0123456789ABCDEFGHJKMNPQRS".into()),
            })),
        ];
        let encoded = encode(&ops).unwrap();
        assert_eq!(encoded.reservations, 2);
        let mut decoded = Decoded::default();
        decoded.read(&encoded.body).unwrap();
        assert_eq!(decoded.reservations.len(), 2);
        assert_eq!(decoded.attempts.len(), 2);

        assert_eq!(
            decoded.purchased,
            [(
                *uuid::Uuid::from_u128(7).as_bytes(),
                micros(datetime!(2026-12-03 10:00:02.5 UTC))
            )]
        );
        for (row, op) in decoded.reservations.iter().zip([&ops[0], &ops[4]]) {
            let JournalOp::Reserve(r) = op else {
                unreachable!()
            };
            let rec = &r.record;
            assert_eq!(row.id, *rec.id.as_uuid().as_bytes());
            assert_eq!(row.sale, *rec.sale_id.as_uuid().as_bytes());
            assert_eq!(row.buyer, *rec.buyer.0.as_bytes());
            assert_eq!(row.order, rec.order_id.map(|o| *o.as_uuid().as_bytes()));
            assert_eq!(row.user, r.user_id.map(|u| *u.as_uuid().as_bytes()));
            assert_eq!((row.item_no, row.quantity), (7, 2));
            assert_eq!(row.created_at, micros(rec.created_at));
            assert_eq!(row.expires_at, micros(rec.expires_at));
            assert_eq!((row.unit_price_cents, row.currency), (1999, "EUR"));
            assert_eq!(row.buyer_ref, rec.buyer_ref.as_deref());
            assert_eq!(
                row.idempotency,
                r.idempotency
                    .as_ref()
                    .map(|k| (k.key.as_str(), k.fingerprint))
            );
        }
        assert_eq!(decoded.reservations[0].idempotency.unwrap().0, "key-ü");
        let first = decoded.attempts[0];
        assert!(first.sale.is_some());
        assert_eq!(
            (first.item_no, first.outcome, first.buyer_ref),
            (-3, "sold_out", "user-1")
        );
        assert_eq!(first.code, None);
        let second = decoded.attempts[1];
        assert_eq!((second.sale, second.buyer_ref), (None, ""));
        assert_eq!(second.code, Some("0123456789ABCDEFGHJKMNPQRS"));
    }

    #[test]
    fn batches_read_one_after_another_keep_their_order() {
        let a = encode(&[reserve(Some(UserId::new()), None, None)]).unwrap();
        let b = encode(&[reserve(None, Some("x"), None)]).unwrap();
        let mut decoded = Decoded::default();
        decoded.read(&a.body).unwrap();
        decoded.read(&b.body).unwrap();
        assert_eq!(decoded.reservations.len(), 2);
        assert!(decoded.reservations[0].order.is_some());
        assert_eq!(decoded.reservations[1].buyer_ref, Some("x"));
    }

    #[test]
    fn one_id_twice_refuses_the_batch() {
        let op = reserve(Some(UserId::new()), None, None);
        assert!(matches!(
            encode(&[op.clone(), op]),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn damaged_batches_are_refused_not_guessed_at() {
        let encoded = encode(&[reserve(Some(UserId::new()), None, Some("k"))]).unwrap();
        // Cut anywhere inside the record.
        for len in 2..encoded.body.len() {
            let mut decoded = Decoded::default();
            assert!(decoded.read(&encoded.body[..len]).is_err(), "cut at {len}");
        }
        let mut other_version = encoded.body.clone();
        other_version[0] = 2;
        assert!(Decoded::default().read(&other_version).is_err());
        let mut unknown_record = encoded.body.clone();
        unknown_record[1] = 9;
        assert!(Decoded::default().read(&unknown_record).is_err());
        // An empty batch (only attempts were dropped, say) is a batch of nothing.
        let mut decoded = Decoded::default();
        decoded.read(&[VERSION]).unwrap();
        assert!(decoded.reservations.is_empty());
    }
}
