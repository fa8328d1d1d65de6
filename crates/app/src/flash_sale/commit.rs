//! The group commit: writes queue up while the previous transaction commits, and the next
//! transaction takes all of them at once. Under load one commit serves hundreds of reservations;
//! alone, a reservation commits by itself without waiting for company. The one exception is a
//! batch nobody waits for, of reservations a shared engine has logged (`flash_sale.ack =
//! redis`): it waits `GATHER_LOGGED` for more to join it.
//!
//! A failed transaction gives every reservation in it back to the in-memory ledger here, in the
//! commit task, not in the request that asked for it: a request whose client went away must not
//! leave its stock held. A journal that panics fails its batch like an error, and the task goes
//! on. Should the task end all the same, every request waiting for it gets an error at once,
//! new ones are refused at once, and what was queued but never handed to storage gives its
//! stock back; the batch storage had in hand when the task ended is left held (whether it
//! committed is unknown), and the ledger rebuilt at the next start has the truth of it.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flashmart_domain::SaleId;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::flash_sale::idempotency::{Answer, Claim};
use crate::flash_sale::ledger::Hold;
use crate::flash_sale::model::{JournalOp, JournalOutcome, ReservationRecord};
use crate::health::{Heartbeat, StopGuard};
use crate::ports::{LogEntry, ReservationJournal};

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
    /// The shared engine's log entry of the reservation the op stores: handed on once stored.
    logged: Option<(SaleId, LogEntry)>,
}

#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Pending>,
    beat: Arc<Heartbeat>,
    /// Log entries of the shared engine whose reservations are committed (see `stored_log`).
    stored: Arc<Mutex<mpsc::Receiver<(SaleId, LogEntry)>>>,
}

/// How many committed log entries wait to be dropped from the engine's log; beyond that they
/// are left there, for the log writers to find stored.
const STORED_LOG_QUEUE: usize = 65_536;

/// How long a batch that nobody waits for, of reservations a shared engine has logged (with
/// `flash_sale.ack = redis`), waits for more to join it before it is written.
const GATHER_LOGGED: Duration = Duration::from_millis(2);

/// A batch taking this long is stuck (storage hung).
const STUCK_AFTER: Duration = Duration::from_secs(30);

impl Drop for Pending {
    fn drop(&mut self) {
        // Still holding its op: it never reached storage, so its stock is free again. (Once the
        // op is handed over, the commit task settles the pledge itself.)
        if self.op.is_some()
            && let Some(pledge) = self.pledge.take()
        {
            pledge.broken();
        }
    }
}

impl Pending {
    /// A shared engine's logged reservation that nobody waits for: durable already (in the
    /// engine's log, which a log writer stores should this write not happen).
    fn logged_only(&self) -> bool {
        self.reply.is_none() && self.logged.is_some()
    }
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
        self.queue(op, pledge, Some(reply), None);
        rx
    }

    /// Queues `op`, which stores the reservation the shared engine logged at `logged`: once it
    /// commits, the entry is handed on (`GroupCommit::stored_log`). `wait`: answers when it
    /// commits; otherwise nobody is told (what becomes of it is logged and counted by the
    /// commit task).
    pub fn send_logged(
        self,
        op: JournalOp,
        logged: Option<(SaleId, LogEntry)>,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<JournalOutcome, CommitFailed>>> {
        if !wait {
            self.queue(op, None, None, logged);
            return None;
        }
        let (reply, rx) = oneshot::channel();
        self.queue(op, None, Some(reply), logged);
        Some(rx)
    }

    fn queue(
        self,
        op: JournalOp,
        pledge: Option<Pledge>,
        reply: Option<Reply>,
        logged: Option<(SaleId, LogEntry)>,
    ) {
        self.0.send(Pending {
            op: Some(op),
            has_op: true,
            pledge,
            reply,
            logged,
        });
    }
}

impl GroupCommit {
    /// Starts the commit task. It runs until every `GroupCommit` handle is dropped, committing
    /// whatever is still queued first.
    pub fn start(journal: Arc<dyn ReservationJournal>, queue: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (stored_tx, stored_rx) = mpsc::channel(STORED_LOG_QUEUE);
        // Idle is fine: it runs when there is something to write.
        let beat = Heartbeat::new("group_commit", STUCK_AFTER, None);
        let task = tokio::spawn(run(journal, rx, Arc::clone(&beat), stored_tx));
        let stored = Arc::new(Mutex::new(stored_rx));
        (Self { tx, beat, stored }, task)
    }

    /// The shared engine's log entries whose reservations were committed since the last call.
    pub fn stored_log(&self) -> Vec<(SaleId, LogEntry)> {
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::from_fn(|| stored.try_recv().ok()).collect()
    }

    /// The commit task's heartbeat, for readiness.
    pub fn heartbeat(&self) -> Arc<Heartbeat> {
        Arc::clone(&self.beat)
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
            logged: None,
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
            logged: None,
        });
        let _ = rx.await;
    }
}

/// Adds to `batch` what is queued already, up to `MAX_BATCH`, without waiting.
fn take_queued(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

async fn run(
    journal: Arc<dyn ReservationJournal>,
    mut rx: mpsc::Receiver<Pending>,
    beat: Arc<Heartbeat>,
    stored_log: mpsc::Sender<(SaleId, LogEntry)>,
) {
    let _stopped = StopGuard(Arc::clone(&beat));
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut ops: Vec<JournalOp> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if batch.len() < MAX_BATCH {
            // Requests already running on this worker queue their writes before this batch is
            // taken: one more poll of this task per batch, where a write that outruns its
            // requests makes batches of one, a system call and a wake-up each (measured: 1.1
            // reservations a batch without it, 19 with it, at 64 connections).
            tokio::task::yield_now().await;
            take_queued(&mut rx, &mut batch);
        }
        if batch.len() < MAX_BATCH && batch.iter().all(Pending::logged_only) {
            // Nobody waits for these (a shared engine answered from its log): more of them
            // in one transaction cost storage less each than a transaction as soon as one came.
            tokio::time::sleep(GATHER_LOGGED).await;
            take_queued(&mut rx, &mut batch);
        }
        ops.extend(batch.iter_mut().filter_map(|p| p.op.take()));
        let started = Instant::now();
        beat.started();
        let mut panicked = false;
        let result = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            // A panic in storage code unwinds out of its transaction (which rolls back): the
            // batch failed, and the task carries on.
            let span = tracing::debug_span!("flash_sale.group_commit", batch = ops.len());
            match AssertUnwindSafe(tracing::Instrument::instrument(journal.commit(&ops), span))
                .catch_unwind()
                .await
            {
                Ok(result) => result,
                Err(_) => {
                    panicked = true;
                    Err(StoreError::Unavailable("the journal panicked".into()))
                }
            }
        };
        beat.finished(!panicked);
        metrics::histogram!("flash_sale_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("flash_sale_commit_batch_size").record(ops.len() as f64);
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for mut pending in batch.drain(..) {
                    if let Some(pledge) = pending.pledge.take() {
                        pledge.kept();
                    }
                    if let Some(logged) = pending.logged.take() {
                        // Full: left in the log, where a writer finds it stored.
                        let _ = stored_log.try_send(logged);
                    }
                    let outcome = if pending.has_op {
                        outcomes.next().unwrap_or(JournalOutcome::Done)
                    } else {
                        JournalOutcome::Done
                    };
                    if let Some(reply) = pending.reply.take() {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
            Err(err) => {
                tracing::error!(%err, ops = ops.len(), "group commit failed; stock given back");
                metrics::counter!("flash_sale_commit_failures_total").increment(1);
                let failed = CommitFailed(err.to_string().into());
                for mut pending in batch.drain(..) {
                    if let Some(pledge) = pending.pledge.take() {
                        pledge.broken();
                    }
                    if let Some(reply) = pending.reply.take() {
                        let _ = reply.send(Err(failed.clone()));
                    }
                }
            }
        }
        ops.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use async_trait::async_trait;
    use time::OffsetDateTime;

    use super::*;
    use flashmart_domain::ReservationId;

    /// Takes every batch and remembers how many ops each had.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<usize>>);

    #[async_trait]
    impl ReservationJournal for Recording {
        async fn commit(&self, ops: &[JournalOp]) -> Result<Vec<JournalOutcome>, StoreError> {
            self.0.lock().unwrap().push(ops.len());
            Ok(ops.iter().map(|_| JournalOutcome::Done).collect())
        }
    }

    fn op() -> JournalOp {
        JournalOp::MarkPurchased {
            id: ReservationId::new(),
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn logged_writes_nobody_waits_for_are_gathered() {
        let journal = Arc::new(Recording::default());
        let (commit, _task) = GroupCommit::start(Arc::clone(&journal) as _, 16);
        let sale = SaleId::new();
        let first = commit.slot().await.unwrap();
        assert!(
            first
                .send_logged(op(), Some((sale, LogEntry(1, 0))), false)
                .is_none()
        );
        // Within the gathering time: the second joins the first's transaction.
        tokio::time::sleep(GATHER_LOGGED / 2).await;
        let second = commit.slot().await.unwrap();
        assert!(
            second
                .send_logged(op(), Some((sale, LogEntry(1, 1))), false)
                .is_none()
        );
        commit.flush().await;
        assert_eq!(*journal.0.lock().unwrap(), [2]);
        // Both handed on as stored.
        assert_eq!(
            commit.stored_log(),
            [(sale, LogEntry(1, 0)), (sale, LogEntry(1, 1))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_someone_waits_for_is_not_held_back() {
        let journal = Arc::new(Recording::default());
        let (commit, _task) = GroupCommit::start(Arc::clone(&journal) as _, 16);
        let started = tokio::time::Instant::now();
        let committed = commit
            .slot()
            .await
            .unwrap()
            .send_logged(op(), Some((SaleId::new(), LogEntry(1, 0))), true)
            .unwrap();
        committed.await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        commit.submit(op()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(*journal.0.lock().unwrap(), [1, 1]);
    }
}
