//! Per-destination limits shared by every delivery worker, so that N
//! workers in M processes never open more than `delivery.max_connections_per_domain`
//! connections to one domain at once, nor start more than
//! `delivery.messages_per_domain_per_minute` deliveries to it per minute.
//! A destination at its limit is not an error: its recipients wait a few
//! seconds (back-pressure) without using up a retry.
//!
//! Concurrency slots live in memory on a single node and in Redis in a
//! cluster (`backends.counters_url`): a sorted set per domain whose members
//! are the slots taken, scored by when their lease runs out, so a worker
//! killed mid-delivery frees its slot when the lease ends. The rate uses the
//! shared [`Counters`] of the runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailfleet_runtime::backend::Counters;
use redis::Script;
use redis::aio::ConnectionManager;

/// Takes a slot when fewer than the limit are taken (expired ones dropped
/// first), in one atomic step.
const ACQUIRE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
";

#[derive(Debug, thiserror::Error)]
#[error("destination limits: {0}")]
pub struct LimitError(String);

#[derive(Clone)]
enum Slots {
    Memory(Arc<Mutex<HashMap<String, usize>>>),
    Redis(ConnectionManager, Arc<Script>),
}

/// The limits of one process, cheap to clone.
#[derive(Clone)]
pub struct Limits {
    slots: Slots,
    counters: Option<Arc<dyn Counters>>,
    /// 0: no concurrency limit.
    max_connections: usize,
    /// 0: no rate limit.
    per_minute: u64,
    /// How long a slot is held at most (a delivery attempt's budget).
    lease: Duration,
}

/// A taken slot; give it back with [`Limits::release`]. An in-memory slot
/// is also given back when dropped.
pub struct Permit {
    domain: String,
    token: String,
    memory: Option<Arc<Mutex<HashMap<String, usize>>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take()
            && let Ok(mut taken) = memory.lock()
            && let Some(n) = taken.get_mut(&self.domain)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.remove(&self.domain);
            }
        }
    }
}

/// Why a destination cannot be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Connections,
    Rate,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Limits {
    /// Slots in this process's memory.
    pub fn in_memory(
        counters: Option<Arc<dyn Counters>>,
        max_connections: usize,
        per_minute: u64,
        lease: Duration,
    ) -> Limits {
        Limits {
            slots: Slots::Memory(Arc::default()),
            counters,
            max_connections,
            per_minute,
            lease,
        }
    }

    /// In memory when `redis_url` is empty, else in that Redis.
    pub async fn open(
        redis_url: &str,
        counters: Option<Arc<dyn Counters>>,
        max_connections: usize,
        per_minute: u64,
        lease: Duration,
    ) -> Result<Limits, LimitError> {
        let mut limits = Limits::in_memory(counters, max_connections, per_minute, lease);
        if !redis_url.is_empty() {
            let client = redis::Client::open(redis_url).map_err(|e| LimitError(e.to_string()))?;
            let connection = ConnectionManager::new(client)
                .await
                .map_err(|e| LimitError(e.to_string()))?;
            limits.slots = Slots::Redis(connection, Arc::new(Script::new(ACQUIRE)));
        }
        Ok(limits)
    }

    /// A slot for `domain`, or why not now. Backend trouble lets the
    /// delivery go ahead (with a warning): a broken Redis must not stop mail.
    pub async fn try_acquire(&self, domain: &str) -> Result<Permit, Busy> {
        if self.per_minute > 0
            && let Some(counters) = &self.counters
        {
            match counters
                .hit(&format!("delivery:{domain}"), Duration::from_secs(60))
                .await
            {
                Ok(n) if n > self.per_minute => return Err(Busy::Rate),
                Ok(_) => {}
                Err(error) => tracing::warn!(domain, %error, "rate counter unavailable"),
            }
        }
        let token = uuid::Uuid::now_v7().to_string();
        let unlimited = || Permit {
            domain: domain.to_owned(),
            token: String::new(),
            memory: None,
        };
        if self.max_connections == 0 {
            return Ok(unlimited());
        }
        match &self.slots {
            Slots::Memory(memory) => {
                let mut taken = memory.lock().map_err(|_| Busy::Connections)?;
                let n = taken.entry(domain.to_owned()).or_insert(0);
                if *n >= self.max_connections {
                    return Err(Busy::Connections);
                }
                *n += 1;
                Ok(Permit {
                    domain: domain.to_owned(),
                    token,
                    memory: Some(memory.clone()),
                })
            }
            Slots::Redis(connection, script) => {
                let now = now_ms();
                let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
                let result: Result<i64, _> = script
                    .key(slot_key(domain))
                    .arg(now)
                    .arg(now.saturating_add(lease_ms))
                    .arg(&token)
                    .arg(self.max_connections)
                    .arg(lease_ms.saturating_mul(2))
                    .invoke_async(&mut connection.clone())
                    .await;
                match result {
                    Ok(1) => Ok(Permit {
                        domain: domain.to_owned(),
                        token,
                        memory: None,
                    }),
                    Ok(_) => Err(Busy::Connections),
                    Err(error) => {
                        tracing::warn!(domain, %error, "concurrency slots unavailable, delivering anyway");
                        Ok(unlimited())
                    }
                }
            }
        }
    }

    /// Gives a slot back (a no-op for in-memory and unlimited ones, which
    /// go back on drop).
    pub async fn release(&self, permit: Permit) {
        if let Slots::Redis(connection, _) = &self.slots
            && !permit.token.is_empty()
        {
            let result: Result<i64, _> = redis::cmd("ZREM")
                .arg(slot_key(&permit.domain))
                .arg(&permit.token)
                .query_async(&mut connection.clone())
                .await;
            if let Err(error) = result {
                // The lease frees it later.
                tracing::warn!(domain = %permit.domain, %error, "cannot release a concurrency slot");
            }
        }
        drop(permit);
    }
}

fn slot_key(domain: &str) -> String {
    format!("mailfleet:delivery:slots:{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn memory(max: usize) -> Limits {
        Limits::open("", None, max, 0, Duration::from_secs(60))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn memory_slots_are_per_domain_and_come_back() {
        let limits = memory(2).await;
        let a = limits.try_acquire("a.test").await.unwrap();
        let b = limits.try_acquire("a.test").await.unwrap();
        assert_eq!(
            limits.try_acquire("a.test").await.err(),
            Some(Busy::Connections)
        );
        // Another domain is not affected.
        let _c = limits.try_acquire("b.test").await.unwrap();
        limits.release(a).await;
        let _d = limits.try_acquire("a.test").await.unwrap();
        drop(b);
        let _e = limits.try_acquire("a.test").await.unwrap();
        assert!(limits.try_acquire("a.test").await.is_err());
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let limits = memory(0).await;
        let permits: Vec<Permit> = take_many(&limits, 50).await;
        assert_eq!(permits.len(), 50);
    }

    async fn take_many(limits: &Limits, n: usize) -> Vec<Permit> {
        let mut permits = Vec::new();
        for _ in 0..n {
            permits.push(limits.try_acquire("x.test").await.unwrap());
        }
        permits
    }

    #[tokio::test]
    async fn rate_limit_uses_the_shared_counters() {
        let counters: Arc<dyn Counters> =
            Arc::new(mailfleet_runtime::backend::MemoryCounters::new());
        let limits = Limits::open("", Some(counters), 0, 2, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(limits.try_acquire("r.test").await.is_ok());
        assert!(limits.try_acquire("r.test").await.is_ok());
        assert_eq!(limits.try_acquire("r.test").await.err(), Some(Busy::Rate));
        assert!(limits.try_acquire("other.test").await.is_ok());
    }

    /// The Redis slots, when a test Redis is given (scripts/test sets
    /// MAILFLEET_TEST_REDIS_URL; without it the in-memory tests above cover
    /// the logic and this one says so).
    #[tokio::test]
    async fn redis_slots_are_shared_and_leased() {
        let Ok(url) = std::env::var("MAILFLEET_TEST_REDIS_URL") else {
            eprintln!("MAILFLEET_TEST_REDIS_URL not set: Redis slots not tested");
            return;
        };
        let domain = format!("{}.test", uuid::Uuid::now_v7());
        // Two processes' worth of limiters on one Redis.
        let one = Limits::open(&url, None, 2, 0, Duration::from_millis(500))
            .await
            .unwrap();
        let two = Limits::open(&url, None, 2, 0, Duration::from_millis(500))
            .await
            .unwrap();
        let a = one.try_acquire(&domain).await.unwrap();
        let _b = two.try_acquire(&domain).await.unwrap();
        assert_eq!(
            two.try_acquire(&domain).await.err(),
            Some(Busy::Connections)
        );
        one.release(a).await;
        let _c = two.try_acquire(&domain).await.unwrap();
        assert!(one.try_acquire(&domain).await.is_err());
        // A holder that died: its slot comes back after the lease.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(one.try_acquire(&domain).await.is_ok());
    }
}
