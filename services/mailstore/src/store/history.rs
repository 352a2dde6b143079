//! Message history: what smtp-edge and delivery recorded about each message
//! (received, verdict, every delivery outcome), kept for
//! `mailstore.history_retention_days` and read back by `mailfleet trace`
//! by queue id or Message-ID.

use sqlx::Row;

use super::{Result, Store, StoreError};

/// The stages an event may have (see `history.proto`).
pub const STAGES: [&str; 8] = [
    "received",
    "verdict",
    "attempt",
    "delivered",
    "deferred",
    "bounced",
    "failed",
    "dsn",
];

/// Longest text kept in one field; longer values (a remote server's
/// multi-line reply, say) are cut, since a history line is for reading.
const MAX_FIELD_CHARS: usize = 2000;

/// Most events one query returns: a message retried for days stays well
/// below it, a Message-ID reused by a mail loop is cut off.
const MAX_EVENTS: i64 = 10_000;

/// One stored event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRecord {
    pub queue_id: String,
    /// With angle brackets; empty when the message had none.
    pub message_id: String,
    pub at_ms: i64,
    pub stage: String,
    pub recipient: String,
    pub remote: String,
    pub reply: String,
    pub detail: String,
}

fn clip(value: &str) -> &str {
    match value.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

impl Store {
    /// Stores one event.
    pub async fn record_history(&self, event: &HistoryRecord) -> Result<()> {
        let queue_id = event.queue_id.trim();
        if queue_id.is_empty() || queue_id.len() > 200 {
            return Err(StoreError::Invalid(
                "a history event needs a queue id (at most 200 bytes)".into(),
            ));
        }
        if !STAGES.contains(&event.stage.as_str()) {
            return Err(StoreError::Invalid(format!(
                "history stage {:?} is not one of {}",
                event.stage,
                STAGES.join(", ")
            )));
        }
        let message_id = mailfleet_runtime::history::normalize_message_id(clip(&event.message_id));
        sqlx::query(
            "INSERT INTO message_history \
             (queue_id, message_id, at_ms, stage, recipient, remote, reply, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(queue_id)
        .bind(message_id)
        .bind(event.at_ms)
        .bind(&event.stage)
        .bind(clip(&event.recipient))
        .bind(clip(&event.remote))
        .bind(clip(&event.reply))
        .bind(clip(&event.detail))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The events of queue id `id`, or of every queue id that carried
    /// Message-ID `id` (with or without angle brackets), oldest first;
    /// events of the same millisecond in the order they were stored.
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryRecord>> {
        let id = id.trim();
        if id.is_empty() {
            return Err(StoreError::Invalid(
                "a queue id or Message-ID is needed".into(),
            ));
        }
        let message_id = mailfleet_runtime::history::normalize_message_id(id);
        let rows = sqlx::query(
            "SELECT queue_id, message_id, at_ms, stage, recipient, remote, reply, detail \
             FROM message_history \
             WHERE queue_id = $1 OR queue_id IN \
             (SELECT queue_id FROM message_history WHERE message_id = $2) \
             ORDER BY at_ms, id LIMIT $3",
        )
        .bind(id)
        .bind(message_id)
        .bind(MAX_EVENTS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HistoryRecord {
                    queue_id: row.try_get(0)?,
                    message_id: row.try_get(1)?,
                    at_ms: row.try_get(2)?,
                    stage: row.try_get(3)?,
                    recipient: row.try_get(4)?,
                    remote: row.try_get(5)?,
                    reply: row.try_get(6)?,
                    detail: row.try_get(7)?,
                })
            })
            .collect()
    }

    /// Deletes the events older than `before_ms`; returns how many.
    pub async fn prune_history(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM message_history WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_FIELD_CHARS + 5);
        assert_eq!(clip(&long).chars().count(), MAX_FIELD_CHARS);
        assert_eq!(clip("short"), "short");
    }
}
