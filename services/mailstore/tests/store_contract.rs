//! One contract suite for the metadata store, run against SQLite (a temp
//! directory) and PostgreSQL (a fresh database per run on the server named
//! by `MAILFLEET_TEST_POSTGRES_URL`). The PostgreSQL tests fail, not skip,
//! when that variable is unset: a green run must mean both were tested.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mailfleet_mailstore::store::{self, FlagMode, Lookup, NewMessage, Store, StoreError};
use mailfleet_runtime::backend::{self, BlobStore, DirBlobs};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Connection};
use tempfile::TempDir;

const POSTGRES_ENV: &str = "MAILFLEET_TEST_POSTGRES_URL";

/// A database the suite may use, and how to drop it afterwards.
struct TestDb {
    url: String,
    admin_url: Option<String>,
    name: String,
    _dir: TempDir,
    blob_dir: std::path::PathBuf,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = store::database_url("", dir.path());
        let blob_dir = dir.path().join("blobs");
        TestDb {
            url,
            admin_url: None,
            name: String::new(),
            _dir: dir,
            blob_dir,
        }
    }

    async fn postgres() -> TestDb {
        let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_ENV} is not set: the store contract must run against PostgreSQL too \
                 (e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:15432/postgres)"
            )
        });
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let dir = tempfile::tempdir().expect("tempdir");
        let blob_dir = dir.path().join("blobs");
        TestDb {
            url: with_database(&admin_url, &name),
            admin_url: Some(admin_url),
            name,
            _dir: dir,
            blob_dir,
        }
    }

    fn blobs(&self) -> Arc<DirBlobs> {
        Arc::new(DirBlobs::open(&self.blob_dir).expect("blob dir"))
    }

    async fn open(&self) -> Store {
        Store::open(&self.url, self.blobs())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    /// Drops the PostgreSQL database; every store must be closed first.
    async fn drop_database(self) {
        let Some(admin_url) = &self.admin_url else {
            return;
        };
        let mut conn = AnyConnection::connect(admin_url).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop test database");
    }
}

/// `url` with its database path replaced by `name`, query string kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn deliver<'a>(
    account: &'a str,
    mailbox: &'a str,
    message: &'a [u8],
    key: &'a str,
) -> NewMessage<'a> {
    NewMessage {
        account,
        mailbox,
        message,
        idempotency_key: key,
        flags: &[],
        internal_date_ms: 0,
    }
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|f| f.to_string()).collect()
}

/// The suite every backend must pass.
async fn contract(store: &Store, blob_dir: &Path) {
    let blobs = DirBlobs::open(blob_dir).unwrap();

    // Domains: idempotent add, lowercased, validated.
    assert!(store.add_domain("Example.COM").await.unwrap());
    assert!(!store.add_domain("example.com").await.unwrap());
    assert!(store.add_domain("second.test").await.unwrap());
    assert_eq!(
        store.list_domains().await.unwrap(),
        vec!["example.com", "second.test"]
    );
    assert!(matches!(
        store.add_domain("not a domain").await,
        Err(StoreError::Invalid(_))
    ));

    // Users.
    assert!(matches!(
        store.add_user("alice@other.org", "pw").await,
        Err(StoreError::FailedPrecondition(_))
    ));
    assert!(matches!(
        store.add_user("no-at-sign", "pw").await,
        Err(StoreError::Invalid(_))
    ));
    store.add_user("Alice@Example.com", "s3cret").await.unwrap();
    assert!(matches!(
        store.add_user("alice@example.com", "other").await,
        Err(StoreError::AlreadyExists(_))
    ));
    store.add_user("bob@example.com", "hunter2").await.unwrap();
    store.add_user("carol@second.test", "pw").await.unwrap();
    assert_eq!(
        store.list_users().await.unwrap(),
        vec!["alice@example.com", "bob@example.com", "carol@second.test"]
    );

    // Lookup.
    assert_eq!(
        store.lookup_recipient("ALICE@EXAMPLE.COM").await.unwrap(),
        Lookup::Local {
            account: "alice@example.com".into()
        }
    );
    assert_eq!(
        store.lookup_recipient("nobody@example.com").await.unwrap(),
        Lookup::UnknownUser
    );
    assert_eq!(
        store
            .lookup_recipient("someone@elsewhere.net")
            .await
            .unwrap(),
        Lookup::Remote
    );

    // Authentication.
    assert_eq!(
        store
            .authenticate("alice@example.com", "s3cret")
            .await
            .unwrap(),
        Some("alice@example.com".into())
    );
    assert_eq!(
        store
            .authenticate("alice@example.com", "wrong")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .authenticate("nobody@example.com", "s3cret")
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.authenticate("garbage", "s3cret").await.unwrap(), None);

    // Default folders with SPECIAL-USE.
    let mailboxes = store.list_mailboxes("alice@example.com").await.unwrap();
    let names: Vec<&str> = mailboxes.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"]
    );
    let junk = mailboxes.iter().find(|m| m.name == "Junk").unwrap();
    assert_eq!(junk.attributes, ["\\Junk"]);
    assert!(mailboxes[0].attributes.is_empty());
    assert!(matches!(
        store.list_mailboxes("nobody@example.com").await,
        Err(StoreError::NotFound(_))
    ));

    // Deliver and idempotency.
    let first = b"Subject: one\r\n\r\nhello\r\n".as_slice();
    let d1 = store
        .deliver(deliver(
            "alice@example.com",
            "",
            first,
            "q1/alice@example.com",
        ))
        .await
        .unwrap();
    assert_eq!(
        (d1.mailbox.as_str(), d1.uid, d1.duplicate),
        ("INBOX", 1, false)
    );
    let again = store
        .deliver(deliver(
            "alice@example.com",
            "INBOX",
            b"other bytes",
            "q1/alice@example.com",
        ))
        .await
        .unwrap();
    assert_eq!((again.uid, again.duplicate), (1, true));
    let status = store
        .select_mailbox("alice@example.com", "inbox")
        .await
        .unwrap();
    assert_eq!((status.exists, status.unseen, status.uid_next), (1, 1, 2));
    assert!(status.uid_validity > 0);
    assert!(status.highest_modseq >= d1.modseq);
    // The duplicate stored no blob.
    assert!(blobs.get(&sha256_hex(b"other bytes")).await.is_err());

    let junk_delivery = store
        .deliver(deliver(
            "alice@example.com",
            "Junk",
            b"spam\r\n",
            "q2/alice@example.com",
        ))
        .await
        .unwrap();
    assert_eq!(
        (junk_delivery.mailbox.as_str(), junk_delivery.uid),
        ("Junk", 1)
    );
    assert!(matches!(
        store
            .deliver(deliver("alice@example.com", "NoSuchFolder", b"x", "q3/a"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .deliver(deliver("nobody@example.com", "", b"x", "q4/a"))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .fetch_body("alice@example.com", "INBOX", 1)
            .await
            .unwrap(),
        first
    );
    assert!(matches!(
        store.fetch_body("alice@example.com", "INBOX", 99).await,
        Err(StoreError::NotFound(_))
    ));

    // Flags with modseq.
    let (info, changed) = store
        .store_flags(
            "alice@example.com",
            "INBOX",
            1,
            FlagMode::Add,
            &flags(&["\\seen", "$Work"]),
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(info.flags, ["$Work", "\\Seen"]);
    assert!(info.modseq > d1.modseq);
    let status2 = store
        .select_mailbox("alice@example.com", "INBOX")
        .await
        .unwrap();
    assert_eq!(status2.unseen, 0);
    assert_eq!(status2.highest_modseq, info.modseq);
    let (same, changed) = store
        .store_flags(
            "alice@example.com",
            "INBOX",
            1,
            FlagMode::Add,
            &flags(&["\\Seen"]),
        )
        .await
        .unwrap();
    assert!(!changed);
    assert_eq!(same.modseq, info.modseq);
    let (removed, _) = store
        .store_flags(
            "alice@example.com",
            "INBOX",
            1,
            FlagMode::Remove,
            &flags(&["$Work"]),
        )
        .await
        .unwrap();
    assert_eq!(removed.flags, ["\\Seen"]);
    let (replaced, _) = store
        .store_flags(
            "alice@example.com",
            "INBOX",
            1,
            FlagMode::Replace,
            &flags(&["\\Flagged"]),
        )
        .await
        .unwrap();
    assert_eq!(replaced.flags, ["\\Flagged"]);
    assert_eq!(
        store
            .select_mailbox("alice@example.com", "INBOX")
            .await
            .unwrap()
            .unseen,
        1
    );
    assert!(matches!(
        store
            .store_flags(
                "alice@example.com",
                "INBOX",
                1,
                FlagMode::Add,
                &flags(&["\\Bogus"])
            )
            .await,
        Err(StoreError::Invalid(_))
    ));

    // Expunge: a blob shared by two messages goes with the last one.
    let shared = b"Subject: shared\r\n\r\nsame bytes\r\n".as_slice();
    let shared_id = sha256_hex(shared);
    let a2 = store
        .deliver(deliver(
            "alice@example.com",
            "INBOX",
            shared,
            "q5/alice@example.com",
        ))
        .await
        .unwrap();
    assert_eq!(a2.uid, 2);
    let b1 = store
        .deliver(deliver(
            "bob@example.com",
            "INBOX",
            shared,
            "q5/bob@example.com",
        ))
        .await
        .unwrap();
    assert_eq!(b1.uid, 1);
    let listed = store
        .list_messages("alice@example.com", "INBOX")
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(listed[1].size, shared.len() as u64);

    // What an IMAP session asks for instead of the whole list: messages
    // changed after a MODSEQ or in a UID range, with count and
    // HIGHEST_MODSEQ of the same snapshot.
    let everything = store
        .list_changes("alice@example.com", "INBOX", 0, None)
        .await
        .unwrap();
    assert_eq!(everything.messages, listed);
    assert_eq!(everything.exists, 2);
    let status = store
        .select_mailbox("alice@example.com", "INBOX")
        .await
        .unwrap();
    assert_eq!(everything.highest_modseq, status.highest_modseq);
    let since = everything.highest_modseq;
    let nothing = store
        .list_changes("alice@example.com", "INBOX", since, None)
        .await
        .unwrap();
    assert!(nothing.messages.is_empty());
    assert_eq!((nothing.exists, nothing.highest_modseq), (2, since));
    let second = store
        .list_changes("alice@example.com", "INBOX", u64::MAX, Some((2, 9)))
        .await
        .unwrap();
    assert_eq!(second.messages, listed[1..]);

    // Nothing flagged \Deleted: nothing expunged.
    let none = store
        .expunge("alice@example.com", "INBOX", &[])
        .await
        .unwrap();
    assert!(none.uids.is_empty());
    store
        .store_flags(
            "alice@example.com",
            "INBOX",
            2,
            FlagMode::Add,
            &flags(&["\\Deleted"]),
        )
        .await
        .unwrap();
    // A UID list restricts the expunge (UID EXPUNGE).
    assert!(
        store
            .expunge("alice@example.com", "INBOX", &[1])
            .await
            .unwrap()
            .uids
            .is_empty()
    );
    let gone = store
        .expunge("alice@example.com", "INBOX", &[])
        .await
        .unwrap();
    assert_eq!(gone.uids, [2]);
    assert!(gone.modseq > 0);
    // A flag change and an expunge since `since`: the changed message is
    // listed, the expunged one shows only in the count.
    let changed = store
        .list_changes("alice@example.com", "INBOX", since, None)
        .await
        .unwrap();
    assert!(
        changed.messages.is_empty(),
        "UID 2 is gone, UID 1 unchanged"
    );
    assert_eq!(changed.exists, 1);
    assert_eq!(changed.highest_modseq, gone.modseq);
    assert!(
        blobs.get(&shared_id).await.is_ok(),
        "bob still refers to the blob"
    );
    store
        .store_flags(
            "bob@example.com",
            "INBOX",
            1,
            FlagMode::Add,
            &flags(&["\\Deleted"]),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .expunge("bob@example.com", "INBOX", &[1])
            .await
            .unwrap()
            .uids,
        [1]
    );
    assert!(
        blobs.get(&shared_id).await.is_err(),
        "last reference gone, blob stays"
    );
    // UIDs are never reused after an expunge.
    let a3 = store
        .deliver(deliver(
            "alice@example.com",
            "INBOX",
            b"third\r\n",
            "q6/alice@example.com",
        ))
        .await
        .unwrap();
    assert_eq!(a3.uid, 3);
    // A redelivery after the expunge is still a duplicate.
    let redelivered = store
        .deliver(deliver(
            "bob@example.com",
            "INBOX",
            shared,
            "q5/bob@example.com",
        ))
        .await
        .unwrap();
    assert!(redelivered.duplicate);

    // Deleting a user takes its messages and their blobs.
    let carol = store
        .deliver(deliver(
            "carol@second.test",
            "",
            b"for carol\r\n",
            "q7/carol@second.test",
        ))
        .await
        .unwrap();
    assert!(!carol.duplicate);
    store.delete_user("carol@second.test").await.unwrap();
    assert!(blobs.get(&sha256_hex(b"for carol\r\n")).await.is_err());
    assert!(matches!(
        store.delete_user("carol@second.test").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.lookup_recipient("carol@second.test").await.unwrap(),
        Lookup::UnknownUser
    );
    assert_eq!(
        store.list_users().await.unwrap(),
        vec!["alice@example.com", "bob@example.com"]
    );

    folders_contract(store, &blobs).await;
    directory_contract(store).await;
    dkim_contract(store).await;
}

/// CREATE / DELETE / RENAME / SUBSCRIBE, APPEND dates, COPY and MOVE with
/// UIDs, and quota.
async fn folders_contract(store: &Store, blobs: &DirBlobs) {
    const ALICE: &str = "alice@example.com";
    let names = |list: Vec<mailfleet_proto::mailstore::MailboxInfo>| {
        list.into_iter().map(|m| m.name).collect::<Vec<_>>()
    };
    // CREATE makes missing parents; existing names and bad names are refused.
    store
        .create_mailbox(ALICE, "Projects/2026/Q1")
        .await
        .unwrap();
    let listed = names(store.list_mailboxes(ALICE).await.unwrap());
    for name in ["Projects", "Projects/2026", "Projects/2026/Q1"] {
        assert!(listed.contains(&name.to_owned()), "{listed:?}");
    }
    assert!(matches!(
        store.create_mailbox(ALICE, "Projects").await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_mailbox(ALICE, "inbox").await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_mailbox(ALICE, "a//b").await,
        Err(StoreError::Invalid(_))
    ));

    // SUBSCRIBE state is listed.
    store
        .set_subscribed(ALICE, "Projects", false)
        .await
        .unwrap();
    let listed = store.list_mailboxes(ALICE).await.unwrap();
    let projects = listed.iter().find(|m| m.name == "Projects").unwrap();
    assert!(!projects.subscribed);
    assert!(
        listed
            .iter()
            .find(|m| m.name == "INBOX")
            .unwrap()
            .subscribed
    );

    // APPEND with a date and flags.
    let appended = store
        .deliver(NewMessage {
            account: ALICE,
            mailbox: "Projects/2026/Q1",
            message: b"Subject: plan\r\n\r\nplan\r\n",
            idempotency_key: "",
            flags: &flags(&["\\Seen"]),
            internal_date_ms: 1_700_000_000_000,
        })
        .await
        .unwrap();
    assert_eq!(appended.uid, 1);
    let status = store
        .select_mailbox(ALICE, "Projects/2026/Q1")
        .await
        .unwrap();
    assert_eq!(appended.uid_validity, status.uid_validity);
    let listed = store
        .list_messages(ALICE, "Projects/2026/Q1")
        .await
        .unwrap();
    assert_eq!(listed[0].internal_date_ms, 1_700_000_000_000);
    // The search header is parsed once, at delivery.
    let with = store
        .list_messages_with(ALICE, "Projects/2026/Q1", true)
        .await
        .unwrap();
    assert_eq!(with[0].search_header, "subject: plan\n");
    assert_eq!(listed[0].search_header, "", "only when asked for");
    assert_eq!(listed[0].flags, ["\\Seen"]);

    // RENAME takes the children along.
    store
        .rename_mailbox(ALICE, "Projects", "Work")
        .await
        .unwrap();
    let listed = names(store.list_mailboxes(ALICE).await.unwrap());
    assert!(listed.contains(&"Work/2026/Q1".to_owned()), "{listed:?}");
    assert!(
        !listed.iter().any(|n| n.starts_with("Projects")),
        "{listed:?}"
    );
    assert_eq!(
        store
            .list_messages(ALICE, "Work/2026/Q1")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(matches!(
        store.rename_mailbox(ALICE, "Work", "Sent").await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.rename_mailbox(ALICE, "Nope", "Other").await,
        Err(StoreError::NotFound(_))
    ));

    // COPY gives consecutive new UIDs in the target; the blob is shared.
    let inbox_uids: Vec<u32> = store
        .list_messages(ALICE, "INBOX")
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert!(!inbox_uids.is_empty());
    let copied = store
        .copy_messages(ALICE, "INBOX", "Work", &[inbox_uids[0], 999], false)
        .await
        .unwrap();
    let work = store.select_mailbox(ALICE, "Work").await.unwrap();
    assert_eq!(copied.uid_validity, work.uid_validity);
    assert_eq!(copied.pairs, [(inbox_uids[0], 1)]);
    assert_eq!(work.exists, 1);
    assert_eq!(
        store.list_messages(ALICE, "INBOX").await.unwrap().len(),
        inbox_uids.len()
    );

    // MOVE removes the source in the same transaction.
    let moved = store
        .copy_messages(ALICE, "Work", "Archive", &[1], true)
        .await
        .unwrap();
    assert_eq!(moved.pairs, [(1, 1)]);
    assert!(moved.source_modseq > 0);
    assert!(store.list_messages(ALICE, "Work").await.unwrap().is_empty());
    let archived = store.list_messages(ALICE, "Archive").await.unwrap();
    assert_eq!(archived.len(), 1);
    // COPY and MOVE carry it along.
    let moved_with = store
        .list_messages_with(ALICE, "Archive", true)
        .await
        .unwrap();
    let original = store
        .list_messages_with(ALICE, "INBOX", true)
        .await
        .unwrap();
    assert_eq!(moved_with[0].search_header, original[0].search_header);

    // DELETE removes the messages but keeps blobs others refer to; INBOX stays.
    let body = store.fetch_body(ALICE, "Archive", 1).await.unwrap();
    store.delete_mailbox(ALICE, "Archive").await.unwrap();
    assert!(
        blobs.get(&sha256_hex(&body)).await.is_ok(),
        "INBOX still has it"
    );
    assert!(matches!(
        store.delete_mailbox(ALICE, "INBOX").await,
        Err(StoreError::FailedPrecondition(_))
    ));
    // Created again: a new UIDVALIDITY.
    store.create_mailbox(ALICE, "Archive").await.unwrap();
    let again = store.select_mailbox(ALICE, "Archive").await.unwrap();
    assert!(again.uid_validity > work.uid_validity || again.uid_validity != moved.uid_validity);
    assert_eq!(again.uid_next, 1);

    // Quota: usage is the sum of sizes; delivery and copy are refused over it.
    let usage = store.quota(ALICE).await.unwrap();
    assert_eq!(usage.limit_bytes, 0);
    assert!(usage.used_bytes > 0);
    store.set_quota(ALICE, usage.used_bytes + 10).await.unwrap();
    assert!(matches!(
        store
            .deliver(deliver(ALICE, "INBOX", &[b'x'; 11], "q-over/alice"))
            .await,
        Err(StoreError::OverQuota(_))
    ));
    // The refused delivery may be retried once there is room: key not kept.
    store.set_quota(ALICE, 0).await.unwrap();
    assert!(
        !store
            .deliver(deliver(ALICE, "INBOX", &[b'x'; 11], "q-over/alice"))
            .await
            .unwrap()
            .duplicate
    );
    store.set_quota(ALICE, 1).await.unwrap();
    assert!(matches!(
        store
            .copy_messages(ALICE, "INBOX", "Work", &inbox_uids, false)
            .await,
        Err(StoreError::OverQuota(_))
    ));
    // A move does not grow usage, so it is allowed over quota.
    store
        .copy_messages(ALICE, "INBOX", "Work", &[inbox_uids[0]], true)
        .await
        .unwrap();
    store.set_quota(ALICE, 0).await.unwrap();
}

/// Aliases and catch-all addresses in LookupRecipient.
async fn directory_contract(store: &Store) {
    store
        .put_alias(
            "Team@Example.com",
            &flags(&["alice@example.com", "bob@example.com"]),
        )
        .await
        .unwrap();
    store
        .put_alias("postmaster@example.com", &flags(&["alice@example.com"]))
        .await
        .unwrap();
    assert_eq!(
        store.lookup_recipient("team@example.com").await.unwrap(),
        Lookup::Alias {
            accounts: flags(&["alice@example.com", "bob@example.com"])
        }
    );
    assert_eq!(
        store
            .lookup_recipient("Postmaster@example.com")
            .await
            .unwrap(),
        Lookup::Local {
            account: "alice@example.com".into()
        }
    );
    assert_eq!(
        store.list_aliases().await.unwrap(),
        vec![
            (
                "postmaster@example.com".to_owned(),
                flags(&["alice@example.com"])
            ),
            (
                "team@example.com".to_owned(),
                flags(&["alice@example.com", "bob@example.com"])
            ),
        ]
    );
    // An alias cannot shadow an account, point at nobody, or live elsewhere.
    assert!(matches!(
        store
            .put_alias("bob@example.com", &flags(&["alice@example.com"]))
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .put_alias("x@example.com", &flags(&["ghost@example.com"]))
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store
            .put_alias("x@elsewhere.net", &flags(&["alice@example.com"]))
            .await,
        Err(StoreError::FailedPrecondition(_))
    ));
    store.delete_alias("postmaster@example.com").await.unwrap();
    assert!(matches!(
        store.delete_alias("postmaster@example.com").await,
        Err(StoreError::NotFound(_))
    ));

    // Catch-all: unknown local parts of the domain go to one account.
    assert_eq!(
        store.lookup_recipient("random@example.com").await.unwrap(),
        Lookup::UnknownUser
    );
    store
        .set_catch_all("example.com", "bob@example.com")
        .await
        .unwrap();
    assert_eq!(
        store.lookup_recipient("random@example.com").await.unwrap(),
        Lookup::Local {
            account: "bob@example.com".into()
        }
    );
    // Accounts and aliases win over the catch-all.
    assert_eq!(
        store.lookup_recipient("alice@example.com").await.unwrap(),
        Lookup::Local {
            account: "alice@example.com".into()
        }
    );
    store.set_catch_all("example.com", "").await.unwrap();
    assert_eq!(
        store.lookup_recipient("random@example.com").await.unwrap(),
        Lookup::UnknownUser
    );
    assert!(matches!(
        store.set_catch_all("unknown.test", "bob@example.com").await,
        Err(StoreError::NotFound(_))
    ));
}

/// Two stores on one database ("replicas") deliver 50 messages each into
/// one mailbox at once: 100 distinct UIDs, 1..=100. Then both deliver the
/// same idempotency key at once: exactly one stores.
async fn concurrent_replicas(db: &TestDb) {
    let a = Arc::new(db.open().await);
    let b = Arc::new(db.open().await);
    a.add_domain("example.net").await.unwrap();
    a.add_user("dora@example.net", "pw").await.unwrap();

    let mut tasks = Vec::new();
    for (replica, store) in [("a", &a), ("b", &b)] {
        for i in 0..50 {
            let store = Arc::clone(store);
            tasks.push(tokio::spawn(async move {
                let body = format!("Subject: {replica}{i}\r\n\r\nbody\r\n");
                let key = format!("{replica}-{i}/dora@example.net");
                store
                    .deliver(deliver("dora@example.net", "INBOX", body.as_bytes(), &key))
                    .await
                    .map(|d| d.uid)
            }));
        }
    }
    let mut uids = BTreeSet::new();
    for task in tasks {
        let uid = task.await.unwrap().expect("deliver");
        assert!(uids.insert(uid), "uid {uid} allocated twice");
    }
    assert_eq!(uids, (1..=100).collect::<BTreeSet<u32>>());
    let status = a.select_mailbox("dora@example.net", "INBOX").await.unwrap();
    assert_eq!((status.exists, status.uid_next), (100, 101));

    let same = |store: Arc<Store>| async move {
        store
            .deliver(deliver(
                "dora@example.net",
                "INBOX",
                b"race\r\n",
                "race/dora@example.net",
            ))
            .await
            .unwrap()
    };
    let (x, y) = tokio::join!(same(Arc::clone(&a)), same(Arc::clone(&b)));
    assert_eq!(x.uid, y.uid);
    assert!(
        x.duplicate != y.duplicate,
        "exactly one stores: {x:?} {y:?}"
    );
    assert_eq!(
        a.select_mailbox("dora@example.net", "INBOX")
            .await
            .unwrap()
            .exists,
        101
    );
    a.close().await;
    b.close().await;
}

/// DKIM keys: put, replace, the newest one per domain for signing,
/// listings without private keys, only for our domains.
async fn dkim_contract(store: &Store) {
    use mailfleet_mailstore::store::DkimKeyRecord;
    let key = |selector: &str, algorithm: &str| DkimKeyRecord {
        domain: "Example.com".into(),
        selector: selector.into(),
        algorithm: algorithm.into(),
        private_key_pem: format!("PEM {selector}"),
        public_key: format!("PUB {selector}"),
        created_at_ms: 0,
    };
    assert_eq!(store.dkim_key("example.com").await.unwrap(), None);
    store.put_dkim_key(&key("s1", "rsa-sha256")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .put_dkim_key(&key("s2", "ed25519-sha256"))
        .await
        .unwrap();
    let newest = store.dkim_key("EXAMPLE.com").await.unwrap().unwrap();
    assert_eq!(newest.selector, "s2");
    assert_eq!(newest.domain, "example.com");
    assert_eq!(newest.private_key_pem, "PEM s2");
    // Replacing s1 makes it the newest.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .put_dkim_key(&key("s1", "ed25519-sha256"))
        .await
        .unwrap();
    let newest = store.dkim_key("example.com").await.unwrap().unwrap();
    assert_eq!(
        (newest.selector.as_str(), newest.algorithm.as_str()),
        ("s1", "ed25519-sha256")
    );
    let listed = store.list_dkim_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.private_key_pem.is_empty()));
    // Not our domain, bad algorithm, bad selector.
    let mut foreign = key("s1", "rsa-sha256");
    foreign.domain = "elsewhere.test".into();
    assert!(store.put_dkim_key(&foreign).await.is_err());
    assert!(store.put_dkim_key(&key("s3", "rsa-sha1")).await.is_err());
    assert!(
        store
            .put_dkim_key(&key("bad selector", "rsa-sha256"))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_contract() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    contract(&store, &db.blob_dir).await;
    store.close().await;
    // Reopening applies no migration twice.
    db.open().await.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_replicas() {
    let db = TestDb::sqlite();
    concurrent_replicas(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_contract() {
    let db = TestDb::postgres().await;
    let store = db.open().await;
    contract(&store, &db.blob_dir).await;
    store.close().await;
    db.open().await.close().await;
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_replicas() {
    let db = TestDb::postgres().await;
    concurrent_replicas(&db).await;
    db.drop_database().await;
}

/// The real directory store, with one interleaving on demand: when armed,
/// the next put is followed by a deletion of the blob, as a concurrent
/// release that ran between a delivery's put and its upsert would do.
struct DeletedAfterPut {
    inner: DirBlobs,
    armed: AtomicBool,
}

#[async_trait::async_trait]
impl BlobStore for DeletedAfterPut {
    async fn put(&self, data: &[u8]) -> backend::Result<String> {
        let id = self.inner.put(data).await?;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.inner.delete(&id).await?;
        }
        Ok(id)
    }
    async fn get(&self, id: &str) -> backend::Result<Vec<u8>> {
        self.inner.get(id).await
    }
    async fn delete(&self, id: &str) -> backend::Result<()> {
        self.inner.delete(id).await
    }
    async fn exists(&self, id: &str) -> backend::Result<bool> {
        self.inner.exists(id).await
    }
}

/// Flags UID `uid` of alice's INBOX `\Deleted` and expunges it, stopping
/// after the commit: the blobs released are returned, files still there.
async fn expunge_before_file_deletion(store: &Store, uid: u32) -> Vec<String> {
    store
        .store_flags(
            "alice@example.com",
            "INBOX",
            uid,
            FlagMode::Add,
            &flags(&["\\Deleted"]),
        )
        .await
        .unwrap();
    let (expunged, released) = store
        .expunge_releasing("alice@example.com", "INBOX", &[uid])
        .await
        .unwrap();
    assert_eq!(expunged.uids, [uid]);
    released
}

/// The release of a blob's last reference racing a delivery of the same
/// bytes: the file must outlive the release when the delivery wins, and
/// still go when nothing refers to it any more.
async fn blob_release_race(db: &TestDb) {
    let blobs = Arc::new(DeletedAfterPut {
        inner: DirBlobs::open(&db.blob_dir).unwrap(),
        armed: AtomicBool::new(false),
    });
    let store = Store::open(&db.url, blobs.clone()).await.unwrap();
    store.add_domain("example.com").await.unwrap();
    store.add_user("alice@example.com", "pw").await.unwrap();
    let content: &[u8] = b"Subject: same bytes\r\n\r\nidentical body\r\n";
    let id = sha256_hex(content);

    // (a) Expunge of the last copy commits; the same bytes are delivered
    // again before the expunge deletes the file; then it tries to.
    let first = store
        .deliver(deliver("alice@example.com", "INBOX", content, "race/1"))
        .await
        .unwrap();
    let released = expunge_before_file_deletion(&store, first.uid).await;
    assert_eq!(released, [id.as_str()]);
    let second = store
        .deliver(deliver("alice@example.com", "INBOX", content, "race/2"))
        .await
        .unwrap();
    assert!(!second.duplicate);
    assert!(
        !store.delete_released_blob(&id).await.unwrap(),
        "a blob referenced again must not be deleted"
    );
    assert_eq!(
        store
            .fetch_body("alice@example.com", "INBOX", second.uid)
            .await
            .unwrap(),
        content,
        "the message delivered during the release lost its blob"
    );

    // (b) Expunging the last copy, in one call, still deletes the file.
    store
        .store_flags(
            "alice@example.com",
            "INBOX",
            second.uid,
            FlagMode::Add,
            &flags(&["\\Deleted"]),
        )
        .await
        .unwrap();
    store
        .expunge("alice@example.com", "INBOX", &[second.uid])
        .await
        .unwrap();
    assert!(!blobs.inner.exists(&id).await.unwrap(), "blob left behind");

    // (c) A row left at refcount 0 (a crash after the release's commit),
    // and a concurrent deleter that removes the file between the
    // delivery's put and its upsert: the delivery puts the file back.
    let third = store
        .deliver(deliver("alice@example.com", "INBOX", content, "race/3"))
        .await
        .unwrap();
    assert_eq!(
        expunge_before_file_deletion(&store, third.uid).await,
        [id.as_str()]
    );
    blobs.armed.store(true, Ordering::SeqCst);
    let fourth = store
        .deliver(deliver("alice@example.com", "INBOX", content, "race/4"))
        .await
        .unwrap();
    assert!(
        !blobs.armed.load(Ordering::SeqCst),
        "the put was not reached"
    );
    assert_eq!(
        store
            .fetch_body("alice@example.com", "INBOX", fourth.uid)
            .await
            .unwrap(),
        content,
        "a revived reference must have its blob"
    );
    // The sweep leaves it alone: it is referenced.
    assert_eq!(store.sweep_released_blobs(100).await.unwrap(), 0);
    assert!(blobs.inner.exists(&id).await.unwrap());

    // A crash between a release's commit and the file deletion leaves a
    // row at 0 and the file: the sweep deletes both.
    expunge_before_file_deletion(&store, fourth.uid).await;
    assert!(blobs.inner.exists(&id).await.unwrap());
    assert_eq!(store.sweep_released_blobs(100).await.unwrap(), 1);
    assert!(
        !blobs.inner.exists(&id).await.unwrap(),
        "sweep left the blob"
    );
    assert_eq!(store.sweep_released_blobs(100).await.unwrap(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_blob_release_race() {
    blob_release_race(&TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blob_release_race() {
    let db = TestDb::postgres().await;
    blob_release_race(&db).await;
    db.drop_database().await;
}

#[test]
fn database_name_is_replaced() {
    assert_eq!(
        with_database("postgres://u@h:1/postgres", "t_x"),
        "postgres://u@h:1/t_x"
    );
    assert_eq!(
        with_database("postgres://u@h:1/postgres?sslmode=disable", "t_x"),
        "postgres://u@h:1/t_x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "t_x"), "postgres://h/t_x");
}
