//! The background work of each role (`crate::roles`): expiry, schedules and the payment closer
//! (`scheduler`, only while this instance holds the scheduler lease), storing from the sales'
//! logs and refunds (`worker`), live events (`api`), housekeeping (every role). Each piece is
//! supervised: a run that panics is logged and the work goes on after a backoff, and every piece
//! has a heartbeat that `/readyz` reads.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use flashmart_app::health::{Heartbeat, StopGuard, Workers};
use futures_util::FutureExt as _;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::roles::Roles;
use crate::wiring::Services;

/// The first wait after a panic; it doubles with every panic in a row, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How often the order indexer looks for flash-sale orders to list under their users: it works
/// when the writer has been idle for a moment (or the backlog is long), so a peak is indexed
/// within seconds of its end (about 2 s for 448,049 orders, docs/OPERATIONS.md).
const ORDER_INDEXER_PERIOD: Duration = Duration::from_millis(250);

/// How often the outbox applier moves accepted reservations from the outbox into the database's
/// tables, each time in one transaction (a read that needs them applies them itself if it comes
/// first). Longer makes each transaction bigger and cheaper per reservation, but the pause it
/// makes on two cores longer; 10, 50 and 200 ms measured alike (docs/BENCHMARKS.md).
const OUTBOX_PERIOD: Duration = Duration::from_millis(50);

/// How often an `api` instance of a scaled shop reads the sessions revoked recently from the
/// records, for what news of revocations missed.
const REVOCATION_SYNC_PERIOD: Duration = Duration::from_secs(10);

/// How often each instance reads the sales' logs for reservations to store (with the shared
/// engine). Most entries were stored by the request that made them, and are only acknowledged.
const LOG_WRITER_PERIOD: Duration = Duration::from_millis(200);

/// The background work of `roles` (embedded mode runs them all, with the outbox applier and the
/// order indexer besides).
pub fn spawn(services: &Services, config: &Config, roles: Roles) -> Vec<JoinHandle<()>> {
    let state = &services.state;
    let mut workers = Vec::new();
    if roles.scheduler {
        workers.extend(scheduler(services, config));
    }
    if roles.worker {
        workers.extend(worker(services, config));
    }
    if roles.api && !roles.worker && config.redis.is_set() {
        // No log writer here: what this instance's requests stored is still dropped from the
        // logs, so that the workers' writers do not read it.
        let sales = Arc::clone(&state.flash_sales);
        workers.push(every(
            &state.workers,
            "log_forgetter",
            LOG_WRITER_PERIOD,
            move || {
                let sales = Arc::clone(&sales);
                async move { sales.forget_stored().await }
            },
        ));
    }
    if roles.api && config.redis.is_set() {
        workers.extend(revocation_news(services, config));
    }
    if roles.api {
        let sales = Arc::clone(&state.flash_sales);
        workers.push(every(
            &state.workers,
            "events_publisher",
            Duration::from_millis(config.flash_sale.events_interval_ms),
            move || {
                let sales = Arc::clone(&sales);
                async move { sales.publish_all().await }
            },
        ));
    }
    workers.extend(upkeep(services));
    workers
}

/// The scheduler's work, each run only while this instance leads (`Leadership`: always in
/// embedded mode, while it holds the scheduler lease in scaled mode), and the campaign for the
/// lease.
fn scheduler(services: &Services, config: &Config) -> Vec<JoinHandle<()>> {
    let state = &services.state;
    let ms = Duration::from_millis;
    let leadership = &services.leadership;
    let lead = Arc::clone(leadership);
    let campaign = every(
        &state.workers,
        "scheduler_lease",
        leadership.renew_every(),
        move || {
            let lead = Arc::clone(&lead);
            async move {
                if let Err(err) = lead.campaign().await {
                    tracing::warn!(%err, "cannot take or renew the scheduler lease; will retry");
                }
            }
        },
    );
    let sales = Arc::clone(&state.flash_sales);
    let sweeper = led(
        services,
        "reservation_sweeper",
        ms(config.flash_sale.sweep_interval_ms),
        move || {
            let sales = Arc::clone(&sales);
            async move {
                if let Err(err) = sales.sweep_expired().await {
                    tracing::error!(%err, "expiring reservations failed; will retry");
                }
                if let Err(err) = sales.return_unsold_stock().await {
                    tracing::error!(%err, "returning unsold units to their products failed; will retry");
                }
            }
        },
    );
    let sales = Arc::clone(&state.flash_sales);
    let schedules = led(
        services,
        "scheduler",
        ms(config.flash_sale.schedule_interval_ms),
        move || {
            let sales = Arc::clone(&sales);
            async move {
                if let Err(err) = sales.run_schedules().await {
                    tracing::error!(%err, "running schedules failed; will retry");
                }
            }
        },
    );
    let shop = Arc::clone(&state.shop);
    let orders = led(
        services,
        "order_sweeper",
        ms(config.orders.sweep_interval_ms),
        move || {
            let shop = Arc::clone(&shop);
            async move {
                if let Err(err) = shop.sweep_expired().await {
                    tracing::error!(%err, "expiring unpaid orders failed; will retry");
                }
            }
        },
    );
    let payments = Arc::clone(&state.payments);
    let stale_payments = led(
        services,
        "payment_closer",
        Duration::from_secs(5),
        move || {
            let payments = Arc::clone(&payments);
            async move {
                if let Err(err) = payments.close_stale().await {
                    tracing::warn!(%err, "closing payments of ended orders failed; will retry");
                }
            }
        },
    );
    let (sales, webhooks) = (Arc::clone(&state.flash_sales), Arc::clone(&state.webhooks));
    let sale_events = led(services, "sale_events", Duration::from_secs(1), move || {
        let (sales, webhooks) = (Arc::clone(&sales), Arc::clone(&webhooks));
        async move {
            if let Err(err) = webhooks.report_sales(&sales).await {
                tracing::warn!(%err, "reporting sales' starts and ends to webhooks failed; will retry");
            }
        }
    });
    vec![
        campaign,
        sweeper,
        schedules,
        orders,
        stale_payments,
        sale_events,
    ]
}

/// Scaled mode: what another instance revoked is refused here at once (its news, heard on a
/// Redis channel), and every 10 s the records are read again for what the news missed (a
/// publication that failed; what was published while this instance was not subscribed is read
/// at each subscription too).
fn revocation_news(services: &Services, config: &Config) -> Vec<JoinHandle<()>> {
    let state = &services.state;
    let url = match &config.redis.url {
        Some(url) => url.expose().to_owned(),
        None => config
            .redis
            .cluster_nodes
            .first()
            .cloned()
            .unwrap_or_default(),
    };
    let auth = Arc::clone(&state.auth);
    let heard = Arc::new(move |session, forget_after| {
        auth.revoked_elsewhere(session, forget_after);
    });
    let auth = Arc::clone(&state.auth);
    let subscribed = Arc::new(move || {
        let auth = Arc::clone(&auth);
        tokio::spawn(async move {
            if let Err(err) = auth.sync_revocations().await {
                tracing::warn!(%err, "cannot read revoked sessions from the records");
            }
        });
    });
    let listener =
        flashmart_redis::listen_revocations(url, &config.redis.key_prefix, heard, subscribed);
    let auth = Arc::clone(&state.auth);
    let sync = every(
        &state.workers,
        "revocation_sync",
        REVOCATION_SYNC_PERIOD,
        move || {
            let auth = Arc::clone(&auth);
            async move {
                if let Err(err) = auth.sync_revocations().await {
                    tracing::warn!(%err, "cannot read revoked sessions from the records; will retry");
                }
            }
        },
    );
    vec![listener, sync]
}

/// Work any number of instances share: refunds, the sandbox's notifications, and with the
/// shared engine the reservations its logs hold that no instance stored.
fn worker(services: &Services, config: &Config) -> Vec<JoinHandle<()>> {
    let state = &services.state;
    let payments = Arc::clone(&state.payments);
    let refunds = every(
        &state.workers,
        "refund_worker",
        Duration::from_secs(5),
        move || {
            let payments = Arc::clone(&payments);
            async move {
                if let Err(err) = payments.drain_refunds(100).await {
                    tracing::warn!(%err, "asking the provider for pending refunds failed; will retry");
                }
            }
        },
    );
    // With the shared engine: what Redis decided and no instance stored is stored from the
    // sales' logs, by every worker under a name of its own.
    let log_writer = config.redis.is_set().then(|| {
        let sales = Arc::clone(&state.flash_sales);
        every(&state.workers, "log_writer", LOG_WRITER_PERIOD, move || {
            let sales = Arc::clone(&sales);
            async move {
                match sales.write_logged().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(written = n, "reservations written from the sales' logs"),
                    Err(err) => tracing::warn!(%err, "writing reservations from the sales' logs failed; will retry"),
                }
            }
        })
    });
    let resend = services.sandbox.clone().map(|sandbox| {
        // Retries fall due on the sandbox's schedule (1 s at first), so it looks every second.
        every(
            &state.workers,
            "sandbox_resender",
            Duration::from_secs(1),
            move || {
                let sandbox = Arc::clone(&sandbox);
                async move {
                    if let Err(err) = sandbox.redeliver_due().await {
                        tracing::warn!(%err, "sandbox cannot read its unsent notifications; will retry");
                    }
                }
            },
        )
    });
    let webhooks = Arc::clone(&state.webhooks);
    // The first retry is due 5 s after a failure, so it looks every second.
    let deliveries = every(
        &state.workers,
        "webhook_deliverer",
        Duration::from_secs(1),
        move || {
            let webhooks = Arc::clone(&webhooks);
            async move {
                if let Err(err) = webhooks.deliver_due(50).await {
                    tracing::warn!(%err, "reading the webhook deliveries due failed; will retry");
                }
            }
        },
    );
    let mut workers = vec![refunds, deliveries];
    workers.extend(log_writer);
    workers.extend(resend);
    workers
}

/// What every process runs: metrics and memory upkeep, and the embedded store's own (the
/// outbox applier and the order indexer; PostgreSQL needs neither).
fn upkeep(services: &Services) -> Vec<JoinHandle<()>> {
    let state = &services.state;
    let embedded = services.records.embedded().map(|store| {
        let applier_store = store.clone();
        let applier = every(&state.workers, "outbox_applier", OUTBOX_PERIOD, move || {
            let store = applier_store.clone();
            async move {
                if let Err(err) = store.run_outbox().await {
                    tracing::warn!(%err, "applying the reservation outbox failed; will retry");
                }
            }
        });
        let store = store.clone();
        let indexer = every(
            &state.workers,
            "order_indexer",
            ORDER_INDEXER_PERIOD,
            move || {
                let store = store.clone();
                async move {
                    if let Err(err) = store.run_order_indexer().await {
                        tracing::warn!(%err, "indexing flash-sale orders by user failed; will retry");
                    }
                }
            },
        );
        [applier, indexer]
    });
    let metrics = state.metrics.clone();
    let metrics_upkeep = every(
        &state.workers,
        "metrics_upkeep",
        Duration::from_secs(5),
        move || {
            metrics.run_upkeep();
            async {}
        },
    );
    let (auth, sales) = (Arc::clone(&state.auth), Arc::clone(&state.flash_sales));
    let limits = Arc::clone(&state.limits);
    let housekeeping = every(
        &state.workers,
        "housekeeping",
        Duration::from_secs(60),
        move || {
            auth.housekeeping();
            sales.housekeeping();
            limits.retain_recent();
            async {}
        },
    );
    let mut workers = vec![metrics_upkeep, housekeeping];
    workers.extend(embedded.into_iter().flatten());
    workers
}

/// `every`, with `job` run only while this instance leads (`Services::leadership`); a run while
/// it does not is a turn of the loop that does nothing.
fn led<F, Fut>(
    services: &Services,
    name: &'static str,
    period: Duration,
    mut job: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let lead = Arc::clone(&services.leadership);
    every(&services.state.workers, name, period, move || {
        let run = lead.is_held().then(&mut job);
        async move {
            if let Some(run) = run {
                run.await;
            }
        }
    })
}

/// Runs `job` every `period`, one run at a time (a slow run delays the next, never overlaps it),
/// under a heartbeat registered as `name`. A run that panics is logged and counted, and the next
/// waits a backoff (1 s doubling to a minute) on top of the period.
pub fn every<F, Fut>(
    workers: &Workers,
    name: &'static str,
    period: Duration,
    mut job: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    // A run may take long (a large sweep), but not for ever; the loop must turn within a few
    // periods.
    let stuck_after = (period * 20).max(Duration::from_secs(120));
    let stalled_after = (period * 3).max(Duration::from_secs(60)) + stuck_after;
    let beat = Heartbeat::new(name, stuck_after, Some(stalled_after));
    workers.register(Arc::clone(&beat));
    tokio::spawn(async move {
        let _stopped = StopGuard(Arc::clone(&beat));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = FIRST_BACKOFF;
        loop {
            tick.tick().await;
            beat.started();
            match AssertUnwindSafe(job()).catch_unwind().await {
                Ok(()) => {
                    beat.finished(true);
                    backoff = FIRST_BACKOFF;
                }
                Err(panic) => {
                    beat.finished(false);
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(
                        worker = name,
                        panic = %message,
                        restart_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "a background worker panicked; restarting it after a backoff"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use flashmart_app::health::WorkState;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_restarted_and_reported() {
        let workers = Workers::default();
        let runs = Arc::new(AtomicU32::new(0));
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let counted = Arc::clone(&runs);
        let handle = every(&workers, "flaky", Duration::from_secs(1), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let done_tx = done_tx.clone();
            async move {
                assert!(n >= 2, "run {n} fails");
                let _ = done_tx.send(n);
            }
        });
        // The paused clock moves on by itself whenever every task waits on it.
        assert_eq!(done.recv().await, Some(2), "the third run succeeds");
        let report = &workers.reports()[0];
        assert_eq!(report.name, "flaky");
        assert_eq!(report.state, WorkState::Ok);
        assert_eq!(report.failures, 0, "reset by the success");
        handle.abort();
        let _ = handle.await;
        assert_eq!(workers.reports()[0].state, WorkState::Stopped);
    }
}
