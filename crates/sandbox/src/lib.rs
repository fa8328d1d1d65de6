//! The built-in sandbox payment provider. It behaves like a remote payment service: it keeps its
//! own books (in a SQLite file of its own, or in tables of its own in the shop's PostgreSQL
//! database), serves a pay page (with Pay and Fail buttons) where the buyer completes the
//! payment, and tells the merchant by an asynchronous notification over HTTP, signed with
//! HMAC-SHA256 over a timestamp and the body, retried until acknowledged. The merchant side knows
//! it only through the `PaymentProvider` port.

mod delivery;
mod pages;
mod signature;
mod transport;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flashmart_app::Clock;
use flashmart_app::payments::{
    CreatePayment, DeadLetter, Notification, NotificationKind, NotifyError, PaymentProvider,
    ProviderError, ProviderPayment, ProviderState,
};
use flashmart_domain::{Currency, Money};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use time::OffsetDateTime;
use tokio::sync::watch;

pub use delivery::RETRY_SCHEDULE_SECS;
pub use flashmart_app::signature::{TOLERANCE_SECS, sign};
pub use pages::pay_pages;
pub use transport::{HttpTransport, Transport, traceparent};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sandbox");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate!("../../migrations/sandbox-postgres");

/// Where the sandbox keeps its books: a SQLite file of its own (embedded mode), or tables of its
/// own in the shop's PostgreSQL database (scaled mode, where every instance must see the same
/// payments). Every statement is written once, with `$N` parameters both understand, and run
/// on whichever pool this is (`books!`).
#[derive(Debug, Clone)]
enum Books {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the books' pool, whichever database it is.
macro_rules! books {
    ($books:expr, $pool:ident => $body:expr) => {
        match $books {
            Books::Sqlite($pool) => $body,
            Books::Postgres($pool) => $body,
        }
    };
}
pub(crate) use books;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "sandbox-signature";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no such payment")]
    NotFound,
    #[error("this payment is {0}")]
    NotOpen(String),
    #[error("this payment has expired")]
    Expired,
    #[error("sandbox storage: {0}")]
    Storage(#[from] sqlx::Error),
}

/// A payment as the sandbox shows it on its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPayment {
    pub reference: String,
    pub amount: Money,
    pub description: String,
    /// `open`, `paid`, `failed` or `closed`.
    pub status: String,
    pub expires_at: OffsetDateTime,
}

/// The body of a notification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationBody {
    pub id: String,
    /// `payment.succeeded` or `payment.failed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub payment_ref: String,
    pub merchant_ref: String,
    pub amount_cents: i64,
    pub currency: String,
    pub occurred_at: i64,
}

/// An outage of the sandbox's refund service, to rehearse what a real provider does to a shop
/// (tests and drills; never set by configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefundFault {
    #[default]
    None,
    /// Refunds are not made and the call fails as unreachable.
    Down,
    /// Refunds are made but the answer is lost: the caller sees it fail as unreachable.
    LoseAnswers,
}

#[derive(Debug)]
pub struct Sandbox {
    books: Books,
    secret: Vec<u8>,
    notify_url: RwLock<Option<String>>,
    transport: RwLock<Arc<dyn Transport>>,
    clock: Arc<dyn Clock>,
    delivered: watch::Sender<u64>,
    /// Events being sent now, so that a resend never runs beside the first sending.
    in_flight: Mutex<HashSet<String>>,
    attempted: watch::Sender<u64>,
    refund_fault: Mutex<RefundFault>,
}

/// The sandbox's migrations, recorded apart from the shop's (which share the database).
async fn migrate_postgres(pool: &PgPool) -> Result<(), SandboxError> {
    let mut migrator =
        sqlx::migrate::Migrator::with_migrations(POSTGRES_MIGRATOR.iter().cloned().collect());
    migrator.dangerous_set_table_name("_sandbox_migrations");
    migrator
        .run(pool)
        .await
        .map_err(|e| SandboxError::Storage(e.into()))
}

fn storage(e: sqlx::Error) -> ProviderError {
    ProviderError::Unavailable(e.to_string())
}

impl Sandbox {
    /// Opens (creating) the sandbox's own SQLite database.
    pub async fn open(
        path: &std::path::Path,
        secret: Vec<u8>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SandboxError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5)),
            )
            .await?;
        SQLITE_MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| SandboxError::Storage(e.into()))?;
        Ok(Self::with_books(Books::Sqlite(pool), secret, clock))
    }

    /// Keeps the books in PostgreSQL, in the `sandbox_` tables of the database (and schema)
    /// `options` names, made if missing; their migrations are recorded apart from the shop's
    /// (`_sandbox_migrations`).
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
        secret: Vec<u8>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SandboxError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        migrate_postgres(&pool).await?;
        Ok(Self::with_books(Books::Postgres(pool), secret, clock))
    }

    /// Brings the sandbox's tables in PostgreSQL up to date, and nothing else (`flashmart
    /// migrate`).
    pub async fn migrate_postgres(options: PgConnectOptions) -> Result<(), SandboxError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let migrated = migrate_postgres(&pool).await;
        pool.close().await;
        migrated
    }

    fn with_books(books: Books, secret: Vec<u8>, clock: Arc<dyn Clock>) -> Self {
        let (delivered, _) = watch::channel(0);
        Self {
            books,
            secret,
            notify_url: RwLock::new(None),
            transport: RwLock::new(Arc::new(HttpTransport)),
            clock,
            delivered,
            in_flight: Mutex::default(),
            attempted: watch::channel(0).0,
            refund_fault: Mutex::default(),
        }
    }

    /// Where notifications go (the merchant's `/api/v1/payments/notify`).
    pub fn set_notify_url(&self, url: String) {
        *self.notify_url.write().unwrap_or_else(|e| e.into_inner()) = Some(url);
    }

    /// How notifications travel (HTTP by default; tests deliver in process).
    pub fn set_transport(&self, transport: Arc<dyn Transport>) {
        *self.transport.write().unwrap_or_else(|e| e.into_inner()) = transport;
    }

    /// The anti-forgery token of a pay page's forms for the browser holding `nonce`.
    pub fn form_token(&self, nonce: &str, reference: &str) -> String {
        signature::form_token(&self.secret, nonce, reference)
    }

    /// Whether a posted form's token belongs to this browser (its nonce) and this payment.
    pub fn check_form_token(&self, nonce: &str, reference: &str, token: &str) -> bool {
        signature::check_form_token(&self.secret, nonce, reference, token)
    }

    /// Simulates (or ends) an outage of refunds.
    pub fn set_refund_fault(&self, fault: RefundFault) {
        *self.refund_fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// What the sandbox refunded of a payment, by its own books.
    pub async fn refunded_cents(&self, reference: &str) -> Result<i64, SandboxError> {
        books!(&self.books, pool => sqlx::query_scalar("SELECT refunded_cents FROM sandbox_payments WHERE ref = $1")
            .bind(reference)
            .fetch_optional(pool)
            .await)?
            .ok_or(SandboxError::NotFound)
    }

    /// Counts notifications delivered (acknowledged with a 2xx), for whoever must wait for one.
    pub fn delivered(&self) -> watch::Receiver<u64> {
        self.delivered.subscribe()
    }

    pub async fn close_pool(&self) {
        books!(&self.books, pool => pool.close().await);
    }

    pub async fn payment(&self, reference: &str) -> Result<SandboxPayment, SandboxError> {
        let row: Option<(String, i64, String, String, String, i64)> = books!(&self.books, pool => sqlx::query_as(
            "SELECT ref, amount_cents, currency, description, status, expires_at \
             FROM sandbox_payments WHERE ref = $1",
        )
        .bind(reference)
        .fetch_optional(pool)
        .await)?;
        let (reference, cents, currency, description, status, expires_at) =
            row.ok_or(SandboxError::NotFound)?;
        let currency = Currency::parse(&currency).map_err(|_| SandboxError::NotFound)?;
        Ok(SandboxPayment {
            reference,
            amount: Money::new(cents, currency).map_err(|_| SandboxError::NotFound)?,
            description,
            status,
            expires_at: OffsetDateTime::from_unix_timestamp(expires_at)
                .map_err(|_| SandboxError::NotFound)?,
        })
    }

    /// The buyer pressed Pay (`paid`) or Fail: the payment is settled here and the merchant is
    /// told, asynchronously, until it acknowledges.
    pub async fn complete(
        self: &Arc<Self>,
        reference: &str,
        paid: bool,
    ) -> Result<(), SandboxError> {
        let now = self.clock.now();
        let payment = self.payment(reference).await?;
        if payment.status != "open" {
            return Err(SandboxError::NotOpen(payment.status));
        }
        if payment.expires_at <= now {
            return Err(SandboxError::Expired);
        }
        let status = if paid { "paid" } else { "failed" };
        // Settling and the event that tells the merchant are one transaction: a crash cannot
        // leave a paid payment nobody will hear about.
        let (event_id, json) = books!(&self.books, pool => {
            let mut tx = pool.begin().await?;
            let merchant_ref: Option<String> = sqlx::query_scalar(
                "UPDATE sandbox_payments SET status = $1, completed_at = $2 \
                 WHERE ref = $3 AND status = 'open' RETURNING merchant_ref",
            )
            .bind(status)
            .bind(now.unix_timestamp())
            .bind(reference)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(merchant_ref) = merchant_ref else {
                return Err(SandboxError::NotOpen("no longer open".into()));
            };
            let body = NotificationBody {
                id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
                kind: if paid {
                    "payment.succeeded"
                } else {
                    "payment.failed"
                }
                .into(),
                payment_ref: reference.to_owned(),
                merchant_ref,
                amount_cents: payment.amount.cents(),
                currency: payment.amount.currency().as_str().to_owned(),
                occurred_at: now.unix_timestamp(),
            };
            let json = serde_json::to_string(&body).unwrap_or_default();
            sqlx::query(
                "INSERT INTO sandbox_events (event_id, ref, body, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&body.id)
            .bind(reference)
            .bind(&json)
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            (body.id, json)
        });
        self.send_first(event_id, json);
        Ok(())
    }
}

impl Sandbox {
    /// One refund, once per `refund_id`: asked again, it answers as the first time did.
    async fn make_refund(
        &self,
        provider_ref: &str,
        amount: Money,
        refund_id: &str,
    ) -> Result<(), ProviderError> {
        books!(&self.books, pool => {
            let mut tx = pool.begin().await.map_err(storage)?;

            let fresh = sqlx::query(
                "INSERT INTO sandbox_refunds (refund_id, ref, amount_cents, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (refund_id) DO NOTHING",
            )
            .bind(refund_id)
            .bind(provider_ref)
            .bind(amount.cents())
            .bind(self.clock.now().unix_timestamp())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            if fresh.rows_affected() == 0 {
                return Ok(()); // the same refund asked twice
            }
            let done = sqlx::query(
                "UPDATE sandbox_payments SET refunded_cents = refunded_cents + $1 \
                 WHERE ref = $2 AND status = 'paid' AND currency = $3 \
                   AND refunded_cents + $1 <= amount_cents",
            )
            .bind(amount.cents())
            .bind(provider_ref)
            .bind(amount.currency().as_str())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            if done.rows_affected() == 0 {
                return Err(ProviderError::Refused(
                    "not paid, or the refunds would exceed the payment".into(),
                ));
            }
            tx.commit().await.map_err(storage)
        })
    }
}

#[async_trait]
impl PaymentProvider for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn signature_header(&self) -> &'static str {
        SIGNATURE_HEADER
    }

    async fn create(&self, request: &CreatePayment) -> Result<ProviderPayment, ProviderError> {
        let reference = format!("sbx_{}", uuid::Uuid::new_v4().simple());
        books!(&self.books, pool => sqlx::query(
            "INSERT INTO sandbox_payments (ref, merchant_ref, amount_cents, currency, \
             description, status, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, 'open', $6, $7)",
        )
        .bind(&reference)
        .bind(request.merchant_ref.to_string())
        .bind(request.amount.cents())
        .bind(request.amount.currency().as_str())
        .bind(&request.description)
        .bind(self.clock.now().unix_timestamp())
        .bind(request.expires_at.unix_timestamp())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(storage)?;
        Ok(ProviderPayment {
            pay_url: format!("/sandbox/pay/{reference}"),
            provider_ref: reference,
        })
    }

    async fn query(&self, provider_ref: &str) -> Result<ProviderState, ProviderError> {
        let row: Option<(String, i64)> =
            books!(&self.books, pool => sqlx::query_as("SELECT status, refunded_cents FROM sandbox_payments WHERE ref = $1")
                .bind(provider_ref)
                .fetch_optional(pool)
                .await)
                .map_err(storage)?;
        match row {
            None => Err(ProviderError::Refused("no such payment".into())),
            Some((status, refunded_cents)) => Ok(match status.as_str() {
                "paid" => ProviderState::Paid { refunded_cents },
                "failed" => ProviderState::Failed,
                "closed" => ProviderState::Closed,
                _ => ProviderState::Open,
            }),
        }
    }

    async fn close(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let done = books!(&self.books, pool => sqlx::query(
            "UPDATE sandbox_payments SET status = 'closed' WHERE ref = $1 AND status IN ('open', 'failed')",
        )
        .bind(provider_ref)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
        .map_err(storage)?;
        if done == 1 || self.query(provider_ref).await? == ProviderState::Closed {
            Ok(())
        } else {
            Err(ProviderError::Refused(
                "the payment is paid, or unknown".into(),
            ))
        }
    }

    async fn refund(
        &self,
        provider_ref: &str,
        amount: Money,
        refund_id: &str,
    ) -> Result<(), ProviderError> {
        let fault = *self.refund_fault.lock().unwrap_or_else(|e| e.into_inner());
        if fault == RefundFault::Down {
            return Err(ProviderError::Unavailable(
                "sandbox refunds are down".into(),
            ));
        }
        let done = self.make_refund(provider_ref, amount, refund_id).await;
        if fault == RefundFault::LoseAnswers {
            return Err(ProviderError::Unavailable(
                "the sandbox's answer was lost".into(),
            ));
        }
        done
    }

    fn verify(
        &self,
        signature: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Notification, NotifyError> {
        flashmart_app::signature::verify(&self.secret, signature, body, now)?;
        let n: NotificationBody =
            serde_json::from_slice(body).map_err(|e| NotifyError::Malformed(e.to_string()))?;
        let kind = match n.kind.as_str() {
            "payment.succeeded" => NotificationKind::Succeeded,
            "payment.failed" => NotificationKind::Failed,
            other => return Err(NotifyError::Malformed(format!("unknown type {other:?}"))),
        };
        let currency =
            Currency::parse(&n.currency).map_err(|e| NotifyError::Malformed(e.to_string()))?;
        Ok(Notification {
            event_id: n.id,
            provider_ref: n.payment_ref,
            kind,
            amount: Money::new(n.amount_cents, currency)
                .map_err(|e| NotifyError::Malformed(e.to_string()))?,
            occurred_at: OffsetDateTime::from_unix_timestamp(n.occurred_at)
                .map_err(|e| NotifyError::Malformed(e.to_string()))?,
        })
    }

    async fn dead_letters(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeadLetter>, u64), ProviderError> {
        self.read_dead_letters(limit, offset).await.map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use flashmart_app::ManualClock;
    use flashmart_domain::{Currency, Money, PaymentId};

    use super::*;

    /// Records what it is sent and answers 200.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<(String, Vec<u8>)>>);

    #[async_trait]
    impl Transport for Recorder {
        async fn post(&self, _url: &str, signature: &str, body: Vec<u8>) -> Result<u16, String> {
            self.0.lock().unwrap().push((signature.to_owned(), body));
            Ok(200)
        }
    }

    async fn open(path: &std::path::Path, clock: &ManualClock) -> Arc<Sandbox> {
        Arc::new(
            Sandbox::open(path, b"k".repeat(32), Arc::new(clock.clone()))
                .await
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_notification_never_acknowledged_is_sent_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.db");
        let clock = ManualClock::starting_mid_hour();
        let sandbox = open(&path, &clock).await;
        let payment = sandbox
            .create(&CreatePayment {
                merchant_ref: PaymentId::new(),
                amount: Money::new(1_500, Currency::USD).unwrap(),
                description: "order".into(),
                expires_at: clock.now() + time::Duration::minutes(15),
            })
            .await
            .unwrap();
        // No notify URL yet: the payment is settled, the notification is kept but not sent.
        sandbox.complete(&payment.provider_ref, true).await.unwrap();
        sandbox.close_pool().await;

        let restarted = open(&path, &clock).await;
        let recorder = Arc::new(Recorder::default());
        restarted.set_transport(recorder.clone());
        restarted.set_notify_url("http://merchant.test/notify".into());
        let mut delivered = restarted.delivered();
        assert_eq!(restarted.redeliver_due().await.unwrap(), 1);
        tokio::time::timeout(Duration::from_secs(10), delivered.wait_for(|n| *n == 1))
            .await
            .unwrap()
            .unwrap();
        let sent = recorder.0.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let body: NotificationBody = serde_json::from_slice(&sent[0].1).unwrap();
        assert_eq!(
            (
                body.kind.as_str(),
                body.payment_ref.as_str(),
                body.amount_cents
            ),
            ("payment.succeeded", payment.provider_ref.as_str(), 1_500)
        );
        flashmart_app::signature::verify(
            b"k".repeat(32).as_slice(),
            &sent[0].0,
            &sent[0].1,
            clock.now(),
        )
        .unwrap();
        // Acknowledged: nothing is left to send at the next start.
        assert_eq!(restarted.redeliver_due().await.unwrap(), 0);
    }

    /// Answers 200 once let through, counting what it was sent.
    #[derive(Debug)]
    struct Gate {
        open: tokio::sync::Semaphore,
        sent: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Transport for Gate {
        async fn post(&self, _url: &str, _sig: &str, _body: Vec<u8>) -> Result<u16, String> {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.open.acquire().await.unwrap().forget();
            Ok(200)
        }
    }

    #[tokio::test]
    async fn a_resend_never_runs_beside_the_first_sending() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_mid_hour();
        let sandbox = open(&dir.path().join("sandbox.db"), &clock).await;
        let gate = Arc::new(Gate {
            open: tokio::sync::Semaphore::new(0),
            sent: 0.into(),
        });
        sandbox.set_transport(gate.clone());
        sandbox.set_notify_url("http://merchant.test/notify".into());
        let payment = sandbox
            .create(&CreatePayment {
                merchant_ref: PaymentId::new(),
                amount: Money::new(900, Currency::USD).unwrap(),
                description: "order".into(),
                expires_at: clock.now() + time::Duration::minutes(15),
            })
            .await
            .unwrap();
        sandbox
            .complete(&payment.provider_ref, false)
            .await
            .unwrap();
        // The first sending is held at the merchant: the periodic resend leaves it alone.
        assert_eq!(sandbox.redeliver_due().await.unwrap(), 0);
        let mut delivered = sandbox.delivered();
        gate.open.add_permits(1);
        tokio::time::timeout(Duration::from_secs(10), delivered.wait_for(|n| *n == 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.sent.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(sandbox.redeliver_due().await.unwrap(), 0, "acknowledged");
    }
}
