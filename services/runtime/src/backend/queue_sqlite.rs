//! The single-node queue: one SQLite table of prost-encoded [`QueueEntry`]s
//! with leases. It owns the `queue` table of `<data_dir>/queue.db`.
//!
//! Durability: WAL with `synchronous = FULL`, so every statement that returns
//! has been fsynced and a `250` answered after [`Queue::enqueue`] survives a
//! power cut. Leasing is one `UPDATE ... WHERE id = (SELECT ...) RETURNING`
//! statement: SQLite takes the write lock before it reads, so two takers
//! (threads or processes) never lease the same row.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;
use tracing::{debug, error, warn};

use super::*;

/// How often `take` looks again for a due entry when nothing in this process
/// woke it: entries enqueued by another process, delays and leases running out.
const POLL_INTERVAL: Duration = Duration::from_millis(150);

/// How long an entry whose payload cannot be decoded is parked before it is
/// tried (and logged) again. Parking instead of deleting keeps it for an
/// operator; a short delay would spin every worker on it.
const CORRUPT_PARK: Duration = Duration::from_secs(3600);

pub struct SqliteQueue {
    pool: SqlitePool,
    /// Woken by `enqueue` and `retry` so that a taker in this process does
    /// not wait for the next poll.
    ready: Arc<Notify>,
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue database at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Writers serialize; a taker waiting for another's UPDATE must
            // wait rather than fail.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS queue (
                id TEXT PRIMARY KEY NOT NULL,
                payload BLOB NOT NULL,
                not_before_ms INTEGER NOT NULL,
                lease_id TEXT,
                lease_until_ms INTEGER
            )",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS queue_due ON queue (not_before_ms)")
            .execute(&pool)
            .await?;
        debug!(path = %path.display(), "sqlite queue opened");
        Ok(SqliteQueue {
            pool,
            ready: Arc::new(Notify::new()),
        })
    }

    /// Leases the oldest due entry, if any.
    async fn try_take(&self, lease: Duration) -> Result<Option<Leased>> {
        loop {
            let now = now_ms();
            let lease_id = uuid::Uuid::now_v7().to_string();
            let row = sqlx::query(
                "UPDATE queue SET lease_id = ?1, lease_until_ms = ?2
                 WHERE id = (
                     SELECT id FROM queue
                     WHERE not_before_ms <= ?3
                       AND (lease_until_ms IS NULL OR lease_until_ms <= ?3)
                     ORDER BY not_before_ms, rowid
                     LIMIT 1
                 )
                 RETURNING id, payload",
            )
            .bind(&lease_id)
            .bind(after_ms(now, lease))
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let id: String = row.try_get("id")?;
            let payload: Vec<u8> = row.try_get("payload")?;
            match QueueEntry::decode(payload.as_slice()) {
                Ok(entry) => {
                    return Ok(Some(Leased {
                        entry,
                        token: LeaseToken::Sqlite { lease_id },
                    }));
                }
                Err(err) => {
                    error!(queue_id = %id, error = %err, "corrupt queue entry parked");
                    sqlx::query(
                        "UPDATE queue
                         SET lease_id = NULL, lease_until_ms = NULL, not_before_ms = ?1
                         WHERE id = ?2 AND lease_id = ?3",
                    )
                    .bind(after_ms(now, CORRUPT_PARK))
                    .bind(&id)
                    .bind(&lease_id)
                    .execute(&self.pool)
                    .await?;
                    // Another entry may be due behind it: look again.
                }
            }
        }
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    /// An entry whose id is already in the queue is not stored twice, so a
    /// caller may repeat an enqueue whose answer it did not see.
    async fn enqueue(&self, entry: &QueueEntry) -> Result<()> {
        if entry.id.is_empty() {
            return Err(BackendError::Other("queue entry without id".into()));
        }
        sqlx::query(
            "INSERT INTO queue (id, payload, not_before_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&entry.id)
        .bind(entry.encode_to_vec())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.ready.notify_waiters();
        Ok(())
    }

    async fn take(&self, wait: Duration, lease: Duration) -> Result<Option<Leased>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an enqueue between the look and
            // the wait still wakes us.
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();

            if let Some(leased) = self.try_take(lease).await? {
                return Ok(Some(leased));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let pause = POLL_INTERVAL.min(deadline - now);
            tokio::select! {
                _ = ready => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn ack(&self, leased: Leased) -> Result<()> {
        let lease_id = sqlite_lease(&leased)?;
        let done = sqlx::query("DELETE FROM queue WHERE id = ?1 AND lease_id = ?2")
            .bind(&leased.entry.id)
            .bind(lease_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            // The lease ran out and another worker took the entry: it will be
            // delivered again (at least once), which mailstore deduplicates.
            warn!(queue_id = %leased.entry.id, "ack after lease expiry ignored");
        }
        Ok(())
    }

    async fn retry(&self, leased: Leased, updated: &QueueEntry, delay: Duration) -> Result<()> {
        let lease_id = sqlite_lease(&leased)?;
        let done = sqlx::query(
            "UPDATE queue
             SET payload = ?1, not_before_ms = ?2, lease_id = NULL, lease_until_ms = NULL
             WHERE id = ?3 AND lease_id = ?4",
        )
        .bind(updated.encode_to_vec())
        .bind(after_ms(now_ms(), delay))
        .bind(&leased.entry.id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            warn!(queue_id = %leased.entry.id, "retry after lease expiry ignored");
        }
        if delay.is_zero() {
            self.ready.notify_waiters();
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM queue")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn list(&self) -> Result<Vec<QueuedEntry>> {
        let rows =
            sqlx::query("SELECT id, payload, not_before_ms, lease_until_ms FROM queue ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        let now = now_ms();
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            match queued(&row, now) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    let id: String = row.try_get("id").unwrap_or_default();
                    warn!(queue_id = %id, %error, "corrupt queue entry left out of the listing");
                }
            }
        }
        Ok(entries)
    }

    async fn get(&self, id: &str) -> Result<Option<QueuedEntry>> {
        let row = sqlx::query(
            "SELECT id, payload, not_before_ms, lease_until_ms FROM queue WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| queued(&row, now_ms())).transpose()
    }

    async fn update(&self, entry: &QueueEntry, due_at_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE queue SET payload = ?1, not_before_ms = ?2
             WHERE id = ?3 AND (lease_until_ms IS NULL OR lease_until_ms <= ?4)",
        )
        .bind(entry.encode_to_vec())
        .bind(due_at_ms)
        .bind(&entry.id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if due_at_ms <= now_ms() {
            self.ready.notify_waiters();
        }
        Ok(done.rows_affected() == 1)
    }

    async fn remove(&self, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM queue
             WHERE id = ?1 AND (lease_until_ms IS NULL OR lease_until_ms <= ?2)",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn queued(row: &sqlx::sqlite::SqliteRow, now: i64) -> Result<QueuedEntry> {
    let payload: Vec<u8> = row.try_get("payload")?;
    let lease_until: Option<i64> = row.try_get("lease_until_ms")?;
    Ok(QueuedEntry {
        entry: QueueEntry::decode(payload.as_slice())?,
        due_at_ms: row.try_get("not_before_ms")?,
        leased: lease_until.is_some_and(|until| until > now),
    })
}

fn sqlite_lease(leased: &Leased) -> Result<&str> {
    match &leased.token {
        LeaseToken::Sqlite { lease_id } => Ok(lease_id),
        LeaseToken::JetStream(_) => Err(BackendError::Other(
            "a JetStream lease given to the SQLite queue".into(),
        )),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn after_ms(now: i64, later: Duration) -> i64 {
    now.saturating_add(i64::try_from(later.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailfleet_proto::queue::Recipient;

    fn entry(id: &str) -> QueueEntry {
        QueueEntry {
            id: id.into(),
            mail_from: "a@example.test".into(),
            recipients: vec![Recipient {
                address: "b@remote.test".into(),
                ..Recipient::default()
            }],
            ..QueueEntry::default()
        }
    }

    /// Listing, reading, changing and removing entries; an entry a worker
    /// holds is left alone.
    #[tokio::test]
    async fn administration() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("q.db")).await.unwrap();
        queue.enqueue(&entry("01")).await.unwrap();
        queue.enqueue(&entry("02")).await.unwrap();
        let listed = queue.list().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].entry.id, "01");
        assert!(!listed[0].leased);

        let leased = queue
            .take(Duration::ZERO, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let held = leased.entry.id.clone();
        assert!(queue.get(&held).await.unwrap().unwrap().leased);
        assert!(!queue.update(&entry(&held), 0).await.unwrap());
        assert!(!queue.remove(&held).await.unwrap());

        let free = if held == "01" { "02" } else { "01" };
        let mut changed = entry(free);
        changed.attempts = 7;
        let later = now_ms() + 3_600_000;
        assert!(queue.update(&changed, later).await.unwrap());
        let got = queue.get(free).await.unwrap().unwrap();
        assert_eq!((got.entry.attempts, got.due_at_ms), (7, later));
        assert!(
            queue
                .take(Duration::ZERO, Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        assert!(queue.remove(free).await.unwrap());
        assert!(queue.get(free).await.unwrap().is_none());
        assert_eq!(queue.depth().await.unwrap(), 1);
    }
}
