//! Delivering notifications as a real provider does: one attempt at once, then retries on a
//! bounded schedule (seconds at first, hours at the end), after which the notification is dead
//! and waits on the dead-letter list for someone to look. Every attempt, its answer and the next
//! one are recorded in the sandbox's database, so a restart goes on where it stopped.

use std::sync::Arc;

use flashmart_app::payments::DeadLetter;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{Books, Sandbox, SandboxError, books, sign};

/// The wait after each failed attempt before the next, in seconds: 11 attempts over about 16
/// hours. After the last the notification is dead.
pub const RETRY_SCHEDULE_SECS: [i64; 10] = [1, 5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800];

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Sandbox {
    /// Counts delivery attempts made, whatever their outcome, for whoever must wait for one.
    pub fn attempted(&self) -> watch::Receiver<u64> {
        self.attempted.subscribe()
    }

    /// Starts the first attempt of a new event in the background.
    pub(crate) fn send_first(self: &Arc<Self>, event_id: String, body: String) {
        if !self.claim(&event_id) {
            return;
        }
        let sandbox = Arc::clone(self);
        // In the trace of whatever settled the payment (the buyer pressing Pay).
        let span = tracing::debug_span!("sandbox.notify", event = %event_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                sandbox.attempt(&event_id, &body).await;
                sandbox.release(&event_id);
            },
            span,
        ));
    }

    /// Marks an event as being sent now; `false` when it already is.
    fn claim(&self, event_id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(event_id.to_owned())
    }

    fn release(&self, event_id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id);
    }

    /// Makes every attempt that is due (an event never acknowledged, not dead, whose next attempt
    /// time has come) and not being made already, and waits for them. Called at start, once the
    /// notify URL is known, and then every second. Returns how many it made.
    pub async fn redeliver_due(self: &Arc<Self>) -> Result<usize, SandboxError> {
        let due: Vec<(String, String)> = books!(&self.books, pool => sqlx::query_as(
            "SELECT event_id, body FROM sandbox_events \
             WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, event_id LIMIT 100",
        )
        .bind(self.clock.now().unix_timestamp())
        .fetch_all(pool)
        .await)?;
        let mut made = 0;
        for (event_id, body) in due {
            if !self.claim(&event_id) {
                continue;
            }
            self.attempt(&event_id, &body).await;
            self.release(&event_id);
            made += 1;
        }
        Ok(made)
    }

    /// One attempt: sent, then recorded (delivered; or the next attempt's time; or dead).
    async fn attempt(&self, event_id: &str, body: &str) {
        let url = self
            .notify_url
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(url) = url else {
            tracing::error!(event = %event_id, "sandbox has no notify URL; notification not sent");
            return;
        };
        let transport = Arc::clone(&self.transport.read().unwrap_or_else(|e| e.into_inner()));
        // Signed at each attempt, so a retry is not refused as stale.
        let header = sign(
            &self.secret,
            self.clock.now().unix_timestamp(),
            body.as_bytes(),
        );
        let result = transport
            .post(&url, &header, body.as_bytes().to_vec())
            .await;
        let now = self.clock.now().unix_timestamp();
        let recorded = match &result {
            Ok(status) if (200..300).contains(status) => books!(&self.books, pool => sqlx::query(
                "UPDATE sandbox_events SET attempts = attempts + 1, delivered_at = $1, \
                 last_status = $2, last_error = NULL WHERE event_id = $3",
            )
            .bind(now)
            .bind(i64::from(*status))
            .bind(event_id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
            .map(|_| true),
            failed => self
                .schedule_retry(event_id, failed, now)
                .await
                .map(|_| false),
        };
        match recorded {
            Ok(true) => {
                self.delivered.send_modify(|n| *n += 1);
            }
            Ok(false) => {}
            Err(err) => {
                tracing::error!(event = %event_id, %err, "sandbox cannot record a delivery attempt");
            }
        }
        self.attempted.send_modify(|n| *n += 1);
    }

    async fn schedule_retry(
        &self,
        event_id: &str,
        failed: &Result<u16, String>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let attempts: i64 = books!(&self.books, pool => sqlx::query_scalar("SELECT attempts FROM sandbox_events WHERE event_id = $1")
                .bind(event_id)
                .fetch_one(pool)
                .await)?;
        let (status, error) = match failed {
            Ok(status) => (Some(i64::from(*status)), None),
            Err(err) => (None, Some(err.as_str())),
        };
        // `attempts` is the count before this one.
        let wait = usize::try_from(attempts)
            .ok()
            .and_then(|n| RETRY_SCHEDULE_SECS.get(n));
        match wait {
            Some(wait) => {
                tracing::warn!(event = %event_id, ?status, error, attempt = attempts + 1, retry_in_secs = wait, "notification not acknowledged");
                books!(&self.books, pool => sqlx::query(
                    "UPDATE sandbox_events SET attempts = attempts + 1, next_attempt_at = $1, \
                     last_status = $2, last_error = $3 WHERE event_id = $4",
                )
                .bind(now + wait)
                .bind(status)
                .bind(error)
                .bind(event_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
            }
            None => {
                tracing::error!(event = %event_id, ?status, error, attempts = attempts + 1, "notification given up on: dead-lettered");
                books!(&self.books, pool => sqlx::query(
                    "UPDATE sandbox_events SET attempts = attempts + 1, dead_at = $1, \
                     last_status = $2, last_error = $3 WHERE event_id = $4",
                )
                .bind(now)
                .bind(status)
                .bind(error)
                .bind(event_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
            }
        }
        Ok(())
    }

    /// Notifications given up on, newest first, and how many there are (the provider port's
    /// `dead_letters`).
    pub(crate) async fn read_dead_letters(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeadLetter>, u64), sqlx::Error> {
        let total: i64 = books!(&self.books, pool => sqlx::query_scalar("SELECT COUNT(*) FROM sandbox_events WHERE dead_at IS NOT NULL")
                .fetch_one(pool)
                .await)?;
        type Row = (
            String,
            String,
            String,
            i64,
            Option<i64>,
            Option<String>,
            i64,
            i64,
        );
        let rows: Vec<Row> = books!(&self.books, pool => sqlx::query_as(
            "SELECT event_id, ref, body, attempts, last_status, last_error, created_at, dead_at \
             FROM sandbox_events WHERE dead_at IS NOT NULL \
             ORDER BY dead_at DESC, event_id LIMIT $1 OFFSET $2",
        )
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await)?;
        let letters = rows
            .into_iter()
            .map(
                |(event_id, payment_ref, body, attempts, status, error, created, dead)| {
                    DeadLetter {
                        event_id,
                        payment_ref,
                        body,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        last_status: status.and_then(|s| u16::try_from(s).ok()),
                        last_error: error,
                        created_at: at(created),
                        dead_at: at(dead),
                    }
                },
            )
            .collect();
        Ok((letters, u64::try_from(total).unwrap_or(0)))
    }
}
