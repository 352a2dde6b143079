//! Learning from Junk moves against a real `Filter` gRPC server (the
//! filter crate's service on `127.0.0.1:0`, Bayes in memory): MOVE and
//! COPY into Junk train spam, out of Junk train ham, Junk to Trash trains
//! nothing, and the IMAP replies never wait for the filter.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailfleet_access::{Learner, Shared, imap};
use mailfleet_filter::bayes::Bayes;
use mailfleet_filter::rules::RuleSet;
use mailfleet_filter::{Engine, FilterService, Metrics};
use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::config::Filter as FilterConfig;
use support::{Client, MemoryStore, PASSWORD, USER};
use tokio::net::TcpListener;

const SPAM: &[u8] =
    b"From: deals@offers.test\r\nSubject: megaflux\r\n\r\nzorblax vaporine offer\r\n";
const HAM: &[u8] = b"From: clerk@garden.test\r\nSubject: minutes\r\n\r\nallotment committee\r\n";

/// A filter with an in-memory Bayes store, serving until `shutdown`.
async fn filter(shutdown: &CancellationToken) -> (String, Arc<Bayes>) {
    let bayes = Arc::new(Bayes::memory());
    let mut engine = Engine::with_rules(RuleSet::from_config(&FilterConfig::default()).unwrap());
    engine.bayes = Some(bayes.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = FilterService::with_engine(engine, Metrics::default());
    tokio::spawn(mailfleet_filter::serve(
        listener,
        service,
        shutdown.clone(),
        || {},
    ));
    (url, bayes)
}

async fn login(store: &Arc<MemoryStore>, learner: &Arc<Learner>) -> Client {
    let mut shared = support::shared(store);
    Arc::get_mut(&mut shared).unwrap().learner = Some(learner.clone());
    let shared: Arc<Shared> = shared;
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(imap::serve(server, shared, CancellationToken::new()));
    let mut client = Client::new(client);
    client.expect_line().await;
    let lines = client
        .imap("a0", &format!("LOGIN {USER} \"{PASSWORD}\""))
        .await;
    assert!(lines.last().unwrap().starts_with("a0 OK"), "{lines:?}");
    client
}

async fn wait_trained(bayes: &Bayes, expected: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let trained = bayes.trained().await.unwrap();
        if trained == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "trained (spam, ham) = {trained:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn moves_into_and_out_of_junk_reach_filter_learn() {
    let shutdown = CancellationToken::new();
    let (url, bayes) = filter(&shutdown).await;
    let learner = Arc::new(Learner::new(&url).unwrap());
    let store = MemoryStore::new();
    store.deliver("INBOX", SPAM);
    store.deliver("INBOX", SPAM);
    store.deliver("Junk", HAM);
    let mut c = login(&store, &learner).await;

    // C: MOVE 1 Junk / C: COPY 1 Junk  (two spams, the second copied)
    c.imap("s1", "SELECT INBOX").await;
    let lines = c.imap("m1", "MOVE 1 Junk").await;
    assert_eq!(lines.last().unwrap(), "m1 OK MOVE completed", "{lines:?}");
    let lines = c.imap("m2", "COPY 1 Junk").await;
    assert!(lines[0].starts_with("m2 OK [COPYUID "), "{lines:?}");
    wait_trained(&bayes, (2, 0)).await;

    // C: UID MOVE 1 INBOX  (the ham out of Junk), UID MOVE 2 Trash (a spam)
    c.imap("s2", "SELECT Junk").await;
    let lines = c.imap("m3", "UID MOVE 1 INBOX").await;
    assert_eq!(
        lines.last().unwrap(),
        "m3 OK UID MOVE completed",
        "{lines:?}"
    );
    wait_trained(&bayes, (2, 1)).await;
    store.add_mailbox("Trash", "\\Trash");
    let lines = c.imap("m4", "UID MOVE 2 Trash").await;
    assert_eq!(
        lines.last().unwrap(),
        "m4 OK UID MOVE completed",
        "{lines:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bayes.trained().await.unwrap(),
        (2, 1),
        "Trash teaches nothing"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_filter_that_is_down_never_fails_the_move() {
    // Nothing listens here: learning fails in the background, MOVE succeeds.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let learner = Arc::new(Learner::new(&format!("http://127.0.0.1:{port}")).unwrap());
    let store = MemoryStore::new();
    store.deliver("INBOX", SPAM);
    let mut c = login(&store, &learner).await;
    c.imap("s1", "SELECT INBOX").await;
    let lines = c.imap("m1", "MOVE 1 Junk").await;
    assert_eq!(lines.last().unwrap(), "m1 OK MOVE completed", "{lines:?}");
    assert_eq!(store.uids("Junk"), [1]);
    assert_eq!(c.imap("n1", "NOOP").await, ["n1 OK NOOP completed"]);
}
