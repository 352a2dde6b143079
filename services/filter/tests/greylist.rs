//! Greylisting (RFC 6647) as a sending MTA meets it: the first attempt of
//! a suspicious (client /24, sender, recipient) triplet gets 451 4.7.1, a
//! retry before the minimum delay gets it again, a retry after it passes.
//! On a single node the triplets live in memory; in a cluster in Redis
//! (`MAILFLEET_TEST_REDIS_URL`), where every filter replica must agree,
//! whichever one the retry reaches.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailfleet_filter::Engine;
use mailfleet_proto::filter::{Action, CheckRequest, Verdict};
use mailfleet_runtime::backend::{Counters, MemoryCounters, RedisCounters};
use mailfleet_runtime::config::Filter as FilterConfig;

/// A greylisting delay the tests can wait out.
const DELAY: Duration = Duration::from_secs(2);

fn engine(counters: Arc<dyn Counters>) -> Engine {
    let config = FilterConfig {
        greylist_score: 1.0,
        greylist_delay_secs: DELAY.as_secs(),
        ..FilterConfig::default()
    };
    Engine::from_config(&config, "mx.example.org", None, Some(counters), None).unwrap()
}

/// Missing Date and Message-ID score 1.5, above the greylisting score; the
/// sender is unique so runs against one Redis server never meet.
fn suspicious(client_ip: &str, sender: &str) -> CheckRequest {
    CheckRequest {
        client_ip: client_ip.into(),
        helo: "client.test".into(),
        mail_from: sender.into(),
        rcpt_to: vec!["alice@example.org".into()],
        authenticated: false,
        message: format!("From: {sender}\r\nSubject: hello\r\n\r\nhi\r\n").into_bytes(),
    }
}

fn unique_sender(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{nanos}@client.test")
}

fn assert_greylisted(verdict: &Verdict, what: &str) {
    assert_eq!(verdict.action(), Action::Tempfail, "{what}: {verdict:?}");
    // RFC 6647 §2.1, RFC 3463: a temporary failure the sender retries.
    assert_eq!(
        (verdict.smtp_code, verdict.enhanced_code.as_str()),
        (451, "4.7.1"),
        "{what}"
    );
    assert!(
        verdict.rules.iter().any(|r| r.name == "GREYLIST"),
        "{what}: {:?}",
        verdict.rules
    );
    assert!(verdict.reason.contains("try again"), "{}", verdict.reason);
}

fn assert_passes(verdict: &Verdict, what: &str) {
    assert_ne!(verdict.action(), Action::Tempfail, "{what}: {verdict:?}");
    assert!(
        !verdict.rules.iter().any(|r| r.name == "GREYLIST"),
        "{what}: {:?}",
        verdict.rules
    );
}

/// The MTA's story on two engines `a` and `b` sharing `counters`' store.
async fn retry_after_the_delay_passes_on_either_engine(a: &Engine, b: &Engine) {
    let sender = unique_sender("mta");
    assert_greylisted(
        &a.evaluate(suspicious("192.0.2.5", &sender)).await,
        "first attempt",
    );
    // A retry at once, on the other engine, is still too early.
    assert_greylisted(
        &b.evaluate(suspicious("192.0.2.5", &sender)).await,
        "immediate retry",
    );
    // Another triplet (other sender) is greylisted on its own.
    let other = unique_sender("other");
    assert_greylisted(
        &b.evaluate(suspicious("192.0.2.5", &other)).await,
        "other triplet",
    );

    tokio::time::sleep(DELAY + Duration::from_millis(200)).await;
    // After the delay the retry passes, from another address of the same
    // /24 (a sending pool), on either engine.
    assert_passes(
        &b.evaluate(suspicious("192.0.2.6", &sender)).await,
        "retry after the delay on b",
    );
    assert_passes(
        &a.evaluate(suspicious("192.0.2.7", &sender)).await,
        "retry after the delay on a",
    );
    // Another /24 is another triplet.
    assert_greylisted(
        &a.evaluate(suspicious("198.51.100.5", &sender)).await,
        "another network",
    );
    // A third triplet never seen before is still greylisted after the
    // others passed.
    assert_greylisted(
        &a.evaluate(suspicious("192.0.2.5", &unique_sender("third")))
            .await,
        "third triplet",
    );
}

#[tokio::test]
async fn greylisting_in_memory() {
    let counters: Arc<dyn Counters> = Arc::new(MemoryCounters::new());
    let engine = engine(counters);
    retry_after_the_delay_passes_on_either_engine(&engine, &engine).await;

    // A clean message is never greylisted.
    let sender = unique_sender("clean");
    let clean = CheckRequest {
        message: format!(
            "From: {sender}\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
             Message-ID: <1@client.test>\r\nSubject: hello\r\n\r\nhi\r\n"
        )
        .into_bytes(),
        ..suspicious("192.0.2.5", &sender)
    };
    assert_passes(&engine.evaluate(clean).await, "clean message");
}

#[tokio::test]
async fn greylisting_shared_by_two_engines_on_redis() {
    let url = std::env::var("MAILFLEET_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "MAILFLEET_TEST_REDIS_URL is not set: greylisting on Redis needs a Redis \
             server, e.g. MAILFLEET_TEST_REDIS_URL=redis://127.0.0.1:6379"
        )
    });
    // Two replicas: two engines, each with its own Redis connection.
    let a = engine(Arc::new(RedisCounters::connect(&url).await.unwrap()));
    let b = engine(Arc::new(RedisCounters::connect(&url).await.unwrap()));
    retry_after_the_delay_passes_on_either_engine(&a, &b).await;
}
