//! The shared engine port (`flashmart_app::ports::SharedEngine`) on Redis: the scripts of this
//! crate driven over one connection (a single Redis, or a Redis Cluster through the cluster
//! client), which every request of the process shares.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::flash_sale::model::LiveSaleState;
use flashmart_app::flash_sale::model::{BuyerId, Released};
use flashmart_app::ports::{
    LogEntry, LoggedReservation, SettleTo, SharedDecision, SharedEngine, SharedReserve,
};
use flashmart_domain::SaleId;
use redis::RedisError;
use redis::aio::ConnectionLike;

use time::OffsetDateTime;

use crate::batch::Batches;
use crate::{Decision, LiveSale, Lost, RedisSales, Settle, Settled};

/// `RedisSales` over a shared connection `C` (`redis::aio::ConnectionManager`, which reconnects
/// by itself, or a cluster connection).
#[derive(Clone)]
pub struct RedisEngine<C> {
    pub(crate) sales: RedisSales,
    pub(crate) conn: C,
    /// Reservations waiting for their sale's next run of the script.
    pub(crate) batches: Arc<Batches>,
}

impl<C> std::fmt::Debug for RedisEngine<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("sales", &self.sales)
            .finish_non_exhaustive()
    }
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisEngine<C> {
    pub fn new(sales: RedisSales, conn: C) -> Self {
        Self {
            sales,
            conn,
            batches: Arc::default(),
        }
    }

    /// How many of `sale`'s batch runners are running and how many requests wait for one.
    #[cfg(feature = "testing")]
    pub fn batch_queue(&self, sale: flashmart_domain::SaleId) -> (usize, usize) {
        self.batches.state(sale)
    }

    /// The lease named `name`, on this engine's connection and under its key prefix.
    pub fn lease(&self, name: &str) -> crate::RedisLease<C> {
        crate::RedisLease::new(self.sales.prefix(), name, self.conn.clone())
    }

    /// Rate limits and login counters on this engine's connection, under its key prefix.
    pub fn limits(&self) -> crate::RedisLimits<C> {
        crate::RedisLimits::new(self.sales.prefix(), self.conn.clone())
    }

    /// The publisher of revocation news on this engine's connection.
    pub fn revocations(&self) -> crate::RedisRevocations<C> {
        crate::RedisRevocations::new(self.sales.prefix(), self.conn.clone())
    }

    /// Checks that Redis answers (`PING`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// How long one attempt to connect to a Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command waits for its answer. Far above any script's run (a batch of
/// reservations takes well under a millisecond, a sale's rebuild milliseconds); a Redis that
/// has not answered by then is taken as away.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to reconnect after the first fails, before the commands waiting for the
/// connection are answered with an error (each later command starts another round).
const RECONNECT_RETRIES: usize = 2;
/// The longest wait between two attempts, in ms: the cluster client picks one up to this, the
/// connection manager waits this long (its first wait is never shorter) plus a random share
/// of it.
const RECONNECT_MAX_DELAY_MS: u64 = 1_000;
/// The cluster client's shortest wait between two attempts, in ms.
const RECONNECT_MIN_DELAY_MS: u64 = 100;

impl RedisEngine<redis::aio::ConnectionManager> {
    /// One Redis at `url` (`redis://host:port/db`), over a connection that reconnects by itself
    /// when Redis goes away and comes back. With Redis away, a command fails within a few
    /// seconds (the connection's own defaults would retry for minutes, and every request
    /// needing Redis, a rate-limit check included, would wait that long).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_exponent_base(2)
            .set_factor(2)
            .set_max_delay(RECONNECT_MAX_DELAY_MS);
        let conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(Self::new(RedisSales::new(prefix), conn))
    }
}

impl RedisEngine<redis::cluster_async::ClusterConnection> {
    /// A Redis Cluster reached through any of `nodes`: each sale's keys are on the shard its
    /// hash tag picks, and each script runs there. Timeouts and retries as for one Redis (the
    /// cluster client's own defaults retry 16 times, for minutes).
    pub async fn connect_cluster(nodes: &[String], prefix: &str) -> Result<Self, StoreError> {
        let retries = u32::try_from(RECONNECT_RETRIES).unwrap_or(u32::MAX);
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(retries)
            .min_retry_wait(RECONNECT_MIN_DELAY_MS)
            .max_retry_wait(RECONNECT_MAX_DELAY_MS)
            .build()
            .map_err(unavailable)?;
        let conn = client.get_async_connection().await.map_err(unavailable)?;
        Ok(Self::new(RedisSales::new(prefix), conn))
    }
}

/// Redis away, busy or refusing: the request is answered 503 and may be retried.
pub(crate) fn unavailable(err: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {err}"))
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> SharedEngine for RedisEngine<C> {
    async fn load(&self, state: &LiveSaleState, now: OffsetDateTime) -> Result<bool, StoreError> {
        let sale = LiveSale {
            id: state.sale.id,
            starts_at: state.sale.rules.window().starts_at(),
            ends_at: state.sale.rules.window().ends_at(),
            per_user_limit: state.sale.rules.per_user_limit(),
            reservation_ttl: state.sale.rules.reservation_ttl(),
            items: state
                .items
                .iter()
                .map(|i| (i.no, i.stock.saturating_sub(i.held)))
                .collect(),
        };
        let buyers: Vec<(String, u32)> = state
            .buyers
            .iter()
            .filter(|(_, held)| *held > 0)
            .map(|(buyer, held)| (buyer.0.to_string(), *held))
            .collect();
        let mut conn = self.conn.clone();
        self.sales
            .load_if_missing(&mut conn, &sale, &buyers, now)
            .await
            .map_err(unavailable)
    }

    async fn mark_lost(
        &self,
        sale: SaleId,
        rebuild_at: OffsetDateTime,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let mut conn = self.conn.clone();
        match self
            .sales
            .mark_lost(&mut conn, sale, rebuild_at)
            .await
            .map_err(unavailable)?
        {
            Lost::Loaded => Ok(None),
            Lost::RebuildAt(at) => Ok(Some(at)),
        }
    }

    #[tracing::instrument(level = "debug", name = "redis.reserve", skip_all)]
    async fn reserve(&self, request: &SharedReserve<'_>) -> Result<SharedDecision, StoreError> {
        let decision = self.decide_in_batch(request).await?;
        Ok(match decision {
            Decision::Reserved {
                id,
                expires_at,
                replayed,
                entry,
            } => SharedDecision::Reserved {
                id,
                expires_at,
                replayed,
                logged: entry.map(|(ms, seq)| LogEntry(ms, seq)),
            },
            Decision::Refused {
                refusal: flashmart_app::flash_sale::idempotency::Refusal::SaleNotFound,
                ..
            } => SharedDecision::Missing,
            Decision::Refused { refusal, replayed } => {
                SharedDecision::Refused { refusal, replayed }
            }
            Decision::KeyReused => SharedDecision::KeyReused,
            Decision::TooManyKeys => SharedDecision::TooManyKeys,
            Decision::Rebuilding { at } => SharedDecision::Rebuilding { at },
        })
    }

    async fn settle(&self, released: &Released, to: SettleTo) -> Result<bool, StoreError> {
        let to = match to {
            SettleTo::Expired => Settle::Expired,
            SettleTo::Cancelled => Settle::Cancelled,
            SettleTo::Purchased => Settle::Purchased,
        };
        let buyer = released.buyer.0.to_string();
        let mut conn = self.conn.clone();
        let settled = self
            .sales
            .settle(
                &mut conn,
                released.sale_id,
                released.reservation,
                to,
                (released.item_no, &buyer, released.quantity),
            )
            .await
            .map_err(unavailable)?;
        Ok(settled == Settled::Changed)
    }

    async fn remaining(&self, sale: SaleId) -> Result<Option<Vec<(u32, u32)>>, StoreError> {
        let mut conn = self.conn.clone();
        self.sales
            .remaining(&mut conn, sale)
            .await
            .map_err(unavailable)
    }

    async fn unretired(&self) -> Result<Vec<SaleId>, StoreError> {
        let mut conn = self.conn.clone();
        self.sales.unretired(&mut conn).await.map_err(unavailable)
    }

    async fn take_logged(
        &self,
        sale: SaleId,
        writer: &str,
        max: usize,
        stale_after: std::time::Duration,
    ) -> Result<Vec<LoggedReservation>, StoreError> {
        let mut conn = self.conn.clone();
        self.sales
            .ensure_group(&mut conn, sale, WRITERS)
            .await
            .map_err(unavailable)?;
        // Those this instance decided and nobody heard of first, whatever their entries' age.
        let mut found: Vec<LoggedReservation> = self
            .batches
            .take_unheard(sale, max)
            .into_iter()
            .map(|u| LoggedReservation {
                entry: format!("{UNHEARD}{}-{}", u.entry.0, u.entry.1),
                id: u.id,
                item_no: u.item,
                buyer: BuyerId(u.buyer),
                quantity: u.quantity,
                expires_at: u.expires_at,
                buyer_ref: u.buyer_ref.map(Into::into),
            })
            .collect();
        let room = max - found.len();
        let mut taken = if room > 0 {
            self.sales
                .claim_stale(&mut conn, sale, WRITERS, writer, stale_after, room)
                .await
                .map_err(unavailable)?
        } else {
            Vec::new()
        };
        if taken.len() < room {
            taken.extend(
                self.sales
                    .read_new(
                        &mut conn,
                        sale,
                        WRITERS,
                        writer,
                        room - taken.len(),
                        (!stale_after.is_zero()).then_some(stale_after),
                    )
                    .await
                    .map_err(unavailable)?,
            );
        }
        for logged in taken {
            let buyer = logged.buyer.parse().map_err(|_| {
                StoreError::Other(format!("a logged buyer is not an id: {}", logged.buyer).into())
            })?;
            found.push(LoggedReservation {
                entry: logged.entry,
                id: logged.id,
                item_no: logged.item,
                buyer: BuyerId(buyer),
                quantity: logged.quantity,
                expires_at: logged.expires_at,
                buyer_ref: logged.buyer_ref,
            });
        }
        Ok(found)
    }

    async fn retire(&self, sale: SaleId, at: time::OffsetDateTime) -> Result<(), StoreError> {
        self.batches.forget(sale);
        let mut conn = self.conn.clone();
        self.sales
            .retire(&mut conn, sale, at)
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, sale: SaleId) -> Result<(), StoreError> {
        self.batches.forget(sale);
        let mut conn = self.conn.clone();
        self.sales
            .remove(&mut conn, sale)
            .await
            .map_err(unavailable)
    }

    async fn forget_logged(&self, sale: SaleId, entries: &[LogEntry]) -> Result<u64, StoreError> {
        let entries: Vec<(u64, u64)> = entries.iter().map(|e| (e.0, e.1)).collect();
        let mut conn = self.conn.clone();
        self.sales
            .forget(&mut conn, sale, &entries)
            .await
            .map_err(unavailable)
    }

    async fn ack_logged(&self, sale: SaleId, entries: &[String]) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        // An unheard reservation's entry was never given to a writer: it is dropped from the
        // log, as the entries this instance's requests stored are.
        let (unheard, given): (Vec<&String>, Vec<&String>) =
            entries.iter().partition(|e| e.starts_with(UNHEARD));
        let unheard: Vec<(u64, u64)> = unheard
            .iter()
            .filter_map(|e| {
                let (ms, seq) = e.strip_prefix(UNHEARD)?.split_once('-')?;
                Some((ms.parse().ok()?, seq.parse().ok()?))
            })
            .collect();
        self.sales
            .forget(&mut conn, sale, &unheard)
            .await
            .map_err(unavailable)?;
        self.sales
            .ack(&mut conn, sale, WRITERS, &given)
            .await
            .map_err(unavailable)?;
        self.sales
            .trim_acknowledged(&mut conn, sale, WRITERS)
            .await
            .map_err(unavailable)?;
        self.sales
            .lag(&mut conn, sale, WRITERS)
            .await
            .map_err(unavailable)
    }
}

/// The consumer group of every sale's log whose consumers store reservations in the records.
const WRITERS: &str = "writers";

/// How `take_logged` marks the entry of a reservation it found among those nobody heard of
/// (rather than given by the consumer group), for `ack_logged` to drop from the log.
const UNHEARD: &str = "unheard:";

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> flashmart_app::ports::Probe
    for RedisEngine<C>
{
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.ping().await
    }
}
