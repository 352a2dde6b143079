//! Mailbox management (CREATE, DELETE, RENAME, SUBSCRIBE of RFC 9051
//! §6.3), copying and moving messages between mailboxes (RFC 9051 §6.4.7,
//! RFC 6851) and quota usage (RFC 9208).

use sqlx::any::Any;
use sqlx::{Row, Transaction};

use super::mailbox::{check_quota, usage};
use super::names::{self};
use super::{Result, Store, StoreError, now_ms, release_blob, to_u32, to_u64};

/// What a copy or move did: `pairs[i]` is (source UID, new UID).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copied {
    pub uid_validity: u32,
    /// The destination name as stored.
    pub mailbox: String,
    pub pairs: Vec<(u32, u32)>,
    /// The destination's MODSEQ after the copy; 0 when nothing was copied.
    pub modseq: u64,
    /// The source's MODSEQ of a move's expunge; 0 for a copy.
    pub source_modseq: u64,
    pub source_mailbox: String,
}

/// An account's storage: bytes used and the limit (0: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub messages: u64,
}

impl Store {
    /// Creates a mailbox and any missing superior names (RFC 9051 §6.3.4
    /// says the server SHOULD). An existing name is `AlreadyExists`.
    pub async fn create_mailbox(&self, account: &str, mailbox: &str) -> Result<()> {
        let name = names::new_mailbox(mailbox)?;
        let account_id = self.account_id(account).await?;
        let mut tx = self.begin_write().await?;
        for parent in names::parents(&name) {
            insert_mailbox(&mut tx, account_id, &parent).await?;
        }
        if !insert_mailbox(&mut tx, account_id, &name).await? {
            tx.rollback().await?;
            return Err(StoreError::AlreadyExists(format!("mailbox {name:?}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a mailbox and its messages; its children stay (RFC 9051
    /// §6.3.5). INBOX cannot be deleted.
    pub async fn delete_mailbox(&self, account: &str, mailbox: &str) -> Result<()> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        if mailbox.name == "INBOX" {
            return Err(StoreError::FailedPrecondition(
                "INBOX cannot be deleted".into(),
            ));
        }
        let mut tx = self.begin_write().await?;
        let blobs: Vec<String> = sqlx::query("SELECT blob FROM messages WHERE mailbox_id = $1")
            .bind(mailbox.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut unreferenced = Vec::new();
        for blob in blobs {
            if release_blob(&mut tx, &blob).await? && !unreferenced.contains(&blob) {
                unreferenced.push(blob);
            }
        }
        for statement in [
            "DELETE FROM messages WHERE mailbox_id = $1",
            "DELETE FROM mailboxes WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(mailbox.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.delete_unreferenced_blobs(&unreferenced).await;
        Ok(())
    }

    /// Renames a mailbox with its children (RFC 9051 §6.3.6). Renaming
    /// INBOX moves its messages to a new mailbox and leaves INBOX empty.
    pub async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<()> {
        let source = self.mailbox_ref(account, from).await?;
        let to = names::new_mailbox(to)?;
        if to == "INBOX" {
            return Err(StoreError::AlreadyExists("mailbox \"INBOX\"".into()));
        }
        if to.starts_with(&format!("{}/", source.name)) {
            return Err(StoreError::Invalid(format!(
                "cannot rename {:?} into itself",
                source.name
            )));
        }
        let mut tx = self.begin_write().await?;
        let exists = sqlx::query("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
            .bind(source.account_id)
            .bind(&to)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if exists {
            tx.rollback().await?;
            return Err(StoreError::AlreadyExists(format!("mailbox {to:?}")));
        }
        for parent in names::parents(&to) {
            insert_mailbox(&mut tx, source.account_id, &parent).await?;
        }
        if source.name == "INBOX" {
            insert_mailbox(&mut tx, source.account_id, &to).await?;
            let target: i64 =
                sqlx::query("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
                    .bind(source.account_id)
                    .bind(&to)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            // The messages keep their UIDs in the new mailbox (it has a new
            // UIDVALIDITY anyway); INBOX keeps its UIDNEXT so that no UID
            // is handed out twice under its UIDVALIDITY.
            sqlx::query("UPDATE messages SET mailbox_id = $1 WHERE mailbox_id = $2")
                .bind(target)
                .bind(source.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE mailboxes SET uid_next = (SELECT uid_next FROM mailboxes WHERE id = $1) \
                 WHERE id = $2",
            )
            .bind(source.id)
            .bind(target)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1")
                .bind(source.id)
                .execute(&mut *tx)
                .await?;
        } else {
            let children = format!("{}/%", like_escape(&source.name));
            sqlx::query(
                "UPDATE mailboxes SET name = $1 || SUBSTR(name, CAST($2 AS INTEGER)) \
                 WHERE account_id = $3 AND (id = $4 OR name LIKE $5 ESCAPE '!')",
            )
            .bind(&to)
            .bind(i64::try_from(source.name.chars().count() + 1).unwrap_or(i64::MAX))
            .bind(source.account_id)
            .bind(source.id)
            .bind(children)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// RFC 9051 §6.3.7 SUBSCRIBE and §6.3.8 UNSUBSCRIBE.
    pub async fn set_subscribed(&self, account: &str, mailbox: &str, on: bool) -> Result<()> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        sqlx::query("UPDATE mailboxes SET subscribed = $1 WHERE id = $2")
            .bind(i64::from(on))
            .bind(mailbox.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Copies the messages `uids` of `from` to `to` in one transaction,
    /// giving them consecutive new UIDs in source order (UIDPLUS COPYUID,
    /// RFC 4315 §3). With `move_messages` the sources are removed in the
    /// same transaction (RFC 6851 §3.3: atomic). Missing UIDs are skipped.
    /// A copy counts against the quota; a move does not change usage.
    pub async fn copy_messages(
        &self,
        account: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        move_messages: bool,
    ) -> Result<Copied> {
        let source = self.mailbox_ref(account, from).await?;
        let target = self.mailbox_ref(account, to).await?;
        let mut copied = Copied {
            uid_validity: to_u32(target.uid_validity, "uid_validity")?,
            mailbox: target.name.clone(),
            source_mailbox: source.name.clone(),
            ..Copied::default()
        };
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT uid, blob, size, internal_date_ms, flags, search_header, envelope, \
             body_structure, body_simple FROM messages WHERE mailbox_id = $1 ORDER BY uid",
        )
        .bind(source.id)
        .fetch_all(&mut *tx)
        .await?;
        let mut chosen = Vec::new();
        for row in &rows {
            let uid = to_u32(row.try_get(0)?, "uid")?;
            if uids.contains(&uid) {
                chosen.push(row);
            }
        }
        if chosen.is_empty() || source.id == target.id && move_messages {
            tx.rollback().await?;
            return Ok(copied);
        }
        if !move_messages {
            let mut adding = 0i64;
            for row in &chosen {
                adding = adding.saturating_add(row.try_get::<i64, _>(2)?);
            }
            check_quota(&mut tx, source.account_id, adding).await?;
        }
        let count = i64::try_from(chosen.len()).unwrap_or(i64::MAX);
        // One UPDATE takes the whole UID range: concurrent writers on the
        // target wait on its row lock, so the range is ours alone.
        let row = sqlx::query(
            "UPDATE mailboxes SET uid_next = uid_next + $1, highest_modseq = highest_modseq + 1 \
             WHERE id = $2 RETURNING uid_next - $1, highest_modseq",
        )
        .bind(count)
        .bind(target.id)
        .fetch_one(&mut *tx)
        .await?;
        let first_uid: i64 = row.try_get(0)?;
        let modseq: i64 = row.try_get(1)?;
        for (offset, row) in chosen.iter().enumerate() {
            let new_uid = first_uid + i64::try_from(offset).unwrap_or(i64::MAX);
            let blob: String = row.try_get(1)?;
            sqlx::query(
                "INSERT INTO messages (mailbox_id, uid, blob, size, internal_date_ms, flags, modseq, \
                 search_header, envelope, body_structure, body_simple) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(target.id)
            .bind(new_uid)
            .bind(&blob)
            .bind(row.try_get::<i64, _>(2)?)
            .bind(row.try_get::<i64, _>(3)?)
            .bind(row.try_get::<String, _>(4)?)
            .bind(modseq)
            .bind(row.try_get::<String, _>(5)?)
            .bind(row.try_get::<String, _>(6)?)
            .bind(row.try_get::<String, _>(7)?)
            .bind(row.try_get::<String, _>(8)?)
            .execute(&mut *tx)
            .await?;
            if !move_messages {
                // The source message holds a reference, so the count is
                // above 0 and the file exists: no check as in delivery. On
                // PostgreSQL a concurrent expunge of the source may have
                // released it since our SELECT: never revive a count of 0
                // (its file may be gone), fail the copy instead.
                let referenced = sqlx::query(
                    "UPDATE blob_refs SET refcount = refcount + 1 \
                     WHERE blob = $1 AND refcount > 0 RETURNING refcount",
                )
                .bind(&blob)
                .fetch_optional(&mut *tx)
                .await?;
                if referenced.is_none() {
                    tx.rollback().await?;
                    return Err(StoreError::NotFound(format!(
                        "message {} (expunged during the copy)",
                        row.try_get::<i64, _>(0)?
                    )));
                }
            }
            let source_uid = to_u32(row.try_get(0)?, "uid")?;
            copied.pairs.push((source_uid, to_u32(new_uid, "uid")?));
        }
        if move_messages {
            // The blob moves with its row: reference counts stay as they are.
            let source_modseq: i64 = sqlx::query(
                "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 \
                 RETURNING highest_modseq",
            )
            .bind(source.id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            for (source_uid, _) in &copied.pairs {
                sqlx::query("DELETE FROM messages WHERE mailbox_id = $1 AND uid = $2")
                    .bind(source.id)
                    .bind(i64::from(*source_uid))
                    .execute(&mut *tx)
                    .await?;
            }
            copied.source_modseq = to_u64(source_modseq, "modseq")?;
        }
        tx.commit().await?;
        copied.modseq = to_u64(modseq, "modseq")?;
        Ok(copied)
    }

    /// Storage used by an account and its limit (RFC 9208 `STORAGE`).
    pub async fn quota(&self, account: &str) -> Result<Quota> {
        let account_id = self.account_id(account).await?;
        let mut tx = self.pool.begin().await?;
        let (used, limit, messages) = usage(&mut tx, account_id).await?;
        tx.rollback().await?;
        Ok(Quota {
            used_bytes: to_u64(used, "used bytes")?,
            limit_bytes: to_u64(limit, "quota")?,
            messages: to_u64(messages, "messages")?,
        })
    }
}

/// Inserts a subscribed mailbox unless the name exists; true when inserted.
async fn insert_mailbox(
    tx: &mut Transaction<'static, Any>,
    account_id: i64,
    name: &str,
) -> Result<bool> {
    // RFC 9051 §2.3.1.1: a mailbox created again under an old name must not
    // get the UIDVALIDITY it had: seconds since the epoch, but always above
    // the last one the account handed out.
    let uid_validity: i64 = sqlx::query(
        "UPDATE accounts SET last_uid_validity = \
         CASE WHEN last_uid_validity >= $1 THEN last_uid_validity + 1 ELSE $1 END \
         WHERE id = $2 RETURNING last_uid_validity",
    )
    .bind((now_ms() / 1000).clamp(1, i64::from(u32::MAX)))
    .bind(account_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    let inserted = sqlx::query(
        "INSERT INTO mailboxes (account_id, name, special_use, uid_validity, uid_next, \
         highest_modseq, subscribed) VALUES ($1, $2, '', $3, 1, 1, 1) \
         ON CONFLICT (account_id, name) DO NOTHING RETURNING id",
    )
    .bind(account_id)
    .bind(name)
    .bind(uid_validity)
    .fetch_optional(&mut **tx)
    .await?
    .is_some();
    Ok(inserted)
}

/// Escapes `!`, `%` and `_` for `LIKE ... ESCAPE '!'`.
fn like_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}
