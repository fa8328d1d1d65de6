//! The load loop: one worker per kept-alive connection, each taking request numbers from a
//! shared counter until the phase's range is sent or the deadline passes. The connections
//! outlive a phase, so that phases taken in turns (`stampede reserve --rounds`) pay no
//! connection set-up of their own.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;

use crate::http::{Answer, Conn, Target};
use crate::stats::{Progress, Recorder, per_second};

/// One request to send.
#[derive(Debug, Clone)]
pub struct Spec {
    pub method: Method,
    pub path: Arc<str>,
    pub token: Option<HeaderValue>,
    pub body: Option<Bytes>,
    pub idempotency_key: Option<HeaderValue>,
}

pub type MakeRequest = Arc<dyn Fn(u64) -> Spec + Send + Sync>;
pub type KeepAnswer<T> = Arc<dyn Fn(u64, &Answer) -> Option<T> + Send + Sync>;

/// What one phase measured, before it is merged with the other phases of its kind.
#[derive(Debug)]
pub struct Phase<T> {
    pub recorder: Recorder,
    pub elapsed: Duration,
    pub kept: Vec<T>,
}

impl<T> Phase<T> {
    /// Answers a second.
    pub fn throughput(&self) -> f64 {
        per_second(self.recorder.answered(), self.elapsed)
    }
}

/// `concurrency` connections to `target`, opened before any phase starts.
pub async fn connect(target: &Target, concurrency: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(concurrency.max(1));
    for _ in 0..concurrency.max(1) {
        conns.push(Conn::open(target).await?);
    }
    Ok(conns)
}

/// Sends requests `range` made by `make`, one worker per connection of `conns` (which it gives
/// back), keeping what `keep` extracts from each answer.
pub async fn hammer<T: Send + 'static>(
    name: &str,
    conns: &mut Vec<Conn>,
    range: Range<u64>,
    deadline: Instant,
    make: MakeRequest,
    keep: KeepAnswer<T>,
) -> anyhow::Result<Phase<T>> {
    let next = Arc::new(AtomicU64::new(range.start));
    let end = range.end;
    let progress = Progress::start(name, range.end.saturating_sub(range.start));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(conns.len());
    for mut conn in conns.drain(..) {
        let (next, done) = (Arc::clone(&next), Arc::clone(&progress.done));
        let (make, keep) = (Arc::clone(&make), Arc::clone(&keep));
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut kept = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end || Instant::now() >= deadline {
                    break;
                }
                let spec = make(i);
                let key = spec
                    .idempotency_key
                    .as_ref()
                    .map(|v| ("idempotency-key", v));
                match conn
                    .send(
                        &spec.method,
                        &spec.path,
                        spec.token.as_ref(),
                        spec.body,
                        key,
                    )
                    .await
                {
                    Ok(answer) => {
                        recorder.record(answer.status.as_u16(), answer.code(), answer.latency);
                        if let Some(t) = keep(i, &answer) {
                            kept.push(t);
                        }
                    }
                    Err(_) => {
                        recorder.error();
                        conn.reconnect().await?;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((conn, recorder, kept))
        }));
    }
    let mut recorder = Recorder::default();
    let mut kept = Vec::new();
    for worker in workers {
        let (conn, r, k) = worker.await??;
        conns.push(conn);
        recorder.merge(r);
        kept.extend(k);
    }
    let elapsed = started.elapsed();
    drop(progress);
    Ok(Phase {
        recorder,
        elapsed,
        kept,
    })
}
