//! What every instance of a scaled shop shares besides the sales: rate-limit buckets and
//! failed-login counters (`SharedLimits`), and news of revoked sessions (`RevocationNews`, a
//! pub/sub channel every instance listens to).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::ports::{RevocationNews, SharedLimits};
use flashmart_domain::SessionId;
use futures_util::StreamExt as _;
use redis::Script;
use redis::aio::ConnectionLike;

use crate::engine::unavailable;
use time::OffsetDateTime;

/// A token bucket kept as its theoretical arrival time (GCRA), in Redis's own clock so that
/// every instance agrees. ARGV[1]: ms between two requests at the steady rate; ARGV[2]: ms a
/// full bucket spans (a minute). Returns 0 when let through, else ms until one more would be.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - span - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], next_tat, 'PX', next_tat - now)
return 0
";

/// Counts a failure: opens a window of ARGV[1] ms at the first.
const RECORD_FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// The failures counted and the ms left in their window.
const FAILURES: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or 0)
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 0 end
return {n, left}
";

const MINUTE_MS: u64 = 60_000;

#[derive(Clone)]
pub struct RedisLimits<C> {
    prefix: String,
    conn: C,
    take: Script,
    record_failure: Script,
    failures: Script,
}

impl<C> std::fmt::Debug for RedisLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl<C> RedisLimits<C> {
    pub fn new(prefix: &str, conn: C) -> Self {
        Self {
            prefix: prefix.to_owned(),
            conn,
            take: Script::new(TAKE),
            record_failure: Script::new(RECORD_FAILURE),
            failures: Script::new(FAILURES),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> SharedLimits for RedisLimits<C> {
    async fn take(&self, key: &str, per_minute: u32) -> Result<Option<Duration>, StoreError> {
        let interval = MINUTE_MS / u64::from(per_minute.max(1));
        let mut conn = self.conn.clone();
        let wait: u64 = self
            .take
            .key(self.key(key))
            .arg(interval)
            .arg(MINUTE_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    async fn failures(&self, key: &str) -> Result<(u32, Duration), StoreError> {
        let mut conn = self.conn.clone();
        let (n, left): (u32, u64) = self
            .failures
            .key(self.key(key))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((n, Duration::from_millis(left)))
    }

    async fn record_failure(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: u32 = self
            .record_failure
            .key(self.key(key))
            .arg(MINUTE_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Publishes revocations on `<prefix>revocations`; `listen_revocations` hears them.
#[derive(Clone)]
pub struct RedisRevocations<C> {
    channel: String,
    conn: C,
}

impl<C> std::fmt::Debug for RedisRevocations<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl<C> RedisRevocations<C> {
    pub fn new(prefix: &str, conn: C) -> Self {
        Self {
            channel: revocations_channel(prefix),
            conn,
        }
    }
}

fn revocations_channel(prefix: &str) -> String {
    format!("{prefix}revocations")
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> RevocationNews for RedisRevocations<C> {
    async fn publish(
        &self,
        session: SessionId,
        forget_after: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let message = format!("{session} {}", forget_after.unix_timestamp());
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Listens on `<prefix>revocations` at `url` (one Redis, or any node of a Redis Cluster: a
/// message published on one node reaches every node's subscribers) for as long as the task
/// runs, handing every revocation heard to `heard`. After each (re)subscription it calls
/// `subscribed`, so that whatever was published while nobody listened is read from elsewhere
/// (the records). A lost connection is retried every second.
pub fn listen_revocations(
    url: String,
    prefix: &str,
    heard: Arc<dyn Fn(SessionId, OffsetDateTime) + Send + Sync>,
    subscribed: Arc<dyn Fn() + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    let channel = revocations_channel(prefix);
    tokio::spawn(async move {
        loop {
            match subscribe(&url, &channel).await {
                Ok(mut pubsub) => {
                    tracing::info!(%channel, "listening for news of revoked sessions");
                    subscribed();
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        match parse(&payload) {
                            Some((session, forget_after)) => heard(session, forget_after),
                            None => tracing::warn!(%payload, "unreadable revocation news"),
                        }
                    }
                    tracing::warn!("the revocation news channel closed; subscribing again");
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for revocation news; retrying in 1 s");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn subscribe(url: &str, channel: &str) -> Result<redis::aio::PubSub, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

fn parse(payload: &str) -> Option<(SessionId, OffsetDateTime)> {
    let (session, at) = payload.split_once(' ')?;
    let session = session.parse().ok()?;
    let at = OffsetDateTime::from_unix_timestamp(at.parse().ok()?).ok()?;
    Some((session, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reads_back_what_was_published() {
        let session = SessionId::new();
        let at = OffsetDateTime::from_unix_timestamp(1_764_000_000).unwrap();
        let message = format!("{session} {}", at.unix_timestamp());
        assert_eq!(parse(&message), Some((session, at)));
        assert_eq!(parse("nonsense"), None);
    }
}
