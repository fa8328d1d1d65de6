//! Reading a sale's stream of reservations, as the workers that write them to PostgreSQL will:
//! a consumer group per sale stream, each entry delivered to one consumer and kept pending until
//! it is acknowledged, entries a dead consumer left taken over by another (`XAUTOCLAIM`), and
//! the stream trimmed behind what the group has acknowledged.

use std::time::Duration;

use flashmart_domain::{ReservationId, SaleId};
use redis::aio::ConnectionLike;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoGroup, StreamInfoGroupsReply, StreamRangeReply,
    StreamReadReply,
};
use redis::{RedisError, Value};
use time::OffsetDateTime;

use crate::{RedisSales, from_micros, protocol};

/// A reservation as the stream carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The stream entry's id, to acknowledge it by.
    pub entry: String,
    pub id: ReservationId,
    pub item: u32,
    pub buyer: String,
    pub quantity: u32,
    pub at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The name the caller gave the buyer, for the contest API's buyers.
    pub buyer_ref: Option<String>,
}

fn text(entry: &StreamId, field: &str) -> Result<String, RedisError> {
    match entry.map.get(field) {
        Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Some(Value::SimpleString(s)) => Ok(s.clone()),
        _ => Err(protocol(&format!(
            "stream entry {} without {field}",
            entry.id
        ))),
    }
}

fn logged(entry: &StreamId) -> Result<Logged, RedisError> {
    let number = |field: &str| -> Result<i64, RedisError> {
        let value = text(entry, field)?;
        value.parse().map_err(|_| protocol(&value))
    };
    let time = |field: &str| -> Result<OffsetDateTime, RedisError> {
        let us = number(field)?;
        from_micros(us).ok_or_else(|| protocol(&us.to_string()))
    };
    let id = text(entry, "id")?;
    Ok(Logged {
        entry: entry.id.clone(),
        id: ReservationId::from_uuid(id.parse().map_err(|_| protocol(&id))?),
        item: u32::try_from(number("item")?).map_err(|_| protocol("item"))?,
        buyer: text(entry, "buyer")?,
        quantity: u32::try_from(number("quantity")?).map_err(|_| protocol("quantity"))?,
        at: time("at")?,
        expires_at: time("expires_at")?,
        buyer_ref: entry
            .map
            .contains_key("ref")
            .then(|| text(entry, "ref"))
            .transpose()?,
    })
}

impl RedisSales {
    /// Makes the consumer group `group` of the sale's stream (reading it from its start) unless
    /// it exists.
    pub async fn ensure_group<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
    ) -> Result<(), RedisError> {
        let made: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys(sale).log)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match made {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Up to `count` entries no consumer of the group has been given yet, now `consumer`'s
    /// (pending until acknowledged). With `min_age`, none unless the first of them was logged
    /// at least that long ago by Redis's clock (an entry's id is its time in milliseconds): an
    /// instance drops from the log what it stored, a moment after storing it, so a young entry
    /// is almost always one on its way to the records, not one to write again.
    pub async fn read_new<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
        consumer: &str,
        count: usize,
        min_age: Option<Duration>,
    ) -> Result<Vec<Logged>, RedisError> {
        if let Some(min_age) = min_age
            && !self.oldest_new_is_older(conn, sale, group, min_age).await?
        {
            return Ok(Vec::new());
        }
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(self.keys(sale).log)
            .arg(">")
            .query_async(conn)
            .await?;
        reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| logged(&entry))
            .collect()
    }

    /// Whether the oldest entry the group has not been given was logged at least `min_age`
    /// ago by Redis's clock (and there is one).
    async fn oldest_new_is_older<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
        min_age: Duration,
    ) -> Result<bool, RedisError> {
        let log = self.keys(sale).log;
        let ((seconds, micros), info): ((u64, u64), StreamInfoGroupsReply) = redis::pipe()
            .cmd("TIME")
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&log)
            .query_async(conn)
            .await?;
        let delivered = find_group(info, group)?;
        let next: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&log)
            .arg(format!("({}", delivered.last_delivered_id))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        let Some(first) = next.ids.first() else {
            return Ok(false);
        };
        let logged_ms: u128 = first
            .id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .ok_or_else(|| protocol(&first.id))?;
        let now_ms = u128::from(seconds) * 1_000 + u128::from(micros) / 1_000;
        Ok(logged_ms + min_age.as_millis() <= now_ms)
    }

    /// Up to `count` entries given to some consumer at least `min_idle` ago and never
    /// acknowledged (a consumer that died with them), now `consumer`'s.
    pub async fn claim_stale<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Logged>, RedisError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.keys(sale).log)
            .arg(group)
            .arg(consumer)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg("0")
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await?;
        reply.claimed.iter().map(logged).collect()
    }

    /// Acknowledges entries (written where they belong); returns how many were pending.
    pub async fn ack<C: ConnectionLike, E: AsRef<str>>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
        entries: &[E],
    ) -> Result<u64, RedisError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut xack = redis::cmd("XACK");
        xack.arg(self.keys(sale).log).arg(group);
        for entry in entries {
            xack.arg(entry.as_ref());
        }
        xack.query_async(conn).await
    }

    /// Drops entries whose reservations are stored (by the instance that decided them) from
    /// the log, so that no writer needs to read them; returns how many went. An entry a writer
    /// was given meanwhile leaves its pending list the next time it is claimed.
    pub async fn forget<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        entries: &[(u64, u64)],
    ) -> Result<u64, RedisError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut xdel = redis::cmd("XDEL");
        xdel.arg(self.keys(sale).log);
        for (ms, seq) in entries {
            xdel.arg(format!("{ms}-{seq}"));
        }
        xdel.query_async(conn).await
    }

    /// Entries the group has not acknowledged yet: delivered and pending, or not delivered.
    /// (After entries were dropped from the log Redis cannot count those not delivered: then
    /// every entry the log still holds is counted, at most one more than the truth.)
    pub async fn lag<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
    ) -> Result<u64, RedisError> {
        let found = group_info(conn, &self.keys(sale).log, group).await?;
        let waiting = match found.lag {
            Some(undelivered) => found.pending + undelivered,
            None => {
                redis::cmd("XLEN")
                    .arg(self.keys(sale).log)
                    .query_async::<usize>(conn)
                    .await?
            }
        };
        Ok(u64::try_from(waiting).unwrap_or(u64::MAX))
    }

    /// Drops the entries before the oldest one the group still needs (the oldest pending, or
    /// the last delivered when none is pending: that one is kept). Returns how many went.
    pub async fn trim_acknowledged<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        group: &str,
    ) -> Result<u64, RedisError> {
        let log = self.keys(sale).log;
        let pending: Vec<Value> = redis::cmd("XPENDING")
            .arg(&log)
            .arg(group)
            .query_async(conn)
            .await?;
        let oldest_pending = match pending.get(1) {
            Some(Value::BulkString(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        };
        let keep_from = match oldest_pending {
            Some(id) => id,
            None => group_info(conn, &log, group).await?.last_delivered_id,
        };
        redis::cmd("XTRIM")
            .arg(&log)
            .arg("MINID")
            .arg(keep_from)
            .query_async(conn)
            .await
    }
}

/// The consumer group `group` of the stream `log`, as `XINFO GROUPS` tells it.
async fn group_info<C: ConnectionLike>(
    conn: &mut C,
    log: &str,
    group: &str,
) -> Result<StreamInfoGroup, RedisError> {
    let info: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(log)
        .query_async(conn)
        .await?;
    find_group(info, group)
}

/// `group` among the groups `XINFO GROUPS` answered.
fn find_group(info: StreamInfoGroupsReply, group: &str) -> Result<StreamInfoGroup, RedisError> {
    info.groups
        .into_iter()
        .find(|g| g.name == group)
        .ok_or_else(|| protocol(&format!("no group {group}")))
}
