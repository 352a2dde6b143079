//! ENVELOPE, BODYSTRUCTURE and BODY of a stored message, rendered at
//! delivery (see migration 0006), for IMAP FETCH without the blob.

use mailfleet_runtime::imap_mime::Rendered;
use sqlx::Row;

use super::{Result, Store, StoreError};

impl Store {
    /// The renderings stored with message `uid`; `None` for a message
    /// stored before they were (the caller computes them from the blob).
    pub async fn fetch_structure(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Option<Rendered>> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let row = sqlx::query(
            "SELECT envelope, body_structure, body_simple FROM messages \
             WHERE mailbox_id = $1 AND uid = $2",
        )
        .bind(mailbox.id)
        .bind(i64::from(uid))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("message {uid} in {}", mailbox.name)))?;
        let rendered = Rendered {
            envelope: row.try_get(0)?,
            body_structure: row.try_get(1)?,
            body: row.try_get(2)?,
        };
        // A rendering is never empty (at least "()"), so empty is "not stored".
        let stored = !rendered.envelope.is_empty()
            && !rendered.body_structure.is_empty()
            && !rendered.body.is_empty();
        Ok(stored.then_some(rendered))
    }
}
