//! The load loop: `concurrency` workers, each on its own kept-alive connection, take request
//! numbers from a shared counter until `total` are sent or the deadline passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;

use crate::http::{Answer, Conn, Target};
use crate::stats::{Progress, Recorder, Summary};

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

/// Sends `total` requests made by `make`, keeping what `keep` extracts from each answer.
pub async fn hammer<T: Send + 'static>(
    name: &str,
    target: &Target,
    total: u64,
    concurrency: usize,
    deadline: Instant,
    make: MakeRequest,
    keep: KeepAnswer<T>,
) -> anyhow::Result<(Summary, Vec<T>)> {
    let next = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(name, total);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (next, done) = (Arc::clone(&next), Arc::clone(&progress.done));
        let (make, keep, target) = (Arc::clone(&make), Arc::clone(&keep), target.clone());
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut kept = Vec::new();
            let mut conn = Conn::open(&target).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
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
                        conn = Conn::open(&target).await?;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((recorder, kept))
        }));
    }
    let mut recorder = Recorder::default();
    let mut kept = Vec::new();
    for worker in workers {
        let (r, k) = worker.await??;
        recorder.merge(r);
        kept.extend(k);
    }
    let elapsed = started.elapsed();
    drop(progress);
    Ok((recorder.finish(name, elapsed), kept))
}
