//! Mailboxes and messages: delivery with idempotency keys, status, listing,
//! bodies, flags and expunge.
//!
//! Every change takes the next MODSEQ of its mailbox (and a delivery the
//! next UID) with one `UPDATE ... RETURNING` inside the transaction that
//! writes the message. On PostgreSQL that row lock serialises concurrent
//! writers on the same mailbox across replicas, so UIDs are unique and
//! become visible in ascending order (RFC 3501 §2.3.1.1).

use mailfleet_proto::mailstore::{MailboxInfo, MailboxStatus, MessageInfo};
use mailfleet_runtime::imap_mime::Rendered;
use sqlx::any::{Any, AnyRow};
use sqlx::{Row, Transaction};

use super::names::{self, DELETED, FlagMode, SEEN};
use super::{Result, Store, StoreError, now_ms, reference_blob, release_blob, to_u32, to_u64};

/// A message to store.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub account: &'a str,
    /// Empty means INBOX.
    pub mailbox: &'a str,
    pub message: &'a [u8],
    /// `<queue id>/<recipient>`; empty for no deduplication (IMAP APPEND).
    pub idempotency_key: &'a str,
    pub flags: &'a [String],
    /// IMAP APPEND's date-time in ms since the epoch; 0 means now.
    pub internal_date_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The mailbox name as stored (`inbox` becomes `INBOX`).
    pub mailbox: String,
    pub uid: u32,
    pub uid_validity: u32,
    /// The MODSEQ of the new message; 0 for a duplicate.
    pub modseq: u64,
    /// The idempotency key was seen before: nothing was stored.
    pub duplicate: bool,
}

/// What [`Store::list_changes`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    pub messages: Vec<MessageInfo>,
    pub exists: u32,
    pub highest_modseq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expunged {
    pub mailbox: String,
    pub uids: Vec<u32>,
    /// The mailbox MODSEQ of the expunge; 0 when nothing was removed.
    pub modseq: u64,
}

/// A mailbox row, resolved from (account, name).
pub(super) struct MailboxRef {
    pub(super) id: i64,
    pub(super) account_id: i64,
    pub(super) name: String,
    pub(super) uid_validity: i64,
}

impl Store {
    /// Stores a message: blob first, then UID, message row, blob reference
    /// and idempotency key in one transaction. A repeated idempotency key
    /// returns the first UID and stores nothing.
    pub async fn deliver(&self, new: NewMessage<'_>) -> Result<Delivered> {
        let flags = names::join_flags(&names::flags(new.flags)?);
        let mailbox = self.mailbox_ref(new.account, new.mailbox).await?;
        if let Some(uid) = self.delivered_uid(new.idempotency_key).await? {
            return Ok(duplicate(&mailbox, uid));
        }

        // Written before the transaction so that the SQLite write lock is
        // not held across an fsync; an orphan after a failed commit is
        // harmless, a reference without its blob would not be.
        let blob = self.blobs.put(new.message).await?;
        let size = i64::try_from(new.message.len()).unwrap_or(i64::MAX);
        let search_header = super::metadata::search_header(new.message);
        // Rendered now, once, for every later FETCH ENVELOPE/BODYSTRUCTURE.
        let structure = Rendered::of(new.message).unwrap_or_default();
        let now = now_ms();
        let internal_date = if new.internal_date_ms > 0 {
            new.internal_date_ms
        } else {
            now
        };

        let mut tx = self.begin_write().await?;
        if !new.idempotency_key.is_empty() {
            // Claimed first: on PostgreSQL a concurrent delivery with the same
            // key waits here until this one commits, then sees the conflict.
            let claimed = sqlx::query(
                "INSERT INTO deliveries (idempotency_key, mailbox_id, uid, created_at_ms) \
                 VALUES ($1, $2, 0, $3) ON CONFLICT (idempotency_key) DO NOTHING \
                 RETURNING idempotency_key",
            )
            .bind(new.idempotency_key)
            .bind(mailbox.id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_none() {
                tx.rollback().await?;
                self.forget_blob_if_unreferenced(&blob).await?;
                let uid = self
                    .delivered_uid(new.idempotency_key)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Corrupt("idempotency key vanished during delivery".into())
                    })?;
                return Ok(duplicate(&mailbox, uid));
            }
        }
        if let Err(error) = check_quota(&mut tx, mailbox.account_id, size).await {
            tx.rollback().await?;
            self.forget_blob_if_unreferenced(&blob).await?;
            return Err(error);
        }
        let row = sqlx::query(
            "UPDATE mailboxes SET uid_next = uid_next + 1, highest_modseq = highest_modseq + 1 \
             WHERE id = $1 RETURNING uid_next - 1, highest_modseq",
        )
        .bind(mailbox.id)
        .fetch_one(&mut *tx)
        .await?;
        let uid: i64 = row.try_get(0)?;
        let modseq: i64 = row.try_get(1)?;
        sqlx::query(
            "INSERT INTO messages (mailbox_id, uid, blob, size, internal_date_ms, flags, modseq, \
             search_header, envelope, body_structure, body_simple) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(mailbox.id)
        .bind(uid)
        .bind(&blob)
        .bind(size)
        .bind(internal_date)
        .bind(&flags)
        .bind(modseq)
        .bind(&search_header)
        .bind(&structure.envelope)
        .bind(&structure.body_structure)
        .bind(&structure.body)
        .execute(&mut *tx)
        .await?;
        reference_blob(&mut tx, self.blobs.as_ref(), &blob, new.message).await?;
        if !new.idempotency_key.is_empty() {
            sqlx::query("UPDATE deliveries SET uid = $1 WHERE idempotency_key = $2")
                .bind(uid)
                .bind(new.idempotency_key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Delivered {
            mailbox: mailbox.name,
            uid: to_u32(uid, "uid")?,
            uid_validity: to_u32(mailbox.uid_validity, "uid_validity")?,
            modseq: to_u64(modseq, "modseq")?,
            duplicate: false,
        })
    }

    /// Every mailbox of an account with its SPECIAL-USE attribute, in
    /// creation order.
    pub async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>> {
        let account_id = self.account_id(account).await?;
        let rows = sqlx::query(
            "SELECT name, special_use, subscribed FROM mailboxes WHERE account_id = $1 \
             ORDER BY id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let special_use: String = row.try_get(1)?;
                Ok(MailboxInfo {
                    name: row.try_get(0)?,
                    subscribed: row.try_get::<i64, _>(2)? != 0,
                    attributes: if special_use.is_empty() {
                        Vec::new()
                    } else {
                        vec![special_use]
                    },
                })
            })
            .collect()
    }

    /// What IMAP SELECT reports.
    pub async fn select_mailbox(&self, account: &str, mailbox: &str) -> Result<MailboxStatus> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let row = sqlx::query(
            "SELECT uid_validity, uid_next, highest_modseq, \
             (SELECT COUNT(*) FROM messages WHERE mailbox_id = $1), \
             (SELECT COUNT(*) FROM messages WHERE mailbox_id = $1 \
              AND (' ' || flags || ' ') NOT LIKE $2 ESCAPE '!') \
             FROM mailboxes WHERE id = $1",
        )
        .bind(mailbox.id)
        // An explicit escape character: PostgreSQL would otherwise read the
        // backslash of `\Seen` as one.
        .bind(format!("% {SEEN} %"))
        .fetch_one(&self.pool)
        .await?;
        Ok(MailboxStatus {
            uid_validity: to_u32(row.try_get(0)?, "uid_validity")?,
            uid_next: to_u32(row.try_get(1)?, "uid_next")?,
            highest_modseq: to_u64(row.try_get(2)?, "highest_modseq")?,
            exists: to_u32(row.try_get(3)?, "exists")?,
            unseen: to_u32(row.try_get(4)?, "unseen")?,
        })
    }

    /// Metadata of every message in a mailbox, in UID order.
    pub async fn list_messages(&self, account: &str, mailbox: &str) -> Result<Vec<MessageInfo>> {
        self.list_messages_with(account, mailbox, false).await
    }

    /// [`Store::list_messages`], with each message's search header when
    /// `with_search_header` (IMAP SEARCH on header keys).
    pub async fn list_messages_with(
        &self,
        account: &str,
        mailbox: &str,
        with_search_header: bool,
    ) -> Result<Vec<MessageInfo>> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let sql = if with_search_header {
            "SELECT uid, flags, size, internal_date_ms, modseq, search_header FROM messages \
             WHERE mailbox_id = $1 ORDER BY uid"
        } else {
            "SELECT uid, flags, size, internal_date_ms, modseq FROM messages \
             WHERE mailbox_id = $1 ORDER BY uid"
        };
        let rows = sqlx::query(sql)
            .bind(mailbox.id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let mut info = message_info(row)?;
                if with_search_header {
                    info.search_header = row.try_get(5)?;
                }
                Ok(info)
            })
            .collect()
    }

    /// The messages whose MODSEQ is above `changed_since` or whose UID is in
    /// `uids`, with the mailbox's message count and HIGHEST_MODSEQ. One
    /// statement, so one snapshot on both databases: a count lower than the
    /// session expects always means an expunge, never a commit that fell
    /// between two queries. Listing every message instead was most of the
    /// IMAP mix's time (sqlx copies each value of each row).
    pub async fn list_changes(
        &self,
        account: &str,
        mailbox: &str,
        changed_since: u64,
        uids: Option<(u32, u32)>,
    ) -> Result<Changes> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let (first, last) = uids.unwrap_or((1, 0));
        // The first row (UID 0, which no message has) carries the counts.
        let rows = sqlx::query(
            "SELECT 0, '', 0, 0, highest_modseq, \
             (SELECT COUNT(*) FROM messages WHERE mailbox_id = $1) \
             FROM mailboxes WHERE id = $1 \
             UNION ALL \
             SELECT uid, flags, size, internal_date_ms, modseq, 0 FROM messages \
             WHERE mailbox_id = $1 AND (modseq > $2 OR (uid >= $3 AND uid <= $4)) \
             ORDER BY 1",
        )
        .bind(mailbox.id)
        .bind(i64::try_from(changed_since).unwrap_or(i64::MAX))
        .bind(i64::from(first))
        .bind(i64::from(last))
        .fetch_all(&self.pool)
        .await?;
        let (head, rest) = rows
            .split_first()
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {:?}", mailbox.name)))?;
        Ok(Changes {
            highest_modseq: to_u64(head.try_get(4)?, "highest_modseq")?,
            exists: to_u32(head.try_get(5)?, "exists")?,
            messages: rest.iter().map(message_info).collect::<Result<_>>()?,
        })
    }

    /// One statement, not [`Store::mailbox_ref`] then the message: each
    /// query is a round trip to the SQLite connection's thread, and a FETCH
    /// of headers asks for ten bodies at a time.
    pub async fn fetch_body(&self, account: &str, mailbox: &str, uid: u32) -> Result<Vec<u8>> {
        let (address, _) = names::address(account)?;
        let name = names::mailbox(mailbox)?;
        let blob: String = sqlx::query(
            "SELECT m.blob FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id \
             JOIN accounts a ON a.id = b.account_id \
             WHERE a.address = $1 AND b.name = $2 AND m.uid = $3",
        )
        .bind(&address)
        .bind(&name)
        .bind(i64::from(uid))
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("message {uid} in {name:?} of {address}")))?
        .try_get(0)?;
        Ok(self.blobs.get(&blob).await?)
    }

    /// Changes the flags of one message. A change takes a new MODSEQ; a
    /// STORE that changes nothing keeps the old one (RFC 7162 §3.1.3).
    /// Returns the message after the change and whether it changed.
    pub async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
        mode: FlagMode,
        flags: &[String],
    ) -> Result<(MessageInfo, bool)> {
        let requested = names::flags(flags)?;
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let mut tx = self.begin_write().await?;
        let select = "SELECT uid, flags, size, internal_date_ms, modseq FROM messages \
                      WHERE mailbox_id = $1 AND uid = $2";
        let row = sqlx::query(select)
            .bind(mailbox.id)
            .bind(i64::from(uid))
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("message {uid} in {}", mailbox.name)))?;
        let mut info = message_info(&row)?;
        let updated = names::apply_flags(&info.flags, mode, &requested);
        if updated == info.flags {
            tx.rollback().await?;
            return Ok((info, false));
        }
        let modseq: i64 = sqlx::query(
            "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 \
             RETURNING highest_modseq",
        )
        .bind(mailbox.id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        sqlx::query(
            "UPDATE messages SET flags = $1, modseq = $2 WHERE mailbox_id = $3 AND uid = $4",
        )
        .bind(names::join_flags(&updated))
        .bind(modseq)
        .bind(mailbox.id)
        .bind(i64::from(uid))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        info.flags = updated;
        info.modseq = to_u64(modseq, "modseq")?;
        Ok((info, true))
    }

    /// Removes messages flagged `\Deleted`: all of them, or only those among
    /// `uids` when it is not empty (UID EXPUNGE, RFC 4315 §2.1). Blobs whose
    /// last reference goes are deleted after the commit.
    pub async fn expunge(&self, account: &str, mailbox: &str, uids: &[u32]) -> Result<Expunged> {
        let (expunged, released) = self.expunge_releasing(account, mailbox, uids).await?;
        self.delete_unreferenced_blobs(&released).await;
        Ok(expunged)
    }

    /// The committed half of `expunge`: also returns the blobs whose last
    /// reference went (left at refcount 0), whose files are not yet deleted.
    /// Public for the contract tests, which deliver between the two halves.
    #[doc(hidden)]
    pub async fn expunge_releasing(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
    ) -> Result<(Expunged, Vec<String>)> {
        let mailbox = self.mailbox_ref(account, mailbox).await?;
        let mut tx = self.begin_write().await?;
        let rows =
            sqlx::query("SELECT uid, blob, flags FROM messages WHERE mailbox_id = $1 ORDER BY uid")
                .bind(mailbox.id)
                .fetch_all(&mut *tx)
                .await?;
        let mut doomed = Vec::new();
        for row in &rows {
            let uid = to_u32(row.try_get(0)?, "uid")?;
            let flags: String = row.try_get(2)?;
            let deleted = flags.split_whitespace().any(|f| f == DELETED);
            if deleted && (uids.is_empty() || uids.contains(&uid)) {
                doomed.push((uid, row.try_get::<String, _>(1)?));
            }
        }
        if doomed.is_empty() {
            tx.rollback().await?;
            let nothing = Expunged {
                mailbox: mailbox.name,
                ..Expunged::default()
            };
            return Ok((nothing, Vec::new()));
        }
        let modseq: i64 = sqlx::query(
            "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 \
             RETURNING highest_modseq",
        )
        .bind(mailbox.id)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let mut unreferenced = Vec::new();
        for (uid, blob) in &doomed {
            sqlx::query("DELETE FROM messages WHERE mailbox_id = $1 AND uid = $2")
                .bind(mailbox.id)
                .bind(i64::from(*uid))
                .execute(&mut *tx)
                .await?;
            if release_blob(&mut tx, blob).await? && !unreferenced.contains(blob) {
                unreferenced.push(blob.clone());
            }
        }
        tx.commit().await?;
        let expunged = Expunged {
            mailbox: mailbox.name,
            uids: doomed.into_iter().map(|(uid, _)| uid).collect(),
            modseq: to_u64(modseq, "modseq")?,
        };
        Ok((expunged, unreferenced))
    }

    pub(super) async fn account_id(&self, account: &str) -> Result<i64> {
        let (address, _) = names::address(account)?;
        Ok(sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(&address)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("account {address}")))?
            .try_get(0)?)
    }

    pub(super) async fn mailbox_ref(&self, account: &str, mailbox: &str) -> Result<MailboxRef> {
        let (address, _) = names::address(account)?;
        let name = names::mailbox(mailbox)?;
        let row = sqlx::query(
            "SELECT b.id, b.account_id, b.uid_validity FROM mailboxes b \
             JOIN accounts a ON a.id = b.account_id WHERE a.address = $1 AND b.name = $2",
        )
        .bind(&address)
        .bind(&name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("mailbox {name:?} of {address}")))?;
        Ok(MailboxRef {
            id: row.try_get(0)?,
            account_id: row.try_get(1)?,
            name,
            uid_validity: row.try_get(2)?,
        })
    }

    async fn delivered_uid(&self, key: &str) -> Result<Option<u32>> {
        if key.is_empty() {
            return Ok(None);
        }
        let row = sqlx::query("SELECT uid FROM deliveries WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| to_u32(r.try_get(0)?, "uid")).transpose()
    }

    /// A blob written for a delivery that turned out to be a duplicate:
    /// remove it unless a message already refers to the same content.
    /// Goes through a row at refcount 0 so that the file is deleted under
    /// that row's lock like any released blob: a concurrent delivery of the
    /// same bytes then either keeps it (refcount > 0) or puts it back.
    pub(super) async fn forget_blob_if_unreferenced(&self, blob: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO blob_refs (blob, refcount) VALUES ($1, 0) ON CONFLICT (blob) DO NOTHING",
        )
        .bind(blob)
        .execute(&self.pool)
        .await?;
        self.delete_unreferenced_blobs(&[blob.to_owned()]).await;
        Ok(())
    }
}

fn duplicate(mailbox: &MailboxRef, uid: u32) -> Delivered {
    Delivered {
        mailbox: mailbox.name.clone(),
        uid,
        uid_validity: u32::try_from(mailbox.uid_validity).unwrap_or(0),
        modseq: 0,
        duplicate: true,
    }
}

/// Bytes stored by an account and its limit (0: unlimited), inside `tx`.
pub(super) async fn usage(
    tx: &mut Transaction<'static, Any>,
    account_id: i64,
) -> Result<(i64, i64, i64)> {
    // CAST: PostgreSQL's SUM(bigint) is numeric, which `Any` cannot carry.
    let row = sqlx::query(
        "SELECT a.quota_bytes, \
         COALESCE(CAST(SUM(m.size) AS BIGINT), 0), COUNT(m.uid) \
         FROM accounts a LEFT JOIN mailboxes b ON b.account_id = a.id \
         LEFT JOIN messages m ON m.mailbox_id = b.id WHERE a.id = $1 GROUP BY a.quota_bytes",
    )
    .bind(account_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get(1)?, row.try_get(0)?, row.try_get(2)?))
}

/// Refuses `adding` more bytes when the account's quota would be exceeded
/// (RFC 9208 §4.1: the limit applies to the sum of message sizes).
pub(super) async fn check_quota(
    tx: &mut Transaction<'static, Any>,
    account_id: i64,
    adding: i64,
) -> Result<()> {
    let (used, limit, _) = usage(tx, account_id).await?;
    if limit > 0 && used.saturating_add(adding) > limit {
        return Err(StoreError::OverQuota(format!(
            "{used} of {limit} bytes used, {adding} more refused"
        )));
    }
    Ok(())
}

pub(super) fn message_info(row: &AnyRow) -> Result<MessageInfo> {
    Ok(MessageInfo {
        uid: to_u32(row.try_get(0)?, "uid")?,
        flags: names::split_flags(&row.try_get::<String, _>(1)?),
        size: to_u64(row.try_get(2)?, "size")?,
        internal_date_ms: row.try_get(3)?,
        modseq: to_u64(row.try_get(4)?, "modseq")?,
        search_header: String::new(),
    })
}
