//! The reservation hot path's entry: the request checked, then handed to the engine
//! (`engine.rs`), and the pieces both engines share.

use std::sync::Arc;

use flashmart_domain::flash_sale::{MAX_PER_USER_LIMIT, ReservationStatus};
use flashmart_domain::{OrderId, ReservationId, SaleId, UserId};

use super::engine::Engine;
use super::{FlashSales, SaleError};
use crate::error::{FieldError, StoreError};
use crate::flash_sale::idempotency;
use crate::flash_sale::ledger::LiveSale;
use crate::flash_sale::model::{BuyerId, IdempotencyRecord, NewReservation, ReservationRecord};

/// Who is reserving, as the ledger and the journal need it.
#[derive(Debug, Clone)]
pub(super) struct Reserver {
    pub buyer: BuyerId,
    /// Set for reservations through the API: they get an order.
    pub user: Option<UserId>,
    /// Set for the compatibility API's caller-named users.
    pub buyer_ref: Option<String>,
}

impl FlashSales {
    /// Reserves `quantity` of item `item_no` of `sale` for `user`, honouring an optional
    /// `Idempotency-Key`. The answer comes after the reservation and its `pending_payment` order
    /// are durable (with a shared engine and `Ack::Engine`: after the engine has decided and
    /// logged it).
    #[tracing::instrument(level = "debug", name = "flash_sale.reserve", skip_all, fields(%sale, item_no))]
    pub async fn reserve(
        &self,
        user: UserId,
        sale: SaleId,
        item_no: i64,
        quantity: i64,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let quantity = u32::try_from(quantity)
            .ok()
            .filter(|q| (1..=MAX_PER_USER_LIMIT).contains(q))
            .ok_or_else(|| {
                SaleError::Invalid(vec![FieldError::new(
                    "quantity",
                    format!("must be between 1 and {MAX_PER_USER_LIMIT}"),
                )])
            })?;
        let item_no = u32::try_from(item_no).map_err(|_| SaleError::ItemNotFound)?;
        let buyer = BuyerId::user(user);
        if let Some(key) = idempotency_key {
            validate_key(key)?;
        }
        let who = Reserver {
            buyer,
            user: Some(user),
            buyer_ref: None,
        };
        self.engine
            .reserve(&who, sale, item_no, quantity, idempotency_key)
            .await
    }

    /// The reservation, to its owner only: anyone else is told it does not exist.
    pub async fn reservation_for(
        &self,
        user: UserId,
        id: ReservationId,
    ) -> Result<ReservationRecord, SaleError> {
        let found = self
            .read_through(|| async { self.core.store.reservation(id).await })
            .await?;
        match found {
            Some(r) if r.buyer == BuyerId::user(user) => Ok(r),
            _ => Err(SaleError::ReservationNotFound),
        }
    }
}

/// A reservation the shared engine decided, as the records store it: written by the request
/// that asked for it, again by a replay of its key, or by the log writer, always the same rows.
/// Its creation time is derived from what the engine answered, and its order's id is its own.
/// `None` when the sale has no such item.
#[allow(clippy::too_many_arguments)] // the fields of one logged reservation
pub(super) fn decided_reservation(
    sale: &LiveSale,
    id: ReservationId,
    item_no: u32,
    buyer: BuyerId,
    quantity: u32,
    expires_at: time::OffsetDateTime,
    idempotency: Option<IdempotencyRecord>,
    buyer_ref: Option<String>,
) -> Option<NewReservation> {
    let (item_name, unit_price_cents) = sale.item(item_no)?;
    // Buyers of the API are users, with an order; the contest's caller-named buyers have none.
    let user = buyer_ref.is_none().then(|| UserId::from_uuid(buyer.0));
    let record = ReservationRecord {
        id,
        sale_id: sale.record.id,
        item_no,
        buyer,
        buyer_ref,
        quantity,
        status: ReservationStatus::Reserved,
        created_at: expires_at - sale.record.rules.reservation_ttl(),
        expires_at,
        order_id: user.map(|_| OrderId::from_uuid(*id.as_uuid())),
        purchased_at: None,
    };
    Some(NewReservation {
        record: Arc::new(record),
        user_id: user,
        unit_price_cents,
        item_name,
        currency: sale.record.currency,
        idempotency,
    })
}

/// The shared engine could not answer: nothing is known to be reserved, the client may retry
/// (with its `Idempotency-Key`, to get the same answer whatever happened).
pub(super) fn unavailable(err: StoreError) -> SaleError {
    SaleError::Unavailable(err.to_string().into())
}

fn validate_key(key: &str) -> Result<(), SaleError> {
    let ok = !key.is_empty()
        && key.len() <= idempotency::MAX_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(SaleError::Invalid(vec![FieldError::new(
            "Idempotency-Key",
            format!(
                "must be 1 to {} printable ASCII characters",
                idempotency::MAX_KEY_LEN
            ),
        )]))
    }
}
