//! ENVELOPE, BODYSTRUCTURE and BODY are rendered once at delivery and kept
//! with the message (migration 0006), on SQLite and PostgreSQL alike: what
//! the store returns is byte for byte what rendering the message gives, a
//! COPY carries it, and a message stored before the migration (empty
//! columns) reports `None` so that access renders it from the blob.
//!
//! The PostgreSQL test needs `MAILFLEET_TEST_POSTGRES_URL` and fails, not
//! skips, without it.

use std::sync::Arc;

use mailfleet_mailstore::store::{NewMessage, Store};
use mailfleet_runtime::backend::DirBlobs;
use mailfleet_runtime::imap_mime::{self, Rendered};
use sqlx::{AnyConnection, Connection};

const POSTGRES_ENV: &str = "MAILFLEET_TEST_POSTGRES_URL";
const ACCOUNT: &str = "ada@structure.test";

/// A multipart with a non-ASCII subject, an attachment and a forwarded
/// message: every branch of the BODYSTRUCTURE grammar.
const MESSAGE: &[u8] = b"From: Bob <bob@remote.test>\r\n\
To: ada@structure.test, \"Eve\" <eve@remote.test>\r\n\
Subject: =?UTF-8?Q?r=C3=A9sum=C3=A9?=\r\n\
Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
Message-ID: <structure@remote.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n\
--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nthere\r\n\
--XX\r\nContent-Type: application/pdf; name=\"cv.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"cv.pdf\"\r\n\r\n\
JVBERi0=\r\n\
--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@remote.test\r\nSubject: inner\r\n\r\nbody\r\n\
--XX--\r\n";

async fn suite(url: &str, blob_dir: &std::path::Path) {
    let store = Store::open(url, Arc::new(DirBlobs::open(blob_dir).unwrap()))
        .await
        .unwrap();
    store.add_domain("structure.test").await.unwrap();
    store.add_user(ACCOUNT, "pw").await.unwrap();
    let delivered = store
        .deliver(NewMessage {
            account: ACCOUNT,
            mailbox: "",
            message: MESSAGE,
            idempotency_key: "q1/ada",
            flags: &[],
            internal_date_ms: 0,
        })
        .await
        .unwrap();

    // What FETCH would have computed from the blob, stored once.
    let expected = Rendered::of(MESSAGE).unwrap();
    let stored = store
        .fetch_structure(ACCOUNT, "INBOX", delivered.uid)
        .await
        .unwrap()
        .expect("rendered at delivery");
    assert_eq!(stored, expected);
    let structure = imap_mime::parse(MESSAGE);
    assert_eq!(
        stored.body_structure.as_bytes(),
        imap_mime::body_structure(MESSAGE, &structure, true)
    );
    assert!(
        stored
            .envelope
            .starts_with("(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"=?UTF-8?Q?r=C3=A9sum=C3=A9?=\""),
        "{}",
        stored.envelope
    );
    assert!(
        stored.body_structure.contains(
            "(\"APPLICATION\" \"PDF\" (\"NAME\" \"cv.pdf\") NIL NIL \"BASE64\" 8 NIL \
             (\"ATTACHMENT\" (\"FILENAME\" \"cv.pdf\")) NIL NIL)"
        ),
        "{}",
        stored.body_structure
    );
    assert!(stored.body.ends_with(" \"MIXED\")"), "{}", stored.body);

    // A copy carries the renderings.
    let copied = store
        .copy_messages(ACCOUNT, "INBOX", "Archive", &[delivered.uid], false)
        .await
        .unwrap();
    let (_, archived_uid) = copied.pairs[0];
    assert_eq!(
        store
            .fetch_structure(ACCOUNT, "Archive", archived_uid)
            .await
            .unwrap(),
        Some(expected)
    );

    // A message from before migration 0006 has empty columns: None, so
    // the caller renders it from the blob.
    let mut conn = AnyConnection::connect(url).await.unwrap();
    sqlx::query("UPDATE messages SET envelope = '', body_structure = '', body_simple = ''")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    assert_eq!(
        store
            .fetch_structure(ACCOUNT, "INBOX", delivered.uid)
            .await
            .unwrap(),
        None
    );
    // An unknown UID is NotFound, as for FetchBody.
    assert!(store.fetch_structure(ACCOUNT, "INBOX", 999).await.is_err());
    store.close().await;
}

#[tokio::test]
async fn sqlite_stores_imap_structure() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    suite(&url, &dir.path().join("blobs")).await;
}

#[tokio::test]
async fn postgres_stores_imap_structure() {
    let admin_url = std::env::var(POSTGRES_ENV)
        .unwrap_or_else(|_| panic!("{POSTGRES_ENV} is not set: this test needs PostgreSQL"));
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = AnyConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').map_or(&*admin_url, |(b, _)| b);
    let dir = tempfile::tempdir().unwrap();
    suite(&format!("{base}/{name}"), &dir.path().join("blobs")).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .ok();
}
