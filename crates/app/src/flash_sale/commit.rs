//! The group commit: writes queue up while the previous transaction commits, and the next
//! transaction takes all of them at once. Under load one commit serves hundreds of reservations;
//! alone, a reservation commits by itself without waiting for company.
//!
//! A failed transaction gives every reservation in it back to the in-memory ledger here, in the
//! commit task, not in the request that asked for it: a request whose client went away must not
//! leave its stock held.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::flash_sale::idempotency::{Answer, Claim};
use crate::flash_sale::ledger::Hold;
use crate::flash_sale::model::{JournalOp, JournalOutcome, ReservationRecord};
use crate::ports::ReservationJournal;

/// The most ops one transaction takes.
const MAX_BATCH: usize = 2048;

/// Why an op was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("commit failed: {0}")]
pub struct CommitFailed(pub Arc<str>);

type Reply = oneshot::Sender<Result<JournalOutcome, CommitFailed>>;

/// What a queued reservation owes, settled by the commit task whatever became of the request:
/// committed, its idempotency key keeps the answer; failed, its stock goes back and its key is
/// freed.
#[derive(Debug)]
pub struct Pledge {
    pub hold: Hold,
    pub key: Option<(Claim, Arc<ReservationRecord>)>,
}

impl Pledge {
    fn kept(self) {
        if let Some((claim, record)) = self.key {
            claim.answer(Answer::Reserved(record));
        }
    }

    fn broken(self) {
        self.hold.give_back();
        if let Some((claim, _)) = self.key {
            claim.abandon();
        }
    }
}

struct Pending {
    /// `None` for a flush marker; taken out when the op joins a transaction.
    op: Option<JournalOp>,
    has_op: bool,
    pledge: Option<Pledge>,
    reply: Option<Reply>,
}

#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

/// A place in the commit queue, taken before any stock is, so that nothing can interrupt the
/// step from holding stock to queueing its write.
#[derive(Debug)]
pub struct Slot<'a>(mpsc::Permit<'a, Pending>);

impl Slot<'_> {
    /// Queues `op`, with what it owes once its transaction commits or fails.
    pub fn send(
        self,
        op: JournalOp,
        pledge: Option<Pledge>,
    ) -> oneshot::Receiver<Result<JournalOutcome, CommitFailed>> {
        let (reply, rx) = oneshot::channel();
        self.0.send(Pending {
            op: Some(op),
            has_op: true,
            pledge,
            reply: Some(reply),
        });
        rx
    }
}

impl GroupCommit {
    /// Starts the commit task. It runs until every `GroupCommit` handle is dropped, committing
    /// whatever is still queued first.
    pub fn start(journal: Arc<dyn ReservationJournal>, queue: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(run(journal, rx));
        (Self { tx }, task)
    }

    /// Waits for room in the queue (backpressure when storage falls behind).
    pub async fn slot(&self) -> Result<Slot<'_>, CommitFailed> {
        self.tx
            .reserve()
            .await
            .map(Slot)
            .map_err(|_| CommitFailed("the commit task has stopped".into()))
    }

    /// Queues `op` and waits until it is durable.
    pub async fn submit(&self, op: JournalOp) -> Result<JournalOutcome, CommitFailed> {
        let rx = self.slot().await?.send(op, None);
        rx.await
            .map_err(|_| CommitFailed("the commit task has stopped".into()))?
    }

    /// Queues `op` without waiting for it (records whose loss in a crash costs nothing, such as
    /// checkout attempts). Dropped, and counted, when the queue is full.
    pub fn submit_detached(&self, op: JournalOp) {
        let pending = Pending {
            op: Some(op),
            has_op: true,
            pledge: None,
            reply: None,
        };
        if self.tx.try_send(pending).is_err() {
            metrics::counter!("flash_sale_journal_dropped_total").increment(1);
        }
    }

    /// Returns once everything queued before the call is committed (or failed).
    pub async fn flush(&self) {
        let Ok(permit) = self.tx.reserve().await else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        permit.send(Pending {
            op: None,
            has_op: false,
            pledge: None,
            reply: Some(reply),
        });
        let _ = rx.await;
    }
}

async fn run(journal: Arc<dyn ReservationJournal>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut ops: Vec<JournalOp> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        ops.extend(batch.iter_mut().filter_map(|p| p.op.take()));
        let started = Instant::now();
        let result = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            journal.commit(&ops).await
        };
        metrics::histogram!("flash_sale_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("flash_sale_commit_batch_size").record(ops.len() as f64);
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for pending in batch.drain(..) {
                    if let Some(pledge) = pending.pledge {
                        pledge.kept();
                    }
                    let outcome = if pending.has_op {
                        outcomes.next().unwrap_or(JournalOutcome::Done)
                    } else {
                        JournalOutcome::Done
                    };
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err(err) => {
                tracing::error!(%err, ops = ops.len(), "group commit failed; stock given back");
                metrics::counter!("flash_sale_commit_failures_total").increment(1);
                let failed = CommitFailed(err.to_string().into());
                for pending in batch.drain(..) {
                    if let Some(pledge) = pending.pledge {
                        pledge.broken();
                    }
                    if let Some(reply) = pending.reply {
                        let _ = reply.send(Err(failed.clone()));
                    }
                }
            }
        }
        ops.clear();
    }
}
