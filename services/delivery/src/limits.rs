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
//!
//! A slot is a connection, not an attempt: an idle connection kept for the
//! next message ([`crate::pool`]) keeps its slot (renewed while it waits),
//! so the limit is the number of connections open to a domain. A worker
//! that finds the domain full says so ([`Limits::want`]) and every process
//! closes its idle connections to it ([`Limits::wanted`]).

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

/// Pushes a slot's lease further when the slot is still ours (a slot
/// whose lease ran out may have been dropped and taken by someone else).
const RENEW: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// How long a "a worker waits for a slot of this domain" flag lives: a
/// little more than a blocked destination's wait, so the flag is there
/// until its next try.
const WANTED_TTL: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error("destination limits: {0}")]
pub struct LimitError(String);

#[derive(Clone)]
enum Slots {
    Memory(Arc<Mutex<HashMap<String, usize>>>),
    Redis {
        connection: ConnectionManager,
        acquire: Arc<Script>,
        renew: Arc<Script>,
    },
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

/// A taken slot: one connection to the domain, open or about to be. Give
/// it back with [`Limits::release`]; an in-memory slot is also given back
/// when dropped.
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
            limits.slots = Slots::Redis {
                connection,
                acquire: Arc::new(Script::new(ACQUIRE)),
                renew: Arc::new(Script::new(RENEW)),
            };
        }
        Ok(limits)
    }

    /// A slot for `domain` within its rate, or why not now: both checks
    /// of [`Limits::check_rate`] and [`Limits::try_acquire_slot`].
    pub async fn try_acquire(&self, domain: &str) -> Result<Permit, Busy> {
        self.check_rate(domain).await?;
        self.try_acquire_slot(domain).await
    }

    /// Counts one delivery to `domain` against its rate per minute. Backend
    /// trouble lets the delivery go ahead (with a warning): a broken Redis
    /// must not stop mail.
    pub async fn check_rate(&self, domain: &str) -> Result<(), Busy> {
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
        Ok(())
    }

    /// A connection slot for `domain`, or [`Busy::Connections`].
    pub async fn try_acquire_slot(&self, domain: &str) -> Result<Permit, Busy> {
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
            Slots::Redis {
                connection,
                acquire,
                ..
            } => {
                let now = now_ms();
                let lease_ms = self.lease_ms();
                let result: Result<i64, _> = acquire
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

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Keeps a slot for another lease (a pooled connection that stays open,
    /// or is used again). False when the slot is no longer ours: its lease
    /// ran out and it may be someone else's, so its connection must close.
    /// Backend trouble keeps it (with a warning), like acquiring does.
    pub async fn renew(&self, permit: &Permit) -> bool {
        let Slots::Redis {
            connection, renew, ..
        } = &self.slots
        else {
            return true;
        };
        if permit.token.is_empty() {
            return true;
        }
        let lease_ms = self.lease_ms();
        let result: Result<i64, _> = renew
            .key(slot_key(&permit.domain))
            .arg(now_ms().saturating_add(lease_ms))
            .arg(&permit.token)
            .arg(lease_ms.saturating_mul(2))
            .invoke_async(&mut connection.clone())
            .await;
        match result {
            Ok(renewed) => renewed == 1,
            Err(error) => {
                tracing::warn!(domain = %permit.domain, %error, "cannot renew a concurrency slot");
                true
            }
        }
    }

    /// Says that a worker waits for a slot of `domain`, so that other
    /// processes close their idle connections to it ([`Limits::wanted`]).
    /// In memory, the only holders are this process's, which the caller
    /// handles itself.
    pub async fn want(&self, domain: &str) {
        if let Slots::Redis { connection, .. } = &self.slots {
            let result: Result<(), _> = redis::cmd("SET")
                .arg(wanted_key(domain))
                .arg(1)
                .arg("PX")
                .arg(WANTED_TTL.as_millis() as u64)
                .query_async(&mut connection.clone())
                .await;
            if let Err(error) = result {
                tracing::warn!(domain, %error, "cannot ask for a concurrency slot");
            }
        }
    }

    /// Which of `domains` a worker somewhere waits for.
    pub async fn wanted(&self, domains: &[String]) -> Vec<bool> {
        let Slots::Redis { connection, .. } = &self.slots else {
            return vec![false; domains.len()];
        };
        if domains.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = domains.iter().map(|d| wanted_key(d)).collect();
        let result: Result<Vec<Option<String>>, _> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection.clone())
            .await;
        match result {
            Ok(values) => values.iter().map(Option::is_some).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read which destinations wait for a slot");
                vec![false; domains.len()]
            }
        }
    }

    /// Gives a slot back (a no-op for in-memory and unlimited ones, which
    /// go back on drop).
    pub async fn release(&self, permit: Permit) {
        if let Slots::Redis { connection, .. } = &self.slots
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

fn wanted_key(domain: &str) -> String {
    format!("mailfleet:delivery:wanted:{domain}")
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
