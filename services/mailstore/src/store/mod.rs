//! The metadata store: domains, accounts, mailboxes, messages, delivery
//! idempotency keys, blob reference counts and message history, in SQLite
//! (single node) or PostgreSQL (cluster) through one sqlx `Any` pool.
//! Message bodies live in the [`BlobStore`]; this module keeps their
//! reference counts.
//!
//! SQL is written once for both databases: `$n` placeholders numbered in
//! order of first appearance (SQLite reads them as named parameters),
//! `ON CONFLICT`, `RETURNING`, and only the types `Any` carries (i64, text).

mod directory;
mod dkim;
mod folders;
mod history;
mod imap_structure;
mod mailbox;
pub mod metadata;
pub mod names;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mailfleet_runtime::backend::{BackendError, BlobStore};
use sqlx::any::{Any, AnyPoolOptions};
use sqlx::{AnyPool, Row, Transaction};

pub use directory::Lookup;
pub use dkim::DkimKeyRecord;
pub use folders::{Copied, Quota};
pub use history::{HistoryRecord, STAGES as HISTORY_STAGES};
pub use mailbox::{Changes, Delivered, Expunged, NewMessage};
pub use names::FlagMode;

/// What a store operation failed with; the gRPC layer maps each variant to
/// one status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("blob store: {0}")]
    Blob(#[from] BackendError),
    #[error("password hash: {0}")]
    Hash(String),
    #[error("stored value out of range: {0}")]
    Corrupt(String),
    /// The account's quota would be exceeded (RFC 9208 `OVERQUOTA`).
    #[error("quota exceeded: {0}")]
    OverQuota(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database the pool talks to; the few statements that differ
/// (transaction start, migration lock, pragmas) depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One migration: its version and the SQL of each dialect.
struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Applied in order; a version is never edited once released, only added.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: include_str!("../../migrations/sqlite/0001_init.sql"),
        postgres: include_str!("../../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sqlite: include_str!("../../migrations/sqlite/0002_folders_aliases_quota.sql"),
        postgres: include_str!("../../migrations/postgres/0002_folders_aliases_quota.sql"),
    },
    Migration {
        version: 3,
        sqlite: include_str!("../../migrations/sqlite/0003_dkim_keys.sql"),
        postgres: include_str!("../../migrations/postgres/0003_dkim_keys.sql"),
    },
    Migration {
        version: 4,
        sqlite: include_str!("../../migrations/sqlite/0004_search_header.sql"),
        postgres: include_str!("../../migrations/postgres/0004_search_header.sql"),
    },
    Migration {
        version: 5,
        sqlite: include_str!("../../migrations/sqlite/0005_message_history.sql"),
        postgres: include_str!("../../migrations/postgres/0005_message_history.sql"),
    },
    Migration {
        version: 6,
        sqlite: include_str!("../../migrations/sqlite/0006_imap_structure.sql"),
        postgres: include_str!("../../migrations/postgres/0006_imap_structure.sql"),
    },
    Migration {
        version: 7,
        sqlite: include_str!("../../migrations/sqlite/0007_released_blobs.sql"),
        postgres: include_str!("../../migrations/postgres/0007_released_blobs.sql"),
    },
];

/// An arbitrary constant: the PostgreSQL advisory lock that serialises
/// migrations when several replicas start at once.
const MIGRATION_LOCK_ID: i64 = 0x6d61_696c_7374;

pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    blobs: Arc<dyn BlobStore>,
}

/// The database URL for a config: `backends.metadata_url`, or the single
/// node's SQLite file under `data_dir`.
pub fn database_url(metadata_url: &str, data_dir: &Path) -> String {
    if metadata_url.is_empty() {
        format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("mailstore.db").display()
        )
    } else {
        metadata_url.to_owned()
    }
}

impl Store {
    /// Connects, applies pending migrations and returns the store.
    pub async fn open(url: &str, blobs: Arc<dyn BlobStore>) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "metadata URL must start with sqlite: or postgres://, got {url:?}"
            )));
        };
        let options = match dialect {
            // WAL lets readers run beside the one writer; FULL makes a
            // commit survive power loss, which "250 queued" relies on.
            Dialect::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            sqlx::raw_sql(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .execute(&mut *conn)
                            .await?;
                            Ok(())
                        })
                    })
            }
            Dialect::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = options.connect(url).await?;
        let store = Store {
            pool,
            dialect,
            blobs,
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pool; pending queries finish first.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies every migration not yet recorded in `schema_version`, all in
    /// one transaction, under a lock so that two replicas starting together
    /// do not both apply them.
    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK_ID)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_version (\
             version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_version")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for migration in MIGRATIONS {
            if applied.contains(&migration.version) {
                continue;
            }
            let sql = match self.dialect {
                Dialect::Sqlite => migration.sqlite,
                Dialect::Postgres => migration.postgres,
            };
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version, applied_at_ms) VALUES ($1, $2)")
                .bind(migration.version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version = migration.version, "applied schema migration");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts a transaction that will write. On SQLite it takes the write
    /// lock at once (`BEGIN IMMEDIATE`): a deferred transaction that reads
    /// first and writes later fails with SQLITE_BUSY when another writer
    /// got in between, and busy_timeout cannot help that case.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.pool.begin().await,
        }
    }

    /// Deletes the blobs whose last reference went in a committed
    /// transaction (their `blob_refs` rows stay at refcount 0 until then).
    /// A failure leaves the row at 0 and the file in place, never a
    /// reference without its blob, so it is logged and not returned: the
    /// next release of the same blob or the housekeeping sweep retries.
    async fn delete_unreferenced_blobs(&self, blobs: &[String]) {
        for blob in blobs {
            if let Err(error) = self.delete_released_blob(blob).await {
                tracing::warn!(%blob, %error, "cannot delete unreferenced blob");
            }
        }
    }

    /// Deletes `blob` if its reference count is still 0; true when it did.
    ///
    /// The row goes first and the file is deleted while this transaction
    /// still holds the row (PostgreSQL row lock, SQLite write lock): a
    /// delivery of the same bytes that upserts the row meanwhile either
    /// committed first (refcount > 0, nothing is deleted here) or waits
    /// for us and then finds no row, creates it with refcount 1 and puts
    /// the file back (see `deliver`). Public for the contract tests, which
    /// run the two phases of a release apart to make that race happen.
    #[doc(hidden)]
    pub async fn delete_released_blob(&self, blob: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM blob_refs WHERE blob = $1 AND refcount = 0")
            .bind(blob)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Referenced again, or already gone with its file.
            tx.rollback().await?;
            return Ok(false);
        }
        if let Err(error) = self.blobs.delete(blob).await {
            // The row stays at 0: refcount 0 with its file is consistent.
            tx.rollback().await?;
            return Err(error.into());
        }
        // A failed commit leaves the row at 0 without its file, which the
        // invariant allows (only refcount > 0 promises a file); the sweep
        // removes the row later and a delivery re-puts the file.
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes up to `limit` blobs left at refcount 0: a crash between a
    /// release's commit and its file deletion, or a deletion that failed.
    /// Returns how many were deleted.
    pub async fn sweep_released_blobs(&self, limit: i64) -> Result<usize> {
        let released: Vec<String> =
            sqlx::query("SELECT blob FROM blob_refs WHERE refcount = 0 LIMIT $1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
        let mut deleted = 0;
        for blob in &released {
            match self.delete_released_blob(blob).await {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(%blob, %error, "cannot delete released blob"),
            }
        }
        Ok(deleted)
    }
}

/// Drops one reference to `blob` inside `tx`; true when it was the last one
/// (the caller calls `delete_unreferenced_blobs` after commit). The row
/// stays, at refcount 0, so that the file is only ever deleted under that
/// row's lock (see `delete_released_blob`).
async fn release_blob(tx: &mut Transaction<'static, Any>, blob: &str) -> Result<bool> {
    let row = sqlx::query(
        "UPDATE blob_refs SET refcount = refcount - 1 WHERE blob = $1 AND refcount > 0 \
         RETURNING refcount",
    )
    .bind(blob)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(row) => row.try_get::<i64, _>(0)? == 0,
        // No row above 0: nothing to release; the file is not ours to
        // judge (a sweep deletes it if a row at 0 remains).
        None => false,
    })
}

/// Adds one reference to the blob of a message being stored inside `tx`.
/// When that makes the count 1 (a new row, or one revived from 0), a
/// concurrent `delete_released_blob` may have deleted the file between our
/// put and this upsert: the file is checked and put again if missing, while
/// `tx` holds the row, so no deleter can take it before we commit.
async fn reference_blob(
    tx: &mut Transaction<'static, Any>,
    blobs: &dyn BlobStore,
    blob: &str,
    content: &[u8],
) -> Result<()> {
    let refcount: i64 = sqlx::query(
        "INSERT INTO blob_refs (blob, refcount) VALUES ($1, 1) \
         ON CONFLICT (blob) DO UPDATE SET refcount = blob_refs.refcount + 1 \
         RETURNING refcount",
    )
    .bind(blob)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    if refcount == 1 && !blobs.exists(blob).await? {
        tracing::info!(%blob, "blob deleted by a concurrent release: stored again");
        let stored = blobs.put(content).await?;
        if stored != blob {
            return Err(StoreError::Corrupt(format!(
                "blob {blob} stored again as {stored}"
            )));
        }
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A stored integer as the u32 the protocol carries (UIDs, UIDVALIDITY).
fn to_u32(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} = {value}")))
}

fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} = {value}")))
}
