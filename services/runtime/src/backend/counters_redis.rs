//! Cluster rate-limit counters in Redis, shared by every replica: one key per
//! (key, window) named `mailfleet:rl:{key}:{window_index}`, with windows
//! aligned on the unix epoch like [`super::MemoryCounters`].

use redis::Script;
use redis::aio::ConnectionManager;
use tracing::debug;

use super::counters_memory::{now_ms, window_ms};
use super::*;

/// INCR and set the expiry on the first hit in one step, so a crash between
/// the two can never leave a counter that never expires.
const HIT_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
";

/// SET NX with the expiry, then GET, in one step: every replica asking at
/// once gets the one first sighting.
const FIRST_SEEN_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return redis.call('GET', KEYS[1])
";

pub struct RedisCounters {
    /// Reconnects by itself; cheap to clone per call.
    connection: ConnectionManager,
    script: Script,
    first_seen: Script,
}

impl RedisCounters {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let connection = ConnectionManager::new(client).await?;
        debug!("redis counters connected");
        Ok(RedisCounters {
            connection,
            script: Script::new(HIT_SCRIPT),
            first_seen: Script::new(FIRST_SEEN_SCRIPT),
        })
    }
}

#[async_trait]
impl Counters for RedisCounters {
    async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }

    async fn hit(&self, key: &str, window: Duration) -> Result<u64> {
        let window_ms = window_ms(window)?;
        let index = now_ms() / window_ms;
        let name = format!("mailfleet:rl:{key}:{index}");
        // The key is only hit during its window, so living one window
        // length from its first hit is enough.
        let mut connection = self.connection.clone();
        let count: u64 = self
            .script
            .key(name)
            .arg(window_ms)
            .invoke_async(&mut connection)
            .await?;
        Ok(count)
    }

    async fn first_seen(&self, key: &str, ttl: Duration) -> Result<u64> {
        let ttl_ms = window_ms(ttl)?;
        let mut connection = self.connection.clone();
        let first: u64 = self
            .first_seen
            .key(format!("mailfleet:seen:{key}"))
            .arg(now_ms())
            .arg(ttl_ms)
            .invoke_async(&mut connection)
            .await?;
        Ok(first)
    }
}
