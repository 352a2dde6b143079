//! The message history contract (`mailfleet trace`), run against SQLite and
//! PostgreSQL (`MAILFLEET_TEST_POSTGRES_URL`, a fresh database per run; the
//! PostgreSQL test fails, not skips, when it is unset).

use std::sync::Arc;

use mailfleet_mailstore::store::{self, HistoryRecord, Store, StoreError};
use mailfleet_runtime::backend::DirBlobs;
use sqlx::{AnyConnection, Connection};

const POSTGRES_ENV: &str = "MAILFLEET_TEST_POSTGRES_URL";

fn event(queue_id: &str, message_id: &str, at_ms: i64, stage: &str) -> HistoryRecord {
    HistoryRecord {
        queue_id: queue_id.into(),
        message_id: message_id.into(),
        at_ms,
        stage: stage.into(),
        ..HistoryRecord::default()
    }
}

fn stages(events: &[HistoryRecord]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (e.queue_id.clone(), e.stage.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(q, s)| (q.to_string(), s.to_string()))
        .collect()
}

async fn contract(store: &Store) {
    // Nothing yet.
    assert!(store.history("q1").await.unwrap().is_empty());

    // One message, two queue ids (the same Message-ID sent twice), stored
    // out of order: read back by time, same-millisecond events in the
    // order they were stored.
    let mut delivered = event("q1", "<m1@example.test>", 3_000, "delivered");
    delivered.recipient = "carol@remote.test".into();
    delivered.remote = "mx.remote.test [127.0.0.2]".into();
    delivered.reply = "250 2.0.0 ok".into();
    delivered.detail = "tls-verified".into();
    store.record_history(&delivered).await.unwrap();
    store
        .record_history(&event("q1", "<m1@example.test>", 1_000, "received"))
        .await
        .unwrap();
    store
        .record_history(&event("q1", "<m1@example.test>", 1_000, "verdict"))
        .await
        .unwrap();
    store
        .record_history(&event("q2", "m1@example.test", 2_000, "received"))
        .await
        .unwrap();
    store
        .record_history(&event("q3", "<other@example.test>", 1_500, "received"))
        .await
        .unwrap();

    let by_queue = store.history("q1").await.unwrap();
    assert_eq!(
        stages(&by_queue),
        pairs(&[("q1", "received"), ("q1", "verdict"), ("q1", "delivered")])
    );
    assert_eq!(by_queue[2], delivered, "every field round-trips");

    let expected = pairs(&[
        ("q1", "received"),
        ("q1", "verdict"),
        ("q2", "received"),
        ("q1", "delivered"),
    ]);
    for id in [
        "<m1@example.test>",
        "m1@example.test",
        " <m1@example.test> ",
    ] {
        let by_message_id = store.history(id).await.unwrap();
        assert_eq!(stages(&by_message_id), expected, "{id:?}");
        // Stored with angle brackets however it was given.
        assert!(
            by_message_id
                .iter()
                .all(|e| e.message_id == "<m1@example.test>")
        );
    }
    assert!(
        store
            .history("unknown@example.test")
            .await
            .unwrap()
            .is_empty()
    );

    // Bad input is refused, never stored.
    for bad in [event("", "", 1, "received"), event("q9", "", 1, "exploded")] {
        assert!(matches!(
            store.record_history(&bad).await,
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(matches!(
        store.history("  ").await,
        Err(StoreError::Invalid(_))
    ));
    // A huge reply is cut, not refused.
    let mut huge = event("q4", "", 5_000, "bounced");
    huge.reply = "550 ".to_owned() + &"x".repeat(100_000);
    store.record_history(&huge).await.unwrap();
    let [stored] = &store.history("q4").await.unwrap()[..] else {
        panic!("one event expected");
    };
    assert!(stored.reply.starts_with("550 x") && stored.reply.len() < 10_000);

    // Retention: events before the cut-off go, the rest stay.
    assert_eq!(store.prune_history(1_600).await.unwrap(), 3);
    assert_eq!(
        stages(&store.history("<m1@example.test>").await.unwrap()),
        pairs(&[("q2", "received"), ("q1", "delivered")])
    );
    assert!(store.history("q3").await.unwrap().is_empty());
    assert_eq!(store.prune_history(1_600).await.unwrap(), 0);
}

async fn open(url: &str, dir: &std::path::Path) -> Store {
    let blobs = Arc::new(DirBlobs::open(&dir.join("blobs")).expect("blob dir"));
    Store::open(url, blobs)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&store::database_url("", dir.path()), dir.path()).await;
    contract(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history() {
    let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_ENV} is not set: the history contract must run against PostgreSQL too \
             (e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:15432/postgres)"
        )
    });
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = AnyConnection::connect(&admin_url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (base, query) = admin_url
        .split_once('?')
        .map(|(b, q)| (b, format!("?{q}")))
        .unwrap_or((&admin_url, String::new()));
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    let url = format!("{base}/{name}{query}");

    let dir = tempfile::tempdir().unwrap();
    let store = open(&url, dir.path()).await;
    contract(&store).await;
    store.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop test database");
}
