//! The scaled flash-sale engine's core: a sale's live state in Redis (its window, each item's
//! remaining stock, what each buyer holds, the answers given for `Idempotency-Key`s, and a
//! stream of the reservations made, each reservation's state), one Lua script that decides and
//! records reservations atomically, a batch of one sale's at a time (`reserve.lua`, fed by the
//! per-sale queues of `batch.rs`) and one that settles a reservation once, returning
//! its units unless it was paid for (`settle.lua`). Every key of a sale carries the hash tag
//! `{sale:ID}`, so a Redis Cluster keeps a sale on one shard and each script runs there whole.
//!
//! `RedisEngine` serves the use cases' shared engine port with them (`redis.url` or
//! `redis.cluster_nodes`).

mod batch;
mod engine;
mod lease;
mod log;
mod shared_state;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt::Write as _;

use flashmart_app::flash_sale::idempotency::Refusal;
use flashmart_domain::{ReservationId, SaleId};
use redis::aio::ConnectionLike;
use redis::{RedisError, Script};
use time::OffsetDateTime;

pub use engine::RedisEngine;
pub use lease::RedisLease;
pub use log::Logged;
pub use shared_state::{RedisLimits, RedisRevocations, listen_revocations};

/// The keys of one sale, under `prefix` (so that tests, or two shops on one Redis, do not meet).
#[derive(Debug, Clone)]
pub struct SaleKeys {
    pub meta: String,
    pub stock: String,
    pub held: String,
    pub keys: String,
    pub log: String,
    pub reservations: String,
    pub key_counts: String,
}

/// A field of a sale's `held` and `stock` hashes that no buyer or item can be (a buyer never
/// holds the unit separator, an item is a number), with a value longer than Redis keeps in a
/// small hash's compact encoding (`hash-max-listpack-value`, 64 bytes unless configured
/// higher), written when the sale is loaded: it makes Redis keep each hash as a hash table from
/// its first field. In the compact encoding (up to `hash-max-listpack-entries` fields, 128 or
/// 512) every field read or written is a scan of the whole hash: with 400 buyers, about 2.7 µs
/// per buyer a batch of `reserve.lua` names, in reads and again in writes
/// (docs/BENCHMARKS.md). `load.lua` writes the same field.
const TABLE_FIELD: &str = "\u{1f}table";
const TABLE_VALUE_BYTES: usize = 1024;

/// The names after a sale's tag of the keys `reserve.lua` takes, in its order.
const RESERVE_KEYS: [&str; 6] = ["meta", "stock", "held", "keys", "log", "key_counts"];

impl SaleKeys {
    pub fn new(prefix: &str, sale: SaleId) -> Self {
        let tag = format!("{prefix}{{sale:{}}}", sale.as_uuid());
        let [meta, stock, held, keys, log, reservations, key_counts] = [
            "meta",
            "stock",
            "held",
            "keys",
            "log",
            "reservations",
            "key_counts",
        ]
        .map(|name| format!("{tag}:{name}"));
        Self {
            meta,
            stock,
            held,
            keys,
            log,
            reservations,
            key_counts,
        }
    }

    /// Every key of the sale.
    fn all(&self) -> [&str; 7] {
        [
            &self.meta,
            &self.stock,
            &self.held,
            &self.keys,
            &self.log,
            &self.reservations,
            &self.key_counts,
        ]
    }
}

/// A sale as Redis needs it to decide reservations.
#[derive(Debug, Clone)]
pub struct LiveSale {
    pub id: SaleId,
    pub starts_at: OffsetDateTime,
    pub ends_at: OffsetDateTime,
    pub per_user_limit: u32,
    /// How long a reservation holds its stock.
    pub reservation_ttl: time::Duration,
    /// Each item's number and remaining stock.
    pub items: Vec<(u32, u32)>,
}

/// One reservation request.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub sale: SaleId,
    pub item: u32,
    /// The buyer as the ledger names them (a user id, or the contest's caller-named user).
    pub buyer: &'a str,
    pub quantity: u32,
    pub idempotency_key: Option<&'a str>,
    pub now: OffsetDateTime,
    /// The name the caller gave the buyer (the contest API's users), logged with the
    /// reservation: it is stored without an order.
    pub buyer_ref: Option<&'a str>,
    /// `Idempotency-Key`s one buyer may have remembered in the sale (0: no cap).
    pub max_keys: u32,
}

/// What the script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reserved {
        id: ReservationId,
        expires_at: OffsetDateTime,
        /// The answer given before for the same key and request.
        replayed: bool,
        /// The reservation's entry in the sale's log (`ms`, `seq`); none for a replay.
        entry: Option<(u64, u64)>,
    },
    Refused {
        refusal: Refusal,
        replayed: bool,
    },
    /// The key was used before with another request.
    KeyReused,
    /// A new key, and the buyer has as many remembered in the sale as they may.
    TooManyKeys,
    /// The sale was lost and is marked to be rebuilt from the records at `at` (`lost.lua`);
    /// nothing is decided before then.
    Rebuilding {
        at: OffsetDateTime,
    },
}

/// What marking a missing sale lost found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The sale is there (loaded meanwhile): nothing to rebuild.
    Loaded,
    /// It may be rebuilt from the records from this time on.
    RebuildAt(OffsetDateTime),
}

fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
}

fn protocol(what: &str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::TypeError,
        "unexpected answer from the reservation script",
        what.to_owned(),
    ))
}

/// Where a reservation goes when it stops holding its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Its time ran out: the units go back on sale.
    Expired,
    /// Its order was cancelled: the units go back on sale.
    Cancelled,
    /// It was paid for: the units stay sold.
    Purchased,
}

impl Settle {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Purchased => "purchased",
        }
    }
}

/// What settling a reservation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It was reserved and now is settled as asked (units returned unless purchased).
    Changed,
    /// It had been settled before, to this state: nothing changed.
    Unchanged(String),
}

/// The sale scripts and the key prefix they work under.
#[derive(Debug, Clone)]
pub struct RedisSales {
    prefix: String,
    reserve: Script,
    settle: Script,
    load: Script,
    lost: Script,
}

impl RedisSales {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            reserve: Script::new(include_str!("reserve.lua")),
            settle: Script::new(include_str!("settle.lua")),
            load: Script::new(include_str!("load.lua")),
            lost: Script::new(include_str!("lost.lua")),
        }
    }

    /// Settles a reservation once: the first of expiry, cancellation and payment wins. `held`
    /// is the reservation as the records hold it (item, buyer, quantity): its units come back
    /// from it, also for a reservation made before the sale was rebuilt from the records.
    pub async fn settle<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        reservation: ReservationId,
        to: Settle,
        held: (u32, &str, u32),
    ) -> Result<Settled, RedisError> {
        let keys = self.keys(sale);
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(&keys.stock)
            .key(&keys.held)
            .key(&keys.reservations)
            .arg(reservation.as_uuid().to_string())
            .arg(to.as_str())
            .arg(held.0)
            .arg(held.1)
            .arg(held.2);
        let reply: Vec<String> = invocation.invoke_async(conn).await?;
        match reply.as_slice() {
            [kind] if kind == "changed" => Ok(Settled::Changed),
            [kind, state] if kind == "unchanged" => Ok(Settled::Unchanged(state.clone())),
            _ => Err(protocol(&format!("{reply:?}"))),
        }
    }

    /// What every key of this engine starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn keys(&self, sale: SaleId) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale)
    }

    /// Writes a sale's window, limit and stock in one transaction, replacing the window and
    /// stock Redis held for it (what buyers hold and the answers given for keys are left as
    /// they are: rebuilding those after Redis lost them is the job of the reconciliation to
    /// come).
    pub async fn load<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: &LiveSale,
    ) -> Result<(), RedisError> {
        self.remember(conn, sale.id).await?;
        let keys = self.keys(sale.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&keys.stock)
            .hset_multiple(
                &keys.meta,
                &[
                    ("starts_at", micros(sale.starts_at)),
                    ("ends_at", micros(sale.ends_at)),
                    ("per_user_limit", i64::from(sale.per_user_limit)),
                    (
                        "ttl",
                        i64::try_from(sale.reservation_ttl.whole_microseconds())
                            .unwrap_or(i64::MAX),
                    ),
                ],
            )
            .ignore();
        if !sale.items.is_empty() {
            pipe.hset_multiple(&keys.stock, &sale.items).ignore();
        }
        let table = "-".repeat(TABLE_VALUE_BYTES);
        pipe.hset(&keys.stock, TABLE_FIELD, &table)
            .ignore()
            .hset(&keys.held, TABLE_FIELD, &table)
            .ignore();
        pipe.query_async::<()>(conn).await
    }

    /// Gives every key of the sale an expiry at `at` (keys made after this keep none: it is
    /// for a sale that has ended, when nothing but settlements and replays touches them; a
    /// time already past removes them at once), then takes the sale off the set of sales
    /// without one (`unretired`).
    pub async fn retire<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        at: OffsetDateTime,
    ) -> Result<(), RedisError> {
        let keys = self.keys(sale);
        let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys.all() {
            pipe.cmd("PEXPIREAT").arg(key).arg(ms).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        // Apart from the sale's own keys: the set lives on its own shard in a Cluster.
        redis::cmd("SREM")
            .arg(self.unretired_key())
            .arg(sale.as_uuid().to_string())
            .query_async::<()>(conn)
            .await
    }

    /// Deletes every key of the sale at once and takes it off `unretired`: for a sale that
    /// was loaded but never stored. Unlike `retire`, it does not depend on the caller's clock
    /// agreeing with Redis's.
    pub async fn remove<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
    ) -> Result<(), RedisError> {
        let keys = self.keys(sale);
        redis::cmd("DEL")
            .arg(&keys.all()[..])
            .query_async::<()>(conn)
            .await?;
        redis::cmd("SREM")
            .arg(self.unretired_key())
            .arg(sale.as_uuid().to_string())
            .query_async::<()>(conn)
            .await
    }

    /// The sales that may hold keys without an expiry (made before they were given one by
    /// `retire`): what a log writer looks through for a sale that ended while no instance had
    /// it in memory.
    pub async fn unretired<C: ConnectionLike>(
        &self,
        conn: &mut C,
    ) -> Result<Vec<SaleId>, RedisError> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.unretired_key())
            .query_async(conn)
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| m.parse().ok().map(SaleId::from_uuid))
            .collect())
    }

    /// Enters a sale in the set of sales without an expiry, before anything makes its keys.
    async fn remember<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
    ) -> Result<(), RedisError> {
        redis::cmd("SADD")
            .arg(self.unretired_key())
            .arg(sale.as_uuid().to_string())
            .query_async::<()>(conn)
            .await
    }

    fn unretired_key(&self) -> String {
        format!("{}sales:unretired", self.prefix)
    }

    /// Marks a sale Redis does not hold as lost, to be rebuilt no sooner than `rebuild_at`
    /// (the first mark's time is kept), unless it is there (`lost.lua`).
    pub async fn mark_lost<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
        rebuild_at: OffsetDateTime,
    ) -> Result<Lost, RedisError> {
        self.remember(conn, sale).await?;
        let reply: Vec<String> = self
            .lost
            .key(self.keys(sale).meta)
            .arg(micros(rebuild_at))
            .invoke_async(conn)
            .await?;
        match reply.as_slice() {
            [kind] if kind == "loaded" => Ok(Lost::Loaded),
            [kind, at] if kind == "lost" => Ok(Lost::RebuildAt(
                at.parse()
                    .ok()
                    .and_then(from_micros)
                    .ok_or_else(|| protocol(at))?,
            )),
            _ => Err(protocol(&format!("{reply:?}"))),
        }
    }

    /// Loads a sale, with what each buyer already holds in it, only if Redis holds nothing of it
    /// (`load.lua`), or it was marked lost and its rebuild time has come by `now`: a sale there
    /// already is never reset. Returns whether it loaded. `sale`'s items carry what remains of
    /// each (their stock less what is held).
    pub async fn load_if_missing<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: &LiveSale,
        buyers: &[(String, u32)],
        now: OffsetDateTime,
    ) -> Result<bool, RedisError> {
        if buyers
            .iter()
            .any(|(b, _)| b.is_empty() || b.contains('\u{1f}'))
        {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a buyer the reservation script cannot store",
            )));
        }
        self.remember(conn, sale.id).await?;
        let keys = self.keys(sale.id);
        let mut invocation = self.load.prepare_invoke();
        invocation
            .key(&keys.meta)
            .key(&keys.stock)
            .key(&keys.held)
            .arg(micros(sale.starts_at))
            .arg(micros(sale.ends_at))
            .arg(sale.per_user_limit)
            .arg(i64::try_from(sale.reservation_ttl.whole_microseconds()).unwrap_or(i64::MAX))
            .arg(micros(now))
            .arg(sale.items.len());
        for (item, remaining) in &sale.items {
            invocation.arg(item).arg(remaining);
        }
        for (buyer, held) in buyers {
            invocation.arg(buyer).arg(held);
        }
        let loaded: i64 = invocation.invoke_async(conn).await?;
        Ok(loaded == 1)
    }

    /// Each item's remaining stock as Redis holds it, in item order; `None` when Redis holds
    /// nothing of the sale (never loaded, or lost).
    pub async fn remaining<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sale: SaleId,
    ) -> Result<Option<Vec<(u32, u32)>>, RedisError> {
        let keys = self.keys(sale);
        let (there, stock): (bool, Vec<(String, String)>) = redis::pipe()
            .hexists(&keys.meta, "starts_at")
            .hgetall(&keys.stock)
            .query_async(conn)
            .await?;
        if !there {
            return Ok(None);
        }
        let mut items = Vec::with_capacity(stock.len());
        for (item, left) in stock {
            if item == TABLE_FIELD {
                continue;
            }
            let (Ok(item), Ok(left)) = (item.parse::<u32>(), left.parse::<i64>()) else {
                return Err(protocol(&format!("stock {item}: {left}")));
            };
            items.push((item, u32::try_from(left).unwrap_or(0)));
        }
        items.sort_unstable();
        Ok(Some(items))
    }

    /// Decides one reservation: a batch of one.
    pub async fn reserve<C: ConnectionLike>(
        &self,
        conn: &mut C,
        request: &ReserveRequest<'_>,
    ) -> Result<Decision, RedisError> {
        let mut decisions = self
            .reserve_batch(conn, std::slice::from_ref(request))
            .await?;
        decisions
            .pop()
            .ok_or_else(|| protocol("no answer for the reservation"))
    }

    /// Decides `requests`, all for one sale and at most [`MAX_BATCH`] of them, in one run of
    /// the script: each answered as if it had been sent alone after the ones before it. The
    /// first request's `max_keys` (a setting, the same for all) applies to the batch.
    pub async fn reserve_batch<C: ConnectionLike>(
        &self,
        conn: &mut C,
        requests: &[ReserveRequest<'_>],
    ) -> Result<Vec<Decision>, RedisError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        if requests.len() > MAX_BATCH || requests.iter().any(|r| r.sale != first.sale) {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a batch of reservations is of one sale, and at most MAX_BATCH of them",
            )));
        }
        // Keys are printable ASCII already; buyers are user ids or the contest's caller-named
        // users.
        if !requests
            .iter()
            .all(|r| storable(r.buyer, r.idempotency_key))
        {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a buyer or key the reservation script cannot store",
            )));
        }
        // The hot path's one command, written straight into one buffer: the script's
        // invocation builder would allocate a string per key and a vector per argument.
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.reserve.get_hash()).arg(RESERVE_KEYS.len());
        let mut text = String::with_capacity(self.prefix.len() + 64);
        let _ = write!(text, "{}{{sale:{}}}:", self.prefix, first.sale.as_uuid());
        let tag = text.len();
        for name in RESERVE_KEYS {
            text.truncate(tag);
            text.push_str(name);
            cmd.arg(text.as_str());
        }
        cmd.arg(first.max_keys);
        let mut uuid = uuid::Uuid::encode_buffer();
        for request in requests {
            text.clear();
            let _ = write!(text, "{}:{}", request.item, request.quantity);
            cmd.arg(micros(request.now))
                .arg(request.item)
                .arg(request.buyer)
                .arg(request.quantity)
                .arg(request.idempotency_key.unwrap_or(""))
                .arg(text.as_str())
                .arg(
                    &*ReservationId::new()
                        .as_uuid()
                        .hyphenated()
                        .encode_lower(&mut uuid),
                )
                .arg(request.buyer_ref.unwrap_or(""));
        }
        let replies: String = match cmd.query_async(conn).await {
            // Not loaded on this server yet (a restart, a new shard): loaded, then run again.
            Err(err) if err.kind() == redis::ErrorKind::NoScriptError => {
                self.reserve.load_async(conn).await?;
                cmd.query_async(conn).await?
            }
            other => other?,
        };
        let decisions: Vec<Decision> = replies
            .split('\u{1e}')
            .map(|reply| {
                let mut fields = [""; 5];
                let mut n = 0;
                for field in reply.split('\u{1f}') {
                    *fields.get_mut(n).ok_or_else(|| protocol(reply))? = field;
                    n += 1;
                }
                decide(&fields[..n])
            })
            .collect::<Result<_, _>>()?;
        if decisions.len() != requests.len() {
            return Err(protocol(&format!(
                "{} answers for {} reservations",
                decisions.len(),
                requests.len()
            )));
        }
        Ok(decisions)
    }
}

/// Whether the scripts can store `buyer` and `key`: they join fields with the unit separator
/// (0x1f), so a buyer or key holding one would be read back as two fields.
pub(crate) fn storable(buyer: &str, key: Option<&str>) -> bool {
    !buyer.is_empty() && !buyer.contains('\u{1f}') && storable_key(key)
}

/// Whether the scripts can store `key` (see [`storable`]).
pub(crate) fn storable_key(key: Option<&str>) -> bool {
    !key.is_some_and(|k| k.contains('\u{1f}'))
}

/// The most reservations one run of the reservation script decides.
pub const MAX_BATCH: usize = 64;

fn decide(reply: &[&str]) -> Result<Decision, RedisError> {
    let (replayed, rest) = match reply.split_first() {
        Some((first, rest)) if *first == "replayed" => (true, rest),
        _ => (false, reply),
    };
    match rest {
        ["key_reused"] => Ok(Decision::KeyReused),
        ["too_many_keys"] => Ok(Decision::TooManyKeys),
        ["refused", "rebuilding", at] => Ok(Decision::Rebuilding {
            at: at
                .parse()
                .ok()
                .and_then(from_micros)
                .ok_or_else(|| protocol(at))?,
        }),
        ["refused", reason] => Ok(Decision::Refused {
            refusal: match *reason {
                "no_sale" => Refusal::SaleNotFound,
                "no_item" => Refusal::ItemNotFound,
                "not_started" => Refusal::NotStarted,
                "ended" => Refusal::Ended,
                "sold_out" => Refusal::SoldOut,
                "limit_reached" => Refusal::LimitReached,
                other => return Err(protocol(other)),
            },
            replayed,
        }),
        ["reserved", id, expires_at, entry @ ..] if entry.len() <= 1 => Ok(Decision::Reserved {
            id: ReservationId::from_uuid(id.parse().map_err(|_| protocol(id))?),
            expires_at: expires_at
                .parse()
                .ok()
                .and_then(from_micros)
                .ok_or_else(|| protocol(expires_at))?,
            replayed,
            entry: match entry.first() {
                Some(e) => Some(parse_entry(e).ok_or_else(|| protocol(e))?),
                None => None,
            },
        }),
        _ => Err(protocol(&format!("{reply:?}"))),
    }
}

/// A stream entry id, `<ms>-<seq>`.
fn parse_entry(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
