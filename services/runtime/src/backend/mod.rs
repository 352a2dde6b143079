//! The backend concerns of DESIGN.md, each one small trait with a single-node
//! and a cluster implementation. Nothing outside this module knows which one
//! is in use; `tests/contract.rs` runs one suite against both.
//!
//! | concern  | single node                | cluster                     |
//! |----------|----------------------------|-----------------------------|
//! | queue    | [`SqliteQueue`]            | [`JetStreamQueue`]          |
//! | events   | [`LocalEvents`]            | [`NatsEvents`]              |
//! | counters | [`MemoryCounters`]         | [`RedisCounters`]           |
//! | blobs    | [`DirBlobs`] (a directory, shared by every process in a cluster) |
//! | metadata | [`crate::db`]: SQLite or PostgreSQL through one sqlx `Any` pool  |

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mailfleet_proto::queue::{MailboxEvent, QueueEntry};

mod blobs_dir;
mod counters_memory;
mod counters_redis;
mod events_local;
mod events_nats;
mod queue_jetstream;
mod queue_sqlite;

pub use blobs_dir::DirBlobs;
pub use counters_memory::MemoryCounters;
pub use counters_redis::RedisCounters;
pub use events_local::LocalEvents;
pub use events_nats::NatsEvents;
pub use queue_jetstream::{JetStreamOptions, JetStreamQueue, NOT_BEFORE_HEADER};
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

    /// Fails when the backend cannot be reached (for `/readyz`).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// Content-addressed message blobs (SHA-256 hex ids).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `data` durably (file and directory fsynced) and returns its id.
    async fn put(&self, data: &[u8]) -> Result<String>;
    async fn get(&self, id: &str) -> Result<Vec<u8>>;
    /// Removes the blob; a missing blob is not an error.
    async fn delete(&self, id: &str) -> Result<()>;
}
