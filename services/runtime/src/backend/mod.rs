//! The backend concerns of DESIGN.md, each one small trait with a single-node
//! and a cluster implementation. Nothing outside this module knows which one
//! is in use; `tests/contract.rs` runs one suite against both.
//!
//! | concern  | single node                | cluster                     |
//! |----------|----------------------------|-----------------------------|
//! | queue    | [`SqliteQueue`]            | [`JetStreamQueue`]          |
//! | events   | [`LocalEvents`]            | [`NatsEvents`]              |
//! | counters | [`MemoryCounters`]         | [`RedisCounters`]           |
//! | blobs    | [`DirBlobs`] (a directory)  | [`ObjectStoreBlobs`] (S3) or a shared [`DirBlobs`] |
//! | metadata | [`crate::db`]: SQLite or PostgreSQL through one sqlx `Any` pool  |

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mailfleet_proto::queue::{MailboxEvent, QueueEntry, RecipientStatus};

mod blobs_dir;
mod blobs_object;
mod counters_memory;
mod counters_redis;
mod events_local;
mod events_nats;
mod queue_jetstream;
mod queue_sqlite;

pub use blobs_dir::DirBlobs;
pub use blobs_object::{ObjectStoreBlobs, S3Location};
pub use counters_memory::MemoryCounters;
pub use counters_redis::RedisCounters;
pub use events_local::LocalEvents;
pub use events_nats::NatsEvents;
pub use queue_jetstream::{JetStreamOptions, JetStreamQueue, NOT_BEFORE_HEADER, STATS_LIST_LIMIT};
pub use queue_sqlite::SqliteQueue;

/// A backend failed: the operation may be retried, nothing was half done
/// from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] sqlx::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt payload: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("blob {0} not found")]
    BlobNotFound(String),
    #[error("{0}")]
    Other(String),
    #[error("{0} is not supported by this queue backend")]
    Unsupported(&'static str),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// A queue entry taken by one worker. Until it is acked or retried, no other
/// worker gets it; if the worker dies, the lease runs out and it comes back.
/// An ack or retry after the lease ran out may reach an entry another worker
/// holds by then: it is ignored with a warning (SQLite) or leaves a duplicate
/// (JetStream). Either way the entry is delivered at least once, never lost.
#[derive(Debug)]
pub struct Leased {
    pub entry: QueueEntry,
    /// Implementation-specific handle (row id, JetStream ack subject).
    pub(crate) token: LeaseToken,
}

#[derive(Debug)]
pub(crate) enum LeaseToken {
    Sqlite { lease_id: String },
    JetStream(Box<async_nats::jetstream::Message>),
}

/// The durable message queue between smtp-edge and delivery.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Stores `entry`; when this returns Ok the entry survives a crash
    /// (SQLite commit / JetStream PubAck).
    async fn enqueue(&self, entry: &QueueEntry) -> Result<()>;

    /// Waits up to `wait` for an entry that is due and not leased, and
    /// leases it for `lease`.
    async fn take(&self, wait: Duration, lease: Duration) -> Result<Option<Leased>>;

    /// The entry is done (every recipient delivered or failed): remove it.
    async fn ack(&self, leased: Leased) -> Result<()>;

    /// Stores `updated` (recipient states, attempt count) in place of the
    /// leased entry, due again after `delay`. Never loses the entry: the new
    /// state is durable before the old one is released.
    async fn retry(&self, leased: Leased, updated: &QueueEntry, delay: Duration) -> Result<()>;

    /// Entries waiting (due or not), for metrics and readiness.
    async fn depth(&self) -> Result<u64>;

    // Queue administration (`mailfleet queue ...`). A backend that cannot
    // look inside its queue says so with `BackendError::Unsupported`.

    /// Every entry, oldest first, with when it is due and whether a worker
    /// holds it now.
    async fn list(&self) -> Result<Vec<QueuedEntry>> {
        Err(BackendError::Unsupported("listing the queue"))
    }

    /// One entry by id.
    async fn get(&self, _id: &str) -> Result<Option<QueuedEntry>> {
        Err(BackendError::Unsupported("reading a queue entry"))
    }

    /// Replaces a waiting entry and makes it due at `due_at_ms`. False when
    /// the entry is gone or a worker holds it (try again later).
    async fn update(&self, _entry: &QueueEntry, _due_at_ms: i64) -> Result<bool> {
        Err(BackendError::Unsupported("changing a queue entry"))
    }

    /// Removes an entry that no worker holds. False when it is gone or held.
    async fn remove(&self, _id: &str) -> Result<bool> {
        Err(BackendError::Unsupported("removing a queue entry"))
    }

    /// Depth and oldest entry by status and destination domain, for the
    /// queue gauges. The default reads every entry through [`Queue::list`];
    /// a backend that cannot list gives its total depth only.
    async fn stats(&self, now_ms: i64) -> Result<QueueStats> {
        match self.list().await {
            Ok(entries) => Ok(QueueStats::from_entries(&entries, now_ms)),
            Err(BackendError::Unsupported(_)) => Ok(QueueStats {
                depth: self.depth().await?,
                ..QueueStats::default()
            }),
            Err(error) => Err(error),
        }
    }
}

/// Entries in one group of [`QueueStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueBucket {
    pub entries: u64,
    /// Unix milliseconds when the oldest entry of the group was accepted;
    /// `None` when the group is empty or the backend cannot tell.
    pub oldest_received_at_ms: Option<i64>,
}

impl QueueBucket {
    fn add(&mut self, received_at_ms: i64) {
        self.entries += 1;
        // 0 means "not recorded" (entries from before the field existed).
        if received_at_ms > 0 {
            self.oldest_received_at_ms = Some(
                self.oldest_received_at_ms
                    .map_or(received_at_ms, |oldest| oldest.min(received_at_ms)),
            );
        }
    }
}

/// Status labels of [`QueueStats::by_status`] for a backend that sees each entry.
pub const QUEUE_STATUS_DUE: &str = "due";
pub const QUEUE_STATUS_DEFERRED: &str = "deferred";
pub const QUEUE_STATUS_LEASED: &str = "leased";

/// A snapshot of the queue for the `mailfleet_queue_*` gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Every entry, whatever its status.
    pub depth: u64,
    /// By status: `due` (may be taken now), `deferred` (waiting for a
    /// retry), `leased` (a worker holds it); a backend that cannot tell
    /// them apart uses its own names (see [`JetStreamQueue`]).
    pub by_status: BTreeMap<&'static str, QueueBucket>,
    /// By destination domain of the recipients still pending (an entry for
    /// two domains counts in both); empty when the backend cannot tell.
    pub by_domain: BTreeMap<String, QueueBucket>,
}

impl QueueStats {
    pub fn from_entries(entries: &[QueuedEntry], now_ms: i64) -> QueueStats {
        let mut stats = QueueStats {
            depth: entries.len() as u64,
            ..QueueStats::default()
        };
        // Every status is reported, so a gauge drops to 0 rather than vanishing.
        for status in [QUEUE_STATUS_DUE, QUEUE_STATUS_DEFERRED, QUEUE_STATUS_LEASED] {
            stats.by_status.insert(status, QueueBucket::default());
        }
        for queued in entries {
            let status = if queued.leased {
                QUEUE_STATUS_LEASED
            } else if queued.due_at_ms > now_ms {
                QUEUE_STATUS_DEFERRED
            } else {
                QUEUE_STATUS_DUE
            };
            let received = queued.entry.received_at_ms;
            stats.by_status.entry(status).or_default().add(received);
            let mut domains: Vec<String> = queued
                .entry
                .recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Pending as i32)
                .map(|r| {
                    r.address
                        .rsplit_once('@')
                        .map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase())
                        .unwrap_or_default()
                })
                .collect();
            domains.sort();
            domains.dedup();
            for domain in domains {
                stats.by_domain.entry(domain).or_default().add(received);
            }
        }
        stats
    }
}

/// A queue entry as the queue administration sees it.
#[derive(Debug, Clone)]
pub struct QueuedEntry {
    pub entry: QueueEntry,
    /// Unix milliseconds from when it may be taken.
    pub due_at_ms: i64,
    /// A worker holds it now.
    pub leased: bool,
}

/// Mailbox change events: published by mailstore after each commit, seen by
/// every access session of that account, on any replica.
#[async_trait]
pub trait Events: Send + Sync + 'static {
    async fn publish(&self, event: &MailboxEvent) -> Result<()>;
    /// Events of one account from now on.
    async fn subscribe(&self, account: &str) -> Result<BoxStream<'static, MailboxEvent>>;

    /// Fails when the backend cannot be reached (for `/readyz`).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Fixed-window counters for rate limits, shared by every replica in a cluster.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    /// Adds one to `key` in the current window of length `window` and
    /// returns the count in that window, this hit included.
    async fn hit(&self, key: &str, window: Duration) -> Result<u64>;

    /// When `key` was first seen (unix ms): now, recorded, when it is not
    /// remembered; the record is forgotten `ttl` after it was made. Unlike
    /// [`Counters::hit`]'s aligned windows this is a sliding memory, which
    /// greylisting needs (RFC 6647 §2.1: a retry passes only after a
    /// minimum delay since the first attempt).
    async fn first_seen(&self, _key: &str, _ttl: Duration) -> Result<u64> {
        Err(BackendError::Unsupported("remembering first sightings"))
    }

    /// Fails when the backend cannot be reached (for `/readyz`).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Content-addressed message blobs (SHA-256 hex ids).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `data` durably (file and directory fsynced, or the object
    /// store's acknowledgement) and returns its id.
    async fn put(&self, data: &[u8]) -> Result<String>;
    async fn get(&self, id: &str) -> Result<Vec<u8>>;
    /// Removes the blob; a missing blob is not an error.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Whether the blob is stored, without reading it (a stat, a HEAD):
    /// the mailstore asks when a reference revives a blob that a
    /// concurrent release may just have deleted.
    async fn exists(&self, id: &str) -> Result<bool>;

    /// Fails when the store cannot be reached (for `/readyz`).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
