//! The in-process engine: memory first (window, limit and stock in the ledger, keys in the
//! idempotency table), then one queued write that the group commit makes durable before the
//! answer. No database read, no global lock. One process per store: the ledger is the truth.

use std::sync::Arc;

use flashmart_domain::flash_sale::{ReservationStatus, SalePhase};
use flashmart_domain::{OrderId, ReservationId, SaleId};
use time::{Duration, OffsetDateTime};

use super::contest_book::{ContestBook, Decision};
use super::counters::Counted;
use super::engine::{Core, Engine};
use super::idempotency::{self, Answer, Begin, Claim, IdempotencyTable, KEY_LIFETIME, Refusal};
use super::ledger::LiveSale;
use super::model::{
    JournalOp, LiveSaleState, NewReservation, PurchaseOutcome, Released, ReservationRecord,
    SaleRecord,
};
use super::reserve::Reserver;
use super::{Reconciled, SaleError};
use crate::error::{FieldError, StoreError};
use crate::flash_sale::commit::Pledge;
use crate::ports::SettleTo;

#[derive(Debug)]
pub(super) struct InProcess {
    core: Arc<Core>,
    keys: Arc<IdempotencyTable>,
    /// The contest reservations made since start, for purchases decided in memory.
    contest_book: ContestBook,
}

impl InProcess {
    /// The engine over `core`'s ledger, with the idempotency keys of the last day restored
    /// from the records.
    pub async fn start(core: Arc<Core>) -> Result<Self, StoreError> {
        let keys = Arc::new(IdempotencyTable::new(
            core.settings.max_idempotency_keys_per_user,
        ));
        let now = core.clock.now();
        for stored in core.store.idempotency_since(now - KEY_LIFETIME).await? {
            keys.restore(stored.buyer, &stored.record, stored.reservation);
        }
        tracing::info!(
            idempotency_keys = keys.len(),
            "idempotency keys restored from storage"
        );
        Ok(Self {
            core,
            keys,
            contest_book: ContestBook::default(),
        })
    }

    async fn reserve_as(
        &self,
        who: &Reserver,
        sale_id: SaleId,
        item_no: u32,
        quantity: u32,
        claim: Option<Claim>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let core = &*self.core;
        let sale = match core.ledger.get(&sale_id) {
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
        if let Err(err) = sale.precheck(item_no, quantity, core.clock.now()) {
            return Err(self.refuse(claim, err.into()));
        }
        // Room in the commit queue first: between taking stock and queueing its write there is
        // no await, so no way for the request to be dropped with stock held.
        let slot = core.commit_slot().await?;
        let now = core.clock.now();
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
        let id = ReservationId::new();
        let record = Arc::new(ReservationRecord {
            id,
            sale_id,
            item_no,
            buyer: who.buyer,
            buyer_ref: who.buyer_ref.clone(),
            quantity,
            status: ReservationStatus::Reserved,
            created_at: now,
            expires_at: sale.record.rules.expires_at(now),
            // A flash-sale order has its reservation's id, whichever engine decided it (a
            // shared engine's log writer derives it from the reservation alone).
            order_id: who.user.map(|_| OrderId::from_uuid(*id.as_uuid())),
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
        match slot.send(op, Some(pledge)).await {
            Ok(Ok(_)) => {
                core.counters.count(Counted::Reserved);
                Ok(record)
            }
            Ok(Err(failed)) => {
                core.counters.count(Counted::Unavailable);
                Err(SaleError::Unavailable(failed.0))
            }
            Err(_) => Err(SaleError::Unavailable("the commit task has stopped".into())),
        }
    }

    /// A sale missing from memory: unknown, ended long ago, or made since start by another
    /// process; only the last is loaded.
    async fn load_sale(&self, id: SaleId) -> Result<Result<Arc<LiveSale>, Refusal>, SaleError> {
        let now = self.core.clock.now();
        Ok(match self.core.store.live_sale(id).await? {
            Some(state) if state.sale.rules.window().phase(now) == SalePhase::Ended => {
                Err(Refusal::Ended)
            }
            Some(state) => Ok(self.core.ledger.install(state, now)),
            None => Err(Refusal::SaleNotFound),
        })
    }

    /// Settles the idempotency claim with a refusal and counts it. A refusal for a sale that
    /// does not exist is not remembered (the claim is dropped and its key freed): made-up sale
    /// ids must not fill the table.
    fn refuse(&self, claim: Option<Claim>, refusal: Refusal) -> SaleError {
        self.core.counters.count(Counted::Refused(refusal));
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

impl Engine for InProcess {
    async fn reserve(
        &self,
        who: &Reserver,
        sale: SaleId,
        item_no: u32,
        quantity: u32,
        idempotency_key: Option<&str>,
    ) -> Result<Arc<ReservationRecord>, SaleError> {
        let claim = match idempotency_key {
            None => None,
            Some(key) => {
                let fingerprint = idempotency::fingerprint(sale, item_no, quantity);
                match self
                    .keys
                    .begin(who.buyer, key, fingerprint, self.core.clock.now())
                {
                    Begin::Fresh(claim) => Some(claim),
                    Begin::Replay(answer) => {
                        self.core.counters.count(Counted::Replayed);
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
        self.reserve_as(who, sale, item_no, quantity, claim).await
    }

    async fn load(&self, _state: &LiveSaleState) -> Result<(), SaleError> {
        // The ledger is this engine's state: installing the sale there is all it takes.
        Ok(())
    }

    async fn unload(&self, _sale: SaleId) {
        // Installed in the ledger only once stored: nothing to drop.
    }

    async fn refresh(&self, _sale: &LiveSale) -> Result<(), SaleError> {
        // The ledger is the truth.
        Ok(())
    }

    async fn settle(&self, released: &Released, _to: SettleTo) -> Result<(), StoreError> {
        self.core.ledger.release(released);
        Ok(())
    }

    fn checked_out(&self, record: &Arc<ReservationRecord>) {
        let Some(sale) = self.core.ledger.get(&record.sale_id) else {
            return;
        };
        if let Some((name, price)) = sale.item(record.item_no) {
            self.contest_book
                .add(Arc::clone(record), name, price, sale.record.currency);
        }
    }

    /// A reservation checked out since start is decided in memory and its purchase made
    /// durable by the group commit (contest_book.rs); any other is looked up in storage.
    async fn purchase(&self, id: ReservationId) -> Result<PurchaseOutcome, SaleError> {
        let core = &*self.core;
        let slot = core.commit_slot().await?;
        // Storage keeps whole microseconds: the answer must be the same after a restart.
        let now = core.clock.now();
        let now = now - Duration::nanoseconds(i64::from(now.nanosecond() % 1_000));
        let decision = self.contest_book.purchase(id, now, |at| {
            slot.send(JournalOp::MarkPurchased { id, at }, None)
        });
        match decision {
            Decision::Expired => Err(SaleError::ReservationExpired),
            Decision::Purchased {
                outcome,
                at,
                queued,
            } => match queued.await {
                Ok(Ok(_)) => {
                    self.contest_book.committed(id, at);
                    Ok(outcome)
                }
                Ok(Err(failed)) => {
                    self.contest_book.failed(id);
                    Err(SaleError::Unavailable(failed.0))
                }
                Err(_) => {
                    self.contest_book.failed(id);
                    Err(SaleError::Unavailable("the commit task has stopped".into()))
                }
            },
            Decision::Unknown => core.purchase_stored(id).await,
        }
    }

    /// The contest book marks what is due by `now`, then every purchase decided before the
    /// mark is committed (contest_book.rs), so storage never expires one that was bought.
    async fn before_expiry(&self, now: OffsetDateTime) {
        if self.core.settings.contest {
            self.contest_book.expire_due(now);
            self.core.commit.flush().await;
        }
    }

    fn answers_before_storing(&self) -> bool {
        false
    }

    async fn catch_up(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn write_logged(&self) -> Result<usize, StoreError> {
        Ok(0)
    }

    async fn adopt(&self, _sale: SaleId) -> Result<Option<Arc<LiveSale>>, StoreError> {
        Ok(None)
    }

    async fn forget_stored(&self) {}

    async fn reconcile(&self) -> Result<Vec<(SaleRecord, Reconciled)>, StoreError> {
        Err(StoreError::Other(
            "reconcile compares the shared engine (redis.url) with the records; none is set".into(),
        ))
    }

    fn housekeeping(&self, now: OffsetDateTime) {
        self.keys.prune(now);
        self.contest_book.prune(now - Duration::MINUTE);
    }
}
