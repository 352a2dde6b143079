//! One contract suite per backend concern, run against both implementations,
//! so that single node and cluster behave the same (DESIGN.md, "Two ways to
//! run, one code path").
//!
//! The cluster implementations need real servers:
//! `MAILFLEET_TEST_NATS_URL` (NATS with JetStream),
//! `MAILFLEET_TEST_REDIS_URL` and `MAILFLEET_TEST_S3_URL` (S3-compatible,
//! e.g. moto_server). A missing variable fails the test: a suite
//! that silently skips proves nothing. Every test uses names of its own
//! (uuid), so parallel runs against one server do not collide.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use mailfleet_proto::queue::{MailboxEvent, QueueEntry, Recipient, mailbox_event};
use mailfleet_runtime::backend::{
    BackendError, BlobStore, Counters, DirBlobs, Events, JetStreamOptions, JetStreamQueue,
    LocalEvents, MemoryCounters, NOT_BEFORE_HEADER, NatsEvents, ObjectStoreBlobs, Queue,
    RedisCounters, S3Location, SqliteQueue,
};
use object_store::ObjectStore as _;
use object_store::aws::AmazonS3Builder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::{Instant, timeout};

/// Short, so lease expiry is testable; JetStream gets it as the ack wait.
const LEASE: Duration = Duration::from_secs(1);
/// Timers of the servers are not exact; bounds allow this much early.
const SLACK: Duration = Duration::from_millis(150);

fn nats_url() -> String {
    std::env::var("MAILFLEET_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "MAILFLEET_TEST_NATS_URL is not set: the cluster contract tests need a NATS \
             server with JetStream, e.g. MAILFLEET_TEST_NATS_URL=nats://127.0.0.1:4222"
        )
    })
}

fn redis_url() -> String {
    std::env::var("MAILFLEET_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "MAILFLEET_TEST_REDIS_URL is not set: the cluster contract tests need a Redis \
             server, e.g. MAILFLEET_TEST_REDIS_URL=redis://127.0.0.1:6379"
        )
    })
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn entry(tag: &str) -> QueueEntry {
    QueueEntry {
        id: uuid::Uuid::now_v7().to_string(),
        mail_from: format!("{tag}@sender.example"),
        recipients: vec![Recipient {
            address: "rcpt@example.org".into(),
            account: "rcpt@example.org".into(),
            ..Default::default()
        }],
        blob: "ab".repeat(32),
        size: 42,
        received_at_ms: 1_700_000_000_000,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        ..Default::default()
    }
}

async fn take(queue: &dyn Queue, wait: Duration) -> Option<mailfleet_runtime::backend::Leased> {
    queue.take(wait, LEASE).await.expect("take")
}

// ---------------------------------------------------------------- queue

async fn queue_contract(queue: Arc<dyn Queue>) {
    let q = queue.as_ref();

    // Empty: take waits the whole `wait`, then gives nothing.
    assert_eq!(q.depth().await.unwrap(), 0);
    let started = Instant::now();
    assert!(take(q, Duration::from_millis(400)).await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(400) - SLACK);

    // Enqueue, take, ack.
    let first = entry("first");
    q.enqueue(&first).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 1);
    let leased = take(q, Duration::from_secs(2)).await.expect("entry due");
    assert_eq!(leased.entry, first);
    // Leased: nobody else gets it.
    assert!(take(q, Duration::from_millis(300)).await.is_none());
    q.ack(leased).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(take(q, Duration::from_millis(300)).await.is_none());

    // A waiting taker gets an entry enqueued while it waits.
    let late = entry("late");
    let (taken, ()) = tokio::join!(take(q, Duration::from_secs(3)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        q.enqueue(&late).await.unwrap();
    });
    let taken = taken.expect("entry enqueued during the wait");
    assert_eq!(taken.entry, late);
    q.ack(taken).await.unwrap();

    // Order: oldest first.
    let (a, b) = (entry("a"), entry("b"));
    q.enqueue(&a).await.unwrap();
    q.enqueue(&b).await.unwrap();
    let la = take(q, Duration::from_secs(2)).await.unwrap();
    let lb = take(q, Duration::from_secs(2)).await.unwrap();
    assert_eq!((&la.entry, &lb.entry), (&a, &b));
    q.ack(la).await.unwrap();
    q.ack(lb).await.unwrap();

    // Two concurrent takers, one entry: exactly one gets it.
    let single = entry("single");
    q.enqueue(&single).await.unwrap();
    let (x, y) = tokio::join!(
        take(q, Duration::from_millis(800)),
        take(q, Duration::from_millis(800))
    );
    let winner = match (x, y) {
        (Some(l), None) | (None, Some(l)) => l,
        (x, y) => panic!(
            "one entry given to {} takers",
            usize::from(x.is_some()) + usize::from(y.is_some())
        ),
    };
    assert_eq!(winner.entry, single);
    q.ack(winner).await.unwrap();

    // A lease that runs out gives the entry back.
    let orphan = entry("orphan");
    q.enqueue(&orphan).await.unwrap();
    let leased_at = Instant::now();
    let abandoned = take(q, Duration::from_secs(2)).await.unwrap();
    assert_eq!(abandoned.entry, orphan);
    let again = take(q, LEASE * 5)
        .await
        .expect("entry back after its lease");
    assert!(
        leased_at.elapsed() >= LEASE - SLACK,
        "given back before the lease ran out"
    );
    assert_eq!(again.entry, orphan);
    drop(abandoned);
    q.ack(again).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);

    // Retry with a delay: the updated entry, and not before the delay.
    let original = entry("retried");
    q.enqueue(&original).await.unwrap();
    let leased = take(q, Duration::from_secs(2)).await.unwrap();
    let mut updated = original.clone();
    updated.attempts = 1;
    updated.recipients[0].last_error = "451 4.7.1 try later".into();
    let delay = Duration::from_millis(1500);
    let retried_at = Instant::now();
    q.retry(leased, &updated, delay).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 1);
    assert!(
        take(q, Duration::from_millis(500)).await.is_none(),
        "taken before its delay"
    );
    let due = take(q, Duration::from_secs(5))
        .await
        .expect("retried entry after its delay");
    assert!(
        retried_at.elapsed() >= delay - SLACK,
        "taken before its delay"
    );
    assert_eq!(due.entry, updated);

    // Retry without delay: due at once.
    let mut again = updated.clone();
    again.attempts = 2;
    q.retry(due, &again, Duration::ZERO).await.unwrap();
    let now = take(q, Duration::from_secs(2))
        .await
        .expect("retried without delay");
    assert_eq!(now.entry, again);
    q.ack(now).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// Queue administration (`mailfleet queue ...`): listing, reading,
/// changing and removing entries; an entry a worker holds is left alone.
async fn queue_admin_contract(queue: Arc<dyn Queue>) {
    let q = queue.as_ref();
    assert!(q.list().await.unwrap().is_empty());

    let (a, b) = (entry("a"), entry("b"));
    q.enqueue(&a).await.unwrap();
    q.enqueue(&b).await.unwrap();
    let listed = q.list().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|e| e.entry.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()], "oldest first");
    assert!(listed.iter().all(|e| !e.leased));
    assert!(
        listed.iter().all(|e| e.due_at_ms <= now_ms()),
        "due at once"
    );
    assert_eq!(q.get(&a.id).await.unwrap().unwrap().entry, a);
    assert!(q.get(&entry("unknown").id).await.unwrap().is_none());

    // A worker holds the first: no change, no removal.
    let held = take(q, Duration::from_secs(2)).await.unwrap();
    assert_eq!(held.entry, a);
    assert!(q.get(&a.id).await.unwrap().unwrap().leased);
    assert!(!q.get(&b.id).await.unwrap().unwrap().leased);
    assert!(!q.update(&a, 0).await.unwrap(), "changed under a worker");
    assert!(!q.remove(&a.id).await.unwrap(), "removed under a worker");
    assert_eq!(q.get(&a.id).await.unwrap().unwrap().entry, a);
    // Its worker writes it back for later (well within the 1 s lease):
    // free again, and not due.
    let mut retried = a.clone();
    retried.attempts = 1;
    q.retry(held, &retried, Duration::from_secs(60))
        .await
        .unwrap();

    // The other one: a new state, due in an hour, replaces the old.
    let mut changed = b.clone();
    changed.attempts = 7;
    changed.recipients[0].last_error = "451 4.7.1 later".into();
    let later = now_ms() + 3_600_000;
    assert!(q.update(&changed, later).await.unwrap());
    let got = q.get(&b.id).await.unwrap().unwrap();
    assert_eq!(
        (&got.entry, got.due_at_ms, got.leased),
        (&changed, later, false)
    );
    assert_eq!(q.list().await.unwrap().len(), 2, "one copy per entry");
    assert_eq!(q.depth().await.unwrap(), 2);
    assert!(
        take(q, Duration::from_millis(500)).await.is_none(),
        "taken before its new due time"
    );
    // Seen (and handed back) by a taker, still not held by anyone.
    let got = q.get(&b.id).await.unwrap().unwrap();
    assert!(!got.leased, "a deferred entry counted as held");

    // Retry now: due at once, and taken with its new state.
    let mut now_due = changed.clone();
    now_due.recipients[0].next_attempt_at_ms = 0;
    assert!(q.update(&now_due, now_ms()).await.unwrap());
    let taken = take(q, Duration::from_secs(3))
        .await
        .expect("due after the update");
    assert_eq!(taken.entry, now_due);
    q.ack(taken).await.unwrap();
    assert!(q.get(&b.id).await.unwrap().is_none());
    assert!(
        !q.update(&now_due, 0).await.unwrap(),
        "changed a gone entry"
    );

    // The one written back for later, seen (and handed back) by takers.
    let got = q.get(&a.id).await.unwrap().unwrap();
    assert_eq!(got.entry, retried);
    assert!(!got.leased);
    assert!(got.due_at_ms > now_ms() + 50_000);
    assert!(q.remove(&a.id).await.unwrap());
    assert!(q.get(&a.id).await.unwrap().is_none());
    assert!(!q.remove(&a.id).await.unwrap(), "removed twice");
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(take(q, Duration::from_millis(300)).await.is_none());
}

/// The queue gauges' figures: by status (due, deferred, leased) and by
/// destination domain with the oldest entry.
async fn queue_stats_contract(queue: Arc<dyn Queue>) {
    let q = queue.as_ref();
    let mut other = entry("c");
    other.recipients[0].address = "x@Other.Example.".into();
    other.received_at_ms = 1_600_000_000_000;
    for e in [entry("a"), entry("b"), other] {
        q.enqueue(&e).await.unwrap();
    }
    let leased = take(q, Duration::from_secs(1)).await.unwrap();
    let deferred = leased.entry.clone();
    q.retry(leased, &deferred, Duration::from_secs(60))
        .await
        .unwrap();
    let _held = take(q, Duration::from_secs(1)).await.unwrap();

    let stats = q.stats(now_ms()).await.unwrap();
    assert_eq!(stats.depth, 3);
    assert_eq!(stats.by_status["due"].entries, 1);
    assert_eq!(stats.by_status["deferred"].entries, 1);
    assert_eq!(stats.by_status["leased"].entries, 1);
    assert_eq!(
        stats.by_status["due"].oldest_received_at_ms,
        Some(1_600_000_000_000)
    );
    let domain = stats.by_domain["example.org"];
    assert_eq!(domain.entries, 2);
    assert_eq!(domain.oldest_received_at_ms, Some(1_700_000_000_000));
    assert_eq!(stats.by_domain["other.example"].entries, 1);
}

#[tokio::test]
async fn sqlite_queue_admin_contract() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(&dir.path().join("queue.db"))
        .await
        .unwrap();
    queue_admin_contract(Arc::new(queue)).await;
}

#[tokio::test]
async fn jetstream_queue_admin_contract() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    queue_admin_contract(Arc::new(queue)).await;
    delete_stream(&options.stream).await;
}

#[tokio::test]
async fn sqlite_queue_stats_contract() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(&dir.path().join("queue.db"))
        .await
        .unwrap();
    queue_stats_contract(Arc::new(queue)).await;
}

#[tokio::test]
async fn jetstream_queue_stats_contract() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    queue_stats_contract(Arc::new(queue)).await;
    delete_stream(&options.stream).await;
}

#[tokio::test]
async fn sqlite_queue_contract() {
    let dir = tempfile::tempdir().unwrap();
    let queue = SqliteQueue::open(&dir.path().join("queue.db"))
        .await
        .unwrap();
    queue_contract(Arc::new(queue)).await;
}

#[tokio::test]
async fn jetstream_queue_contract() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    queue_contract(Arc::new(queue)).await;
    delete_stream(&options.stream).await;
}

#[tokio::test]
async fn sqlite_queue_keeps_entries_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let kept = entry("kept");
    {
        let queue = SqliteQueue::open(&path).await.unwrap();
        queue.enqueue(&kept).await.unwrap();
        // Repeating an enqueue does not queue the entry twice.
        queue.enqueue(&kept).await.unwrap();
    }
    let queue = SqliteQueue::open(&path).await.unwrap();
    assert_eq!(queue.depth().await.unwrap(), 1);
    let leased = take(&queue, Duration::from_secs(1)).await.unwrap();
    assert_eq!(leased.entry, kept);
}

#[tokio::test]
async fn jetstream_publishes_traceparent_and_not_before_headers() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    let first = entry("traced");
    queue.enqueue(&first).await.unwrap();
    let leased = take(&queue, Duration::from_secs(2)).await.unwrap();
    queue
        .retry(leased, &first, Duration::from_secs(60))
        .await
        .unwrap();

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&options.stream).await.unwrap();
    // Sequence 1 was acked away by the retry; 2 is its new state.
    let message = stream.get_raw_message(2).await.unwrap();
    let headers = message.headers;
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some(first.traceparent.as_str())
    );
    let not_before: i64 = headers
        .get(NOT_BEFORE_HEADER)
        .expect("not-before header")
        .as_str()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now + 50_000..=now + 61_000).contains(&not_before));
    delete_stream(&options.stream).await;
}

/// A retry publishes the new state before it acks the old one; a worker
/// that dies in between leaves two copies of one entry. Administration
/// sees one entry (the newer state) and an operator's change removes both.
#[tokio::test]
async fn jetstream_admin_sees_one_entry_when_a_retry_left_two_copies() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    let first = entry("twice");
    queue.enqueue(&first).await.unwrap();
    let held = take(&queue, Duration::from_secs(2)).await.unwrap();
    // The new state is stored, the old one never acked (the worker died).
    let mut newer = first.clone();
    newer.attempts = 3;
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(
        options.subject.clone(),
        prost::Message::encode_to_vec(&newer).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    drop(held);
    assert_eq!(queue.depth().await.unwrap(), 2);

    let listed = queue.list().await.unwrap();
    assert_eq!(listed.len(), 1, "one entry, not one per copy");
    assert_eq!(listed[0].entry, newer);
    assert!(!listed[0].leased, "the newer copy was never handed out");

    let mut retried = newer.clone();
    retried.attempts = 4;
    assert!(queue.update(&retried, now_ms()).await.unwrap());
    assert_eq!(queue.depth().await.unwrap(), 1, "both old copies deleted");
    assert_eq!(queue.get(&first.id).await.unwrap().unwrap().entry, retried);
    assert!(queue.remove(&first.id).await.unwrap());
    assert_eq!(queue.depth().await.unwrap(), 0);
    delete_stream(&options.stream).await;
}

/// One old deferred entry keeps the stream's first sequence while every
/// later one is acked: the listing reads around the holes and still finds
/// exactly the live entries.
#[tokio::test]
async fn jetstream_admin_lists_a_stream_that_is_mostly_holes() {
    let options = test_stream();
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    let old = entry("old");
    queue.enqueue(&old).await.unwrap();
    let leased = take(&queue, Duration::from_secs(2)).await.unwrap();
    queue
        .retry(leased, &old, Duration::from_secs(3600))
        .await
        .unwrap();
    // 60 entries through the queue after it (its copy is handed back).
    for _ in 0..60 {
        queue.enqueue(&entry("passing")).await.unwrap();
    }
    for _ in 0..60 {
        let leased = take(&queue, Duration::from_secs(2)).await.unwrap();
        assert_ne!(leased.entry.id, old.id);
        queue.ack(leased).await.unwrap();
    }
    let last = entry("last");
    queue.enqueue(&last).await.unwrap();
    let ids: Vec<String> = queue
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.entry.id)
        .collect();
    assert_eq!(ids, [old.id.clone(), last.id.clone()]);
    delete_stream(&options.stream).await;
}

/// Above `stats_list_limit` entries, JetStream gives totals only (see
/// `JetStreamQueue::stats`).
#[tokio::test]
async fn jetstream_queue_stats_of_a_large_stream_are_totals() {
    let options = JetStreamOptions {
        stats_list_limit: 1,
        ..test_stream()
    };
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    queue.enqueue(&entry("a")).await.unwrap();
    queue.enqueue(&entry("b")).await.unwrap();
    let stats = queue.stats(now_ms()).await.unwrap();
    assert_eq!(stats.depth, 2);
    assert_eq!(stats.by_status["due"].entries, 2);
    assert_eq!(stats.by_status["leased_or_deferred"].entries, 0);

    let _held = take(&queue, Duration::from_secs(2)).await.unwrap();
    let stats = queue.stats(now_ms()).await.unwrap();
    assert_eq!(stats.depth, 2);
    assert_eq!(stats.by_status["due"].entries, 1);
    assert_eq!(stats.by_status["leased_or_deferred"].entries, 1);
    assert!(stats.by_domain.is_empty());
    delete_stream(&options.stream).await;
}

/// In totals, a retry that is not due yet is handed back with a delay
/// (nak): the consumer still holds it, so it counts with the leased ones.
#[tokio::test]
async fn jetstream_totals_count_deferred_entries_as_held() {
    let options = JetStreamOptions {
        stats_list_limit: 0,
        ..test_stream()
    };
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    let first = entry("a");
    queue.enqueue(&first).await.unwrap();
    let leased = take(&queue, Duration::from_secs(2)).await.unwrap();
    queue
        .retry(leased, &first, Duration::from_secs(60))
        .await
        .unwrap();
    // Sees the retried entry, hands it back until it is due.
    assert!(take(&queue, Duration::from_secs(1)).await.is_none());
    let stats = queue.stats(now_ms()).await.unwrap();
    assert_eq!(stats.depth, 1);
    assert_eq!(stats.by_status["due"].entries, 0);
    assert_eq!(stats.by_status["leased_or_deferred"].entries, 1);
    delete_stream(&options.stream).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn test_stream() -> JetStreamOptions {
    let id = unique();
    JetStreamOptions {
        stream: format!("MAILFLEET_TEST_{id}"),
        subject: format!("mailfleet.test.{id}.entries"),
        consumer: "delivery".into(),
        ack_wait: Some(LEASE),
        ..JetStreamOptions::default()
    }
}

async fn delete_stream(name: &str) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(name).await.unwrap();
}

// ---------------------------------------------------------------- events

async fn events_contract(events: Arc<dyn Events>) {
    let run = unique();
    let alice = format!("alice.{run}@example.org");
    let bob = format!("bob.{run}@example.org");
    let mut alice_events = events.subscribe(&alice).await.unwrap();
    let mut bob_events = events.subscribe(&bob).await.unwrap();

    let for_alice = MailboxEvent {
        account: alice.clone(),
        mailbox: "INBOX".into(),
        kind: mailbox_event::Kind::Appended as i32,
        uid: 7,
        modseq: 12,
    };
    events.publish(&for_alice).await.unwrap();
    let seen = timeout(Duration::from_secs(2), alice_events.next())
        .await
        .expect("alice's subscriber sees alice's event")
        .expect("stream open");
    assert_eq!(seen, for_alice);

    let for_bob = MailboxEvent {
        account: bob.clone(),
        mailbox: "Junk".into(),
        kind: mailbox_event::Kind::Expunged as i32,
        uid: 3,
        modseq: 4,
    };
    events.publish(&for_bob).await.unwrap();
    // Bob's first event is his own: alice's never reached him.
    let seen = timeout(Duration::from_secs(2), bob_events.next())
        .await
        .expect("bob's subscriber sees bob's event")
        .expect("stream open");
    assert_eq!(seen, for_bob);
    // And alice does not see bob's.
    assert!(
        timeout(Duration::from_millis(300), alice_events.next())
            .await
            .is_err(),
        "alice's subscriber saw another account's event"
    );
}

#[tokio::test]
async fn local_events_contract() {
    events_contract(Arc::new(LocalEvents::new())).await;
}

#[tokio::test]
async fn nats_events_contract() {
    let events = NatsEvents::connect(&nats_url()).await.unwrap();
    events_contract(Arc::new(events)).await;
}

// ---------------------------------------------------------------- counters

async fn counters_contract(counters: Arc<dyn Counters>) {
    let window = Duration::from_secs(1);
    let (key, other) = (format!("ip:{}", unique()), format!("ip:{}", unique()));

    // Start early in a window, so the hits below all fall inside it.
    sleep_into_next_window(window).await;
    assert_eq!(counters.hit(&key, window).await.unwrap(), 1);
    assert_eq!(counters.hit(&key, window).await.unwrap(), 2);
    assert_eq!(counters.hit(&key, window).await.unwrap(), 3);
    assert_eq!(counters.hit(&other, window).await.unwrap(), 1);
    // Another window length is another counter.
    assert_eq!(counters.hit(&key, window * 60).await.unwrap(), 1);

    sleep_into_next_window(window).await;
    assert_eq!(counters.hit(&key, window).await.unwrap(), 1);

    assert!(counters.hit(&key, Duration::ZERO).await.is_err());

    // First sightings: remembered for the ttl from the first one, then new.
    let ttl = Duration::from_millis(600);
    let first = counters.first_seen(&key, ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counters.first_seen(&key, ttl).await.unwrap(), first);
    assert!(counters.first_seen(&other, ttl).await.unwrap() >= first + 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = counters.first_seen(&key, ttl).await.unwrap();
    assert!(
        again >= first + 600,
        "forgotten after the ttl: {first} {again}"
    );
    assert!(counters.first_seen(&key, Duration::ZERO).await.is_err());
}

/// Sleeps until just after the start of the next window (windows are aligned
/// on the unix epoch).
async fn sleep_into_next_window(window: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = now.as_millis() % window.as_millis();
    let left = window.as_millis() - into;
    tokio::time::sleep(Duration::from_millis(left as u64 + 20)).await;
}

#[tokio::test]
async fn memory_counters_contract() {
    counters_contract(Arc::new(MemoryCounters::new())).await;
}

#[tokio::test]
async fn redis_counters_contract() {
    let counters = RedisCounters::connect(&redis_url()).await.unwrap();
    counters_contract(Arc::new(counters)).await;
}

#[tokio::test]
async fn redis_counter_keys_expire() {
    let counters = RedisCounters::connect(&redis_url()).await.unwrap();
    let key = unique();
    let window = Duration::from_secs(30);
    counters.hit(&key, window).await.unwrap();

    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("mailfleet:rl:{key}:*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "pttl {ttl}");
}

// ---------------------------------------------------------------- blobs

async fn blobs_contract(blobs: Arc<dyn BlobStore>) {
    let data = format!("Subject: test {}\r\n\r\nbody\r\n", unique()).into_bytes();
    let id = blobs.put(&data).await.unwrap();
    assert_eq!(
        id,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    assert_eq!(blobs.get(&id).await.unwrap(), data);
    assert!(blobs.exists(&id).await.unwrap());
    // Same content, same id.
    assert_eq!(blobs.put(&data).await.unwrap(), id);
    let empty = blobs.put(b"").await.unwrap();
    assert_eq!(blobs.get(&empty).await.unwrap(), b"");

    blobs.delete(&id).await.unwrap();
    assert!(matches!(
        blobs.get(&id).await,
        Err(BackendError::BlobNotFound(missing)) if missing == id
    ));
    assert!(
        !blobs.exists(&id).await.unwrap(),
        "deleted blob still exists"
    );
    // Deleting what is not there is fine.
    blobs.delete(&id).await.unwrap();

    for bad in [
        "",
        "../../../../etc/passwd",
        &"A".repeat(64),
        &"a".repeat(63),
        &"a".repeat(65),
        &format!("../{}", &"a".repeat(61)),
        &format!("{}/..", &"a".repeat(62)),
    ] {
        assert!(blobs.get(bad).await.is_err(), "get({bad:?}) accepted");
        assert!(blobs.delete(bad).await.is_err(), "delete({bad:?}) accepted");
        assert!(blobs.exists(bad).await.is_err(), "exists({bad:?}) accepted");
    }
}

#[tokio::test]
async fn dir_blobs_contract() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = DirBlobs::open(&dir.path().join("spool")).unwrap();
    blobs_contract(Arc::new(blobs)).await;
}

/// An S3-compatible server (`MAILFLEET_TEST_S3_URL`, e.g. moto_server).
fn s3_endpoint() -> String {
    std::env::var("MAILFLEET_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "MAILFLEET_TEST_S3_URL is not set: the object-store blob tests need an \
             S3-compatible server, e.g. `moto_server -p 5000` and \
             MAILFLEET_TEST_S3_URL=http://127.0.0.1:5000"
        )
    })
}

/// Creates a bucket of its own with a plain `PUT /<bucket>` (object_store
/// has no bucket API) and returns where it is.
async fn s3_bucket() -> S3Location {
    let endpoint = s3_endpoint();
    let bucket = format!("mailfleet-{}", unique());
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "create bucket: {response}"
    );
    S3Location {
        url: format!("s3://{bucket}/mail"),
        endpoint,
        allow_http: true,
    }
}

/// The store as `backends.blob_url` opens it, with the test's credentials
/// instead of the environment's.
fn s3_store(location: &S3Location, sub: &str) -> ObjectStoreBlobs {
    let base = AmazonS3Builder::new()
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test");
    let (builder, prefix) = location.builder(base).unwrap();
    ObjectStoreBlobs::new(
        Arc::new(builder.build().unwrap()),
        &format!("{prefix}/{sub}"),
    )
}

#[tokio::test]
async fn s3_blobs_contract() {
    let location = s3_bucket().await;
    let blobs = s3_store(&location, "store");
    blobs.ping().await.unwrap();
    blobs_contract(Arc::new(blobs)).await;
}

#[tokio::test]
async fn s3_blobs_live_under_the_url_prefix() {
    let location = s3_bucket().await;
    let blobs = s3_store(&location, "store");
    let id = blobs.put(b"hello").await.unwrap();

    // Read back through a store on the bucket's root: the key is
    // <prefix>/<sub>/<id>, and nothing else was written.
    let (bucket, _) = location.bucket_and_prefix().unwrap();
    let root = s3_store(
        &S3Location {
            url: format!("s3://{bucket}"),
            ..location.clone()
        },
        "",
    );
    let raw = AmazonS3Builder::new()
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_bucket_name(&bucket)
        .with_endpoint(&location.endpoint)
        .with_allow_http(true)
        .build()
        .unwrap();
    let keys: Vec<String> = raw
        .list(None)
        .map(|meta| meta.unwrap().location.to_string())
        .collect()
        .await;
    assert_eq!(keys, vec![format!("mail/store/{id}")]);
    assert!(matches!(
        root.get(&id).await,
        Err(BackendError::BlobNotFound(_))
    ));
}

#[tokio::test]
async fn dir_blobs_fan_out_and_leave_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = DirBlobs::open(dir.path()).unwrap();
    let id = blobs.put(b"hello").await.unwrap();
    let path = dir.path().join(&id[0..2]).join(&id[2..4]).join(&id);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(&id)]);
}

#[tokio::test]
async fn jetstream_ack_wait_is_the_lease_of_the_first_take() {
    let options = JetStreamOptions {
        ack_wait: None,
        ..test_stream()
    };
    let queue = JetStreamQueue::connect_with(&nats_url(), options.clone())
        .await
        .unwrap();
    let lease = Duration::from_secs(7);
    assert!(queue.take(Duration::ZERO, lease).await.unwrap().is_none());

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&options.stream).await.unwrap();
    let info = stream.consumer_info(&options.consumer).await.unwrap();
    assert_eq!(info.config.ack_wait, lease);
    assert_eq!(info.config.max_deliver, -1);
    delete_stream(&options.stream).await;
}
