//! Reservations sent to Redis a batch at a time, per sale: a request joins its sale's queue, and
//! the sale's runner (at most [`RUNNING_PER_SALE`] of them, each a task of its own) takes what
//! has queued, up to [`MAX_BATCH`], into one run of the reservation script. Nothing waits for a
//! batch to fill: a runner takes what is there, so a lone request goes out at once, and under
//! load the requests that arrive while Redis works on one batch make the next. Redis then pays
//! its per-command cost, and reads a sale's window, an item's stock and a buyer's holding, once
//! per batch instead of once per reservation; the process sends one command instead of many.
//!
//! The runner is a task rather than one of the waiting requests, so that a request whose client
//! goes away cannot take the others' answers with it; one that went away while it waited is
//! left out of its batch. One that went away while Redis decided it, or before it read its
//! answer, leaves a reservation nobody heard of: it is kept here ([`Unheard`]) for this
//! instance's next log writer pass (`take_logged`), which stores it at once instead of when its
//! log entry is old enough for any writer to take. A batch is decided in order, each request
//! as if it had been sent alone after the ones before it (see `reserve.lua`).

use std::fmt::Write as _;
use std::sync::Mutex;

use dashmap::DashMap;
use flashmart_app::StoreError;
use flashmart_app::ports::SharedReserve;
use flashmart_domain::{ReservationId, SaleId};
use redis::aio::ConnectionLike;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::engine::RedisEngine;
use crate::{Decision, MAX_BATCH, ReserveRequest};

/// Batches of one sale in Redis at once: while one is decided, the next is on its way.
pub(crate) const RUNNING_PER_SALE: usize = 2;

/// A request waiting for its batch, with what it borrowed copied.
struct Waiting {
    item: u32,
    buyer: uuid::Uuid,
    quantity: u32,
    idempotency_key: Option<Box<str>>,
    now: OffsetDateTime,
    buyer_ref: Option<Box<str>>,
    max_keys: u32,
    answer: oneshot::Sender<Result<Decision, String>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    running: usize,
}

/// Reservations kept for the next writer pass at most; beyond them, a log entry waits until it
/// is old enough for any writer (as when this instance dies).
const MAX_UNHEARD: usize = 10_000;

/// A reservation Redis made for a request whose client went away before it heard the answer:
/// its log entry, and what the writer needs to store it.
#[derive(Debug)]
pub(crate) struct Unheard {
    pub(crate) sale: SaleId,
    /// The entry in the sale's log (`ms`, `seq`).
    pub(crate) entry: (u64, u64),
    pub(crate) id: ReservationId,
    pub(crate) item: u32,
    pub(crate) buyer: uuid::Uuid,
    pub(crate) quantity: u32,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) buyer_ref: Option<Box<str>>,
}

impl Unheard {
    /// The reservation `decision` made for the request `(sale, item, buyer, quantity,
    /// buyer_ref)`, if it made one that its log holds (a replay's entry is an earlier one).
    fn of(
        sale: SaleId,
        (item, buyer, quantity, buyer_ref): (u32, uuid::Uuid, u32, Option<&str>),
        decision: &Decision,
    ) -> Option<Self> {
        match *decision {
            Decision::Reserved {
                id,
                expires_at,
                entry: Some(entry),
                ..
            } => Some(Self {
                sale,
                entry,
                id,
                item,
                buyer,
                quantity,
                expires_at,
                buyer_ref: buyer_ref.map(Into::into),
            }),
            _ => None,
        }
    }
}

/// Every sale's queue, and the reservations nobody heard of.
#[derive(Default)]
pub(crate) struct Batches {
    queues: DashMap<SaleId, Queue>,
    unheard: Mutex<Vec<Unheard>>,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("sales", &self.queues.len())
            .finish()
    }
}

impl Batches {
    /// The next batch of `sale`, or `None` (and one runner fewer) when nothing waits.
    fn next(&self, sale: SaleId) -> Option<Vec<Waiting>> {
        let mut queue = self.queues.get_mut(&sale)?;
        if queue.waiting.is_empty() {
            queue.running -= 1;
            return None;
        }
        let take = queue.waiting.len().min(MAX_BATCH);
        Some(queue.waiting.drain(..take).collect())
    }

    fn stopped(&self, sale: SaleId) {
        if let Some(mut queue) = self.queues.get_mut(&sale) {
            queue.running -= 1;
        }
    }

    /// How many of `sale`'s runners are running and how many requests wait for one (for
    /// tests that need a request to be waiting).
    #[cfg(feature = "testing")]
    pub(crate) fn state(&self, sale: SaleId) -> (usize, usize) {
        self.queues
            .get(&sale)
            .map_or((0, 0), |q| (q.running, q.waiting.len()))
    }

    /// Keeps a reservation nobody heard of for the next writer pass (unless as many wait already).
    fn unheard(&self, reservation: Unheard) {
        let mut unheard = self.unheard.lock().unwrap_or_else(|e| e.into_inner());
        if unheard.len() < MAX_UNHEARD {
            unheard.push(reservation);
        }
    }

    /// Up to `max` of `sale`'s reservations nobody heard of, no longer kept here.
    pub(crate) fn take_unheard(&self, sale: SaleId, max: usize) -> Vec<Unheard> {
        let mut unheard = self.unheard.lock().unwrap_or_else(|e| e.into_inner());
        unheard
            .extract_if(.., |u| u.sale == sale)
            .take(max)
            .collect()
    }

    /// Forgets an ended sale's queue when nothing is in it.
    pub(crate) fn forget(&self, sale: SaleId) {
        self.queues
            .remove_if(&sale, |_, q| q.waiting.is_empty() && q.running == 0);
    }
}

/// A request's wait for its answer. Dropped unread (its client went away while Redis decided
/// it, or before the request read the answer), a reservation made for it goes to the next
/// writer pass; dropped before the answer came, the runner finds the channel closed. (Once the
/// answer is read, the channel has nothing more to give.)
struct Awaited<'a, 'r> {
    answered: oneshot::Receiver<Result<Decision, String>>,
    batches: &'a Batches,
    request: &'a SharedReserve<'r>,
}

impl Drop for Awaited<'_, '_> {
    fn drop(&mut self) {
        // Closed first, so that an answer is either here now or never sent.
        self.answered.close();
        if let Ok(Ok(decision)) = self.answered.try_recv() {
            let r = self.request;
            let request = (r.item_no, r.buyer.0, r.quantity, r.buyer_ref);
            if let Some(unheard) = Unheard::of(r.sale, request, &decision) {
                self.batches.unheard(unheard);
            }
        }
    }
}

/// A running runner: counted out if it stops other than by finding its queue empty (a panic),
/// so that the next request starts another.
struct Runner<'a> {
    batches: &'a Batches,
    sale: SaleId,
    done: bool,
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.batches.stopped(self.sale);
        }
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisEngine<C> {
    /// `request` decided in its sale's next batch.
    pub(crate) async fn decide_in_batch(
        &self,
        request: &SharedReserve<'_>,
    ) -> Result<Decision, StoreError> {
        // Refused alone, before it can fail a batch of others (a buyer's id is always stored).
        if !crate::storable_key(request.idempotency_key) {
            return Err(StoreError::Unavailable(
                "redis: a key the reservation script cannot store".into(),
            ));
        }
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.batches.queues.entry(request.sale).or_default();
            queue.waiting.push(Waiting {
                item: request.item_no,
                buyer: request.buyer.0,
                quantity: request.quantity,
                idempotency_key: request.idempotency_key.map(Into::into),
                now: request.now,
                buyer_ref: request.buyer_ref.map(Into::into),
                max_keys: request.max_keys,
                answer,
            });
            let start = queue.running < RUNNING_PER_SALE;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().run_batches(request.sale));
        }
        let mut answer = Awaited {
            answered,
            batches: &self.batches,
            request,
        };
        match (&mut answer.answered).await {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(err)) => Err(StoreError::Unavailable(err)),
            Err(_) => Err(StoreError::Unavailable(
                "redis: the reservation's batch was dropped".into(),
            )),
        }
    }

    /// Runs `sale`'s batches until its queue is empty.
    async fn run_batches(self, sale: SaleId) {
        let mut runner = Runner {
            batches: &self.batches,
            sale,
            done: false,
        };
        loop {
            let Some(batch) = runner.batches.next(sale) else {
                runner.done = true;
                return;
            };
            let span = tracing::debug_span!(
                parent: None,
                "redis.reserve_batch",
                size = batch.len()
            );
            self.run_batch(sale, batch).instrument(span).await;
        }
    }

    async fn run_batch(&self, sale: SaleId, mut batch: Vec<Waiting>) {
        // A request whose client went away while it waited is not sent: nobody would be told
        // its answer, and a reservation made for it would hold stock (and count against its
        // buyer's limit) until it expired.
        batch.retain(|waiting| !waiting.answer.is_closed());
        if batch.is_empty() {
            return;
        }
        // Every buyer's id as text in one buffer, so the requests can borrow them.
        let mut names = String::with_capacity(batch.len() * uuid::fmt::Hyphenated::LENGTH);
        for waiting in &batch {
            let _ = write!(names, "{}", waiting.buyer.hyphenated());
        }
        let requests: Vec<ReserveRequest<'_>> = batch
            .iter()
            .enumerate()
            .map(|(i, w)| ReserveRequest {
                sale,
                item: w.item,
                buyer: &names[i * uuid::fmt::Hyphenated::LENGTH..][..uuid::fmt::Hyphenated::LENGTH],
                quantity: w.quantity,
                idempotency_key: w.idempotency_key.as_deref(),
                now: w.now,
                buyer_ref: w.buyer_ref.as_deref(),
                max_keys: w.max_keys,
            })
            .collect();
        let mut conn = self.conn.clone();
        let decided = self.sales.reserve_batch(&mut conn, &requests).await;
        drop(requests);
        match decided {
            Ok(decisions) => {
                for (waiting, decision) in batch.into_iter().zip(decisions) {
                    // A request gone while Redis decided it: its reservation, in the sale's
                    // log, goes to the next writer pass.
                    if let Err(Ok(decision)) = waiting.answer.send(Ok(decision))
                        && let Some(unheard) = Unheard::of(
                            sale,
                            (
                                waiting.item,
                                waiting.buyer,
                                waiting.quantity,
                                waiting.buyer_ref.as_deref(),
                            ),
                            &decision,
                        )
                    {
                        self.batches.unheard(unheard);
                    }
                }
            }
            Err(err) => {
                let err = format!("redis: {err}");
                for waiting in batch {
                    let _ = waiting.answer.send(Err(err.clone()));
                }
            }
        }
    }
}
