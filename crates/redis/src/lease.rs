//! A lease in Redis (`flashmart_app::ports::Lease`): one key holding its holder's name, with a
//! time to live. Taken with `SET NX PX`, renewed and released only by its holder, each a script
//! so that the check and the change are one step. One key, so a Redis Cluster keeps it on one
//! shard.

use std::time::Duration;

use async_trait::async_trait;
use flashmart_app::StoreError;
use flashmart_app::ports::Lease;
use redis::Script;
use redis::aio::ConnectionLike;

use crate::engine::unavailable;

/// Grants the lease to ARGV[1] for ARGV[2] ms when it is free, renews it when ARGV[1] has it;
/// 1 when ARGV[1] holds it afterwards, 0 when another does.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Deletes the lease when ARGV[1] holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

#[derive(Clone)]
pub struct RedisLease<C> {
    key: String,
    conn: C,
    acquire: Script,
    release: Script,
}

impl<C> std::fmt::Debug for RedisLease<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<C> RedisLease<C> {
    /// The lease named `name` under `prefix` (`<prefix>lease:<name>`).
    pub fn new(prefix: &str, name: &str, conn: C) -> Self {
        Self {
            key: format!("{prefix}lease:{name}"),
            conn,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> Lease for RedisLease<C> {
    async fn acquire_or_renew(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let held: i64 = self
            .acquire
            .key(&self.key)
            .arg(holder)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(held == 1)
    }

    async fn release(&self, holder: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(&self.key)
            .arg(holder)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
