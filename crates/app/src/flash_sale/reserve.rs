//! The reservation hot path: memory first (window, limit and stock in the ledger), then one queued
//! write that the group commit makes durable before the answer. No database read, no global lock.

use std::sync::Arc;

use flashmart_domain::flash_sale::{MAX_PER_USER_LIMIT, ReservationStatus, SalePhase};
use flashmart_domain::{OrderId, ReservationId, SaleId, UserId};

use super::counters::Counted;
use super::{Ack, FlashSales, SaleError};
use crate::error::{FieldError, StoreError};
use crate::flash_sale::commit::Pledge;
use crate::flash_sale::idempotency::{self, Answer, Begin, Claim, Refusal};
use crate::flash_sale::ledger::LiveSale;
use crate::flash_sale::model::{
    BuyerId, IdempotencyRecord, JournalOp, NewReservation, ReservationRecord,
};
use crate::ports::{SharedDecision, SharedEngine, SharedReserve};

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
        if let Some(engine) = &self.shared {
            let who = Reserver {
                buyer,
                user: Some(user),
                buyer_ref: None,
            };
            return self
                .reserve_shared(
                    engine.as_ref(),
                    &who,
                    sale,
                    item_no,
                    quantity,
                    idempotency_key,
                )
                .await;
        }
        let claim = match idempotency_key {
            None => None,
            Some(key) => {
                let fingerprint = idempotency::fingerprint(sale, item_no, quantity);
                match self.keys.begin(buyer, key, fingerprint, self.clock.now()) {
                    Begin::Fresh(claim) => Some(claim),
                    Begin::Replay(answer) => {
                        self.counters.count(Counted::Replayed);
                        return match answer {
                            Answer::Reserved(record) => Ok(record),
                            Answer::Refused(refusal) => Err(refusal.into()),
                        };
                    }
                    Begin::Mismatch => return Err(SaleError::KeyReused),
                    Begin::InProgress => return Err(SaleError::KeyInProgress),
                    Begin::TooMany => return Err(SaleError::TooManyKeys),
                }
            }
        };
        let reserver = Reserver {
            buyer,
            user: Some(user),
            buyer_ref: None,
        };
        self.reserve_as(reserver, sale, item_no, quantity, claim)
            .await
    }

    pub(super) async fn reserve_as(
        &self,
        who: Reserver,
        sale_id: SaleId,
        item_no: u32,
        quantity: u32,
        claim: Option<Claim>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let sale = match self.ledger.get(&sale_id) {
            Some(sale) => sale,
            None => match self.load_sale(sale_id).await {
                Ok(Ok(sale)) => sale,
                Ok(Err(refusal)) => return Err(self.refuse(claim, refusal)),
                // Storage could not say: nothing is answered for the key (the claim is dropped
                // and the key freed), the client may retry.
                Err(err) => return Err(err),
            },
        };
        // What is refused without taking stock is refused before anything else (a stampede is
        // mostly sold-out answers).
        if let Err(err) = sale.precheck(item_no, quantity, self.clock.now()) {
            return Err(self.refuse(claim, err.into()));
        }
        // Room in the commit queue first: between taking stock and queueing its write there is
        // no await, so no way for the request to be dropped with stock held.
        let slot = self.commit_slot().await?;
        let now = self.clock.now();
        let hold = match sale.try_hold(item_no, who.buyer, quantity, now) {
            Ok(hold) => hold,
            Err(err) => return Err(self.refuse(claim, err.into())),
        };
        if hold
            .price_cents()
            .checked_mul(i64::from(quantity))
            .is_none()
        {
            // Prices are capped when sales are made, so only data from before the cap gets here.
            hold.give_back();
            return Err(SaleError::Invalid(vec![FieldError::new(
                "quantity",
                "the reservation's total is too large",
            )]));
        }
        let record = Arc::new(ReservationRecord {
            id: ReservationId::new(),
            sale_id,
            item_no,
            buyer: who.buyer,
            buyer_ref: who.buyer_ref,
            quantity,
            status: ReservationStatus::Reserved,
            created_at: now,
            expires_at: sale.record.rules.expires_at(now),
            order_id: who.user.map(|_| OrderId::new()),
            purchased_at: None,
        });
        let op = JournalOp::Reserve(Box::new(NewReservation {
            record: Arc::clone(&record),
            user_id: who.user,
            unit_price_cents: hold.price_cents(),
            item_name: hold.item_name(),
            currency: sale.record.currency,
            idempotency: claim.as_ref().map(Claim::record),
        }));
        let pledge = Pledge {
            hold,
            key: claim.map(|c| (c, Arc::clone(&record))),
        };
        let committed = slot.send(op, Some(pledge)).await;
        match committed {
            Ok(Ok(_)) => {
                self.counters.count(Counted::Reserved);
                Ok(record)
            }
            Ok(Err(failed)) => {
                self.counters.count(Counted::Unavailable);
                Err(SaleError::Unavailable(failed.0))
            }
            Err(_) => Err(SaleError::Unavailable("the commit task has stopped".into())),
        }
    }

    /// A reservation decided by the shared engine (Redis), then written to the records (with its
    /// order, unless the buyer is the contest's caller-named one) by the group commit before the
    /// answer (`Ack::Database`), or queued for it and answered at once (`Ack::Engine`). A
    /// replayed answer is written again (a write of the same rows changes nothing), so the answer
    /// for a key is always one the records hold, even when the first request's write failed.
    pub(super) async fn reserve_shared(
        &self,
        engine: &dyn SharedEngine,
        who: &Reserver,
        sale_id: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let sale = match self.ledger.get(&sale_id) {
            Some(sale) => sale,
            // Made by another instance: mirrored here, ended or not (a key's answer from
            // before the end is replayed by the engine).
            None => match self.store.live_sale(sale_id).await? {
                Some(state) => self.ledger.install(state, self.clock.now()),
                None => {
                    self.counters.count(Counted::Refused(Refusal::SaleNotFound));
                    return Err(Refusal::SaleNotFound.into());
                }
            },
        };
        let buyer = who.buyer;
        // Ended is answered here (the engine's copy of an ended sale expires, see `retire`),
        // except to a key, which may replay an answer given before the end.
        let ended = sale.record.rules.window().phase(self.clock.now()) == SalePhase::Ended;
        if ended && idempotency_key.is_none() {
            self.counters.count(Counted::Refused(Refusal::Ended));
            return Err(Refusal::Ended.into());
        }
        // Room in the commit queue before the engine decides: a reservation decided is then
        // written at the next batch, never held back behind a full queue (the grace before a
        // lost sale is rebuilt counts on its write landing soon).
        let slot = self.commit_slot().await?;
        let request = SharedReserve {
            sale: sale_id,
            item_no,
            buyer,
            quantity,
            idempotency_key,
            now: self.clock.now(),
            buyer_ref: who.buyer_ref.as_deref(),
            max_keys: self.settings.max_idempotency_keys_per_user,
        };
        // Asked again after a sale is loaded or rebuilt; a third time is not needed.
        let mut decision = engine.reserve(&request).await.map_err(unavailable)?;
        for _ in 0..2 {
            match decision {
                // Expired with the rest of an ended sale: nothing to rebuild.
                SharedDecision::Missing if ended => {
                    self.counters.count(Counted::Refused(Refusal::Ended));
                    return Err(Refusal::Ended.into());
                }
                // Made on another instance whose load failed, or lost by the engine with
                // reservations whose writes may still be on their way: marked lost, and rebuilt
                // from the records once they have all landed.
                SharedDecision::Missing | SharedDecision::Rebuilding { .. } => {
                    if self.restore(engine, sale_id, request.now).await?.is_some() {
                        self.counters.count(Counted::Unavailable);
                        return Err(SaleError::Unavailable(
                            "the sale is being rebuilt after the reservation engine lost it; \
                             retry in a few seconds"
                                .into(),
                        ));
                    }
                    decision = engine.reserve(&request).await.map_err(unavailable)?;
                }
                _ => break,
            }
        }
        let (id, expires_at, replayed, logged) = match decision {
            SharedDecision::Reserved {
                id,
                expires_at,
                replayed,
                logged,
            } => (id, expires_at, replayed, logged),
            SharedDecision::Refused { refusal, replayed } => {
                self.counters.count(if replayed {
                    Counted::Replayed
                } else {
                    Counted::Refused(refusal)
                });
                return Err(refusal.into());
            }
            SharedDecision::KeyReused => return Err(SaleError::KeyReused),
            SharedDecision::TooManyKeys => return Err(SaleError::TooManyKeys),
            SharedDecision::Missing | SharedDecision::Rebuilding { .. } => {
                self.counters.count(Counted::Unavailable);
                return Err(SaleError::Unavailable(
                    "the sale could not be loaded into the reservation engine".into(),
                ));
            }
        };
        let idempotency = idempotency_key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            fingerprint: idempotency::fingerprint(sale_id, item_no, quantity),
        });
        let decided = decided_reservation(
            &sale,
            id,
            item_no,
            buyer,
            quantity,
            expires_at,
            idempotency,
            who.buyer_ref.clone(),
        )
        .ok_or(SaleError::ItemNotFound)?;
        let record = Arc::clone(&decided.record);
        let op = JournalOp::Record(Box::new(decided));
        // Once stored, its log entry can go: no writer needs to read it.
        let logged = logged.map(|entry| (sale_id, entry));
        let Some(committed) = slot.send_logged(op, logged, self.settings.ack == Ack::Database)
        else {
            // Answered now, as durable as the engine's log: the write is queued, and should it
            // fail or this instance die first, a log writer stores the reservation.
            self.counters.count(if replayed {
                Counted::Replayed
            } else {
                Counted::Reserved
            });
            return Ok(record);
        };
        match committed.await {
            Ok(Ok(_)) => {
                self.counters.count(if replayed {
                    Counted::Replayed
                } else {
                    Counted::Reserved
                });
                Ok(record)
            }
            Ok(Err(failed)) => {
                self.counters.count(Counted::Unavailable);
                Err(SaleError::Unavailable(failed.0))
            }
            Err(_) => Err(SaleError::Unavailable("the commit task has stopped".into())),
        }
    }

    /// A sale missing from memory: unknown, ended long ago, or made since start by another
    /// process; only the last is loaded.
    async fn load_sale(&self, id: SaleId) -> Result<Result<Arc<LiveSale>, Refusal>, SaleError> {
        let now = self.clock.now();
        Ok(match self.store.live_sale(id).await? {
            Some(state) if state.sale.rules.window().phase(now) == SalePhase::Ended => {
                Err(Refusal::Ended)
            }
            Some(state) => Ok(self.ledger.install(state, now)),
            None => Err(Refusal::SaleNotFound),
        })
    }

    /// The reservation, to its owner only: anyone else is told it does not exist.
    pub async fn reservation_for(
        &self,
        user: UserId,
        id: ReservationId,
    ) -> Result<ReservationRecord, SaleError> {
        let found = self
            .read_through(|| async { self.store.reservation(id).await })
            .await?;
        match found {
            Some(r) if r.buyer == BuyerId::user(user) => Ok(r),
            _ => Err(SaleError::ReservationNotFound),
        }
    }
}

impl FlashSales {
    /// Settles the idempotency claim with a refusal and counts it. A refusal for a sale that
    /// does not exist is not remembered (the claim is dropped and its key freed): made-up sale
    /// ids must not fill the table.
    fn refuse(&self, claim: Option<Claim>, refusal: Refusal) -> SaleError {
        self.counters.count(Counted::Refused(refusal));
        if let Some(claim) = claim {
            if refusal == Refusal::SaleNotFound {
                claim.abandon();
            } else {
                claim.answer(Answer::Refused(refusal));
            }
        }
        refusal.into()
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
fn unavailable(err: StoreError) -> SaleError {
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
