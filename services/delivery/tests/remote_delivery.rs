//! Remote delivery against real peers: the testkit's authoritative DNS
//! server for MX records, and SMTP servers on 127.0.0.2, 127.0.0.3, ...
//! that accept, defer (451) or refuse (550), one with STARTTLS. Delivery
//! runs as in production (`mailfleet_delivery::run`) with a real mailstore,
//! where bounces to local senders land.

mod common;

use std::time::Duration;

use common::peer::{Mode, Peer};
use common::{loopback, node};
use mailfleet_delivery::client::{self, ClientSettings, Envelope, Timeouts};
use mailfleet_delivery::tls::{TlsClient, TlsOutcome};
use mailfleet_testkit::{DnsServer, Zone};

const MESSAGE: &[u8] = b"From: alice@example.com\r\nTo: carol@remote.test\r\nSubject: relay me\r\nMessage-ID: <m1@example.com>\r\n\r\nline one\r\n.\r\n..two dots\r\nlast\r\n";

fn ipv4(last: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, last)
}

/// The primary MX (127.0.0.2) is down; the backup, reached through a CNAME
/// (tolerated), gets the message once, with its dot lines intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_mx_gets_the_message_when_the_primary_is_down() {
    let port = common::free_port();
    let backup = Peer::start(loopback(3), port, Mode::Accept, None).await;
    let dns = DnsServer::start([Zone::new("remote.test")
        .mx("@", 10, "mx1")
        .mx("@", 20, "mx2")
        .a("mx1", ipv4(2))
        .cname("mx2", "backup-host")
        .a("backup-host", ipv4(3))])
    .await;
    let node = node(&dns, port, |_| {}).await;
    node.send("alice@example.com", &["carol@remote.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;

    let got = backup.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "alice@example.com");
    assert_eq!(got[0].recipients, ["carol@remote.test"]);
    assert_eq!(
        got[0].data, MESSAGE,
        "dot-stuffed on the wire, intact after"
    );
    assert!(
        node.inbox("alice@example.com").await.is_empty(),
        "no bounce"
    );
}

/// No MX records: the domain's own A record is the implicit MX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_is_used_when_there_is_no_mx() {
    let port = common::free_port();
    let peer = Peer::start(loopback(4), port, Mode::Accept, None).await;
    let dns = DnsServer::start([Zone::new("nomx.test").a("@", ipv4(4))]).await;
    let node = node(&dns, port, |_| {}).await;
    node.send(
        "alice@example.com",
        &["dave@nomx.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    )
    .await;
    node.wait_empty_queue().await;
    assert_eq!(peer.messages().len(), 1);
}

/// A 451 to RCPT is retried after `delivery.retry_intervals` and the
/// message is then delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferral_is_retried_and_delivered_exactly_once() {
    let port = common::free_port();
    let peer = Peer::start(loopback(5), port, Mode::DeferFirst(1), None).await;
    let dns = DnsServer::start([Zone::new("slow.test").mx("@", 10, "mx").a("mx", ipv4(5))]).await;
    let node = node(&dns, port, |_| {}).await;
    node.send("alice@example.com", &["erin@slow.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    assert_eq!(peer.rcpts_seen(), 2, "one deferred attempt, one delivery");
    // Nothing more comes later either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = peer.messages();
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert_eq!(got[0].data, MESSAGE);
    assert!(
        node.inbox("alice@example.com").await.is_empty(),
        "no bounce"
    );
}

/// A 550 and a null MX: one DSN to the (local) sender, with the remote's
/// reply, the statuses and the original headers — and no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_and_null_mx_bounce_with_one_dsn() {
    let port = common::free_port();
    let _peer = Peer::start(loopback(6), port, Mode::Refuse, None).await;
    let dns = DnsServer::start([
        Zone::new("refuse.test").mx("@", 10, "mx").a("mx", ipv4(6)),
        Zone::new("nomail.test").mx("@", 0, "."),
    ])
    .await;
    let node = node(&dns, port, |_| {}).await;
    node.send(
        "alice@example.com",
        &["frank@refuse.test", "gina@nomail.test"],
        MESSAGE,
    )
    .await;
    node.wait_empty_queue().await;
    common::wait_for("the bounce", || async {
        !node.inbox("alice@example.com").await.is_empty()
    })
    .await;
    // Both failures are reported, in one DSN or in one per domain turn;
    // each failure exactly once.
    let bounces = node.inbox("alice@example.com").await;
    let all = bounces.join("\n");
    for dsn in &bounces {
        assert!(
            dsn.starts_with("Return-Path: <>\r\n"),
            "null sender:\n{dsn}"
        );
        assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(dsn.contains("Content-Type: message/delivery-status\r\n"));
        assert!(dsn.contains("Reporting-MTA: dns; mx.example.com\r\n"));
        assert!(
            dsn.contains("Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.com\r\n")
        );
        assert!(dsn.contains("Subject: relay me\r\n"));
        assert!(!dsn.contains("..two dots"), "headers only by default");
    }
    assert_eq!(
        all.matches("Final-Recipient: rfc822; frank@refuse.test")
            .count(),
        1
    );
    assert_eq!(
        all.matches("Final-Recipient: rfc822; gina@nomail.test")
            .count(),
        1
    );
    assert!(all.contains("Status: 5.1.1\r\nRemote-MTA: dns; mx.refuse.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user here\r\n"), "{all}");
    assert!(
        all.contains(
            "Final-Recipient: rfc822; gina@nomail.test\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        ),
        "{all}"
    );
}

/// A destination that defers for ever: after `delivery.max_queue_lifetime`
/// the sender gets a DSN saying so, with the last 4xx reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_bounces_with_the_last_reply() {
    let port = common::free_port();
    let peer = Peer::start(loopback(7), port, Mode::DeferAlways, None).await;
    let dns = DnsServer::start([Zone::new("never.test").mx("@", 10, "mx").a("mx", ipv4(7))]).await;
    let node = node(&dns, port, |c| {
        c.delivery.max_queue_lifetime = "3s".into();
    })
    .await;
    node.send("alice@example.com", &["hank@never.test"], MESSAGE)
        .await;
    common::wait_for("the expiry bounce", || async {
        !node.inbox("alice@example.com").await.is_empty()
    })
    .await;
    node.wait_empty_queue().await;
    let bounces = node.inbox("alice@example.com").await;
    assert_eq!(bounces.len(), 1);
    let dsn = &bounces[0];
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; hank@never.test\r\nAction: failed\r\nStatus: 4.7.1\r\n"
        ),
        "{dsn}"
    );
    assert!(
        dsn.contains("Diagnostic-Code: smtp; 451 4.7.1 greylisted, try again later\r\n"),
        "{dsn}"
    );
    assert!(dsn.contains("message expired after"), "{dsn}");
    assert!(peer.rcpts_seen() >= 2, "retried before expiring");
    assert!(peer.messages().is_empty());
}

/// A bounce of a message whose sender is `<>` is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_to_the_null_sender() {
    let port = common::free_port();
    let _peer = Peer::start(loopback(8), port, Mode::Refuse, None).await;
    let dns = DnsServer::start([Zone::new("refuse.test").mx("@", 10, "mx").a("mx", ipv4(8))]).await;
    let node = node(&dns, port, |_| {}).await;
    node.send("", &["ivan@refuse.test"], MESSAGE).await;
    node.wait_empty_queue().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.depth().await, 0, "no DSN entry");
}

/// STARTTLS is used when offered; the certificate of a test CA we do not
/// trust is accepted (opportunistic) and the message goes over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_is_used_when_offered() {
    let port = common::free_port();
    let (acceptor, _ca) = common::peer::tls_for("mx.secure.test");
    let peer = Peer::start(loopback(9), port, Mode::Accept, Some(acceptor)).await;
    let dns = DnsServer::start([Zone::new("secure.test").mx("@", 10, "mx").a("mx", ipv4(9))]).await;
    let node = node(&dns, port, |_| {}).await;
    node.send("alice@example.com", &["judy@secure.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    let got = peer.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered inside TLS");
}

/// The client records whether the certificate verified: against a CA it
/// trusts for the right name, yes; otherwise it still delivers, unverified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verification_is_recorded() {
    let port = common::free_port();
    let (acceptor, ca) = common::peer::tls_for("mx.secure.test");
    let peer = Peer::start(loopback(10), port, Mode::Accept, Some(acceptor)).await;
    let recipients = vec!["kim@secure.test".to_string()];
    let envelope = Envelope {
        mail_from: "alice@example.com",
        recipients: &recipients,
        message: MESSAGE,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let settings = |tls| ClientSettings {
        ehlo_name: "mx.example.com".into(),
        timeouts: Timeouts::default(),
        tls,
        starttls: true,
        source_ip: None,
        auth: None,
    };
    let trusted = settings(TlsClient::new(roots));
    let t = client::deliver(peer.addr, "mx.secure.test", &trusted, &envelope)
        .await
        .unwrap();
    assert_eq!(t.tls, Some(TlsOutcome::Verified));
    // The right CA, the wrong name.
    let t = client::deliver(peer.addr, "other.test", &trusted, &envelope)
        .await
        .unwrap();
    assert!(
        matches!(t.tls, Some(TlsOutcome::Unverified(_))),
        "{:?}",
        t.tls
    );
    let untrusted = settings(TlsClient::new(rustls::RootCertStore::empty()));
    let t = client::deliver(peer.addr, "mx.secure.test", &untrusted, &envelope)
        .await
        .unwrap();
    assert!(matches!(t.tls, Some(TlsOutcome::Unverified(_))));
    assert_eq!(peer.messages().len(), 3);
    assert!(peer.messages().iter().all(|m| m.tls));
}

/// Mail from a domain with a DKIM key in the directory leaves signed; an
/// independent verifier (mail-auth) checks the signature against the key
/// published in the test DNS. Both algorithms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signature_verifies_against_the_test_dns() {
    for (algorithm, last) in [("ed25519", 11), ("rsa", 12)] {
        let key = mailfleet_delivery::dkim::generate("example.com", "s1", algorithm).unwrap();
        let (name, txt) = mailfleet_delivery::dkim::txt_record(&key);
        assert_eq!(name, "s1._domainkey.example.com");
        let port = common::free_port();
        let peer = Peer::start(loopback(last), port, Mode::Accept, None).await;
        let dns = DnsServer::start([
            Zone::new("example.com").txt("s1._domainkey", &txt),
            Zone::new("signed.test")
                .mx("@", 10, "mx")
                .a("mx", ipv4(last)),
        ])
        .await;
        let node = node(&dns, port, |_| {}).await;
        node.directory.clone().put_dkim_key(key).await.unwrap();
        node.send("alice@example.com", &["lee@signed.test"], MESSAGE)
            .await;
        node.wait_empty_queue().await;

        let got = peer.messages();
        assert_eq!(got.len(), 1);
        let data = &got[0].data;
        assert!(
            data.starts_with(b"DKIM-Signature: v=1; a="),
            "{algorithm}: signed first"
        );
        assert!(data.ends_with(MESSAGE), "the message itself is unchanged");
        let parsed = mail_auth::AuthenticatedMessage::parse(data).unwrap();
        let results = mail_auth::MessageAuthenticator(dns.resolver())
            .verify_dkim(&parsed)
            .await;
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].result(),
            &mail_auth::DkimResult::Pass,
            "{algorithm}: {results:?}"
        );
    }
}

/// No key for the From domain: the message goes out unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dkim_key_means_unsigned() {
    let port = common::free_port();
    let peer = Peer::start(loopback(13), port, Mode::Accept, None).await;
    let dns = DnsServer::start([Zone::new("plain.test").mx("@", 10, "mx").a("mx", ipv4(13))]).await;
    let node = node(&dns, port, |_| {}).await;
    node.send("alice@example.com", &["mo@plain.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    assert_eq!(peer.messages()[0].data, MESSAGE);
}

/// `delivery.max_connections_per_domain = 1`: two workers with four
/// messages to one slow domain never hold two connections to it at once,
/// and every message is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_domain_are_limited_across_workers() {
    let port = common::free_port();
    let peer = Peer::start(loopback(14), port, Mode::SlowAccept(300), None).await;
    let dns = DnsServer::start([Zone::new("busy.test").mx("@", 10, "mx").a("mx", ipv4(14))]).await;
    let node = node(&dns, port, |c| {
        c.delivery.workers = 4;
        c.delivery.max_connections_per_domain = 1;
    })
    .await;
    for i in 0..4 {
        let message = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        node.send("alice@example.com", &["nia@busy.test"], message.as_bytes())
            .await;
    }
    node.wait_empty_queue().await;
    assert_eq!(peer.messages().len(), 4);
    assert_eq!(peer.max_concurrent(), 1);
}

/// `delivery.source_ip` and `delivery.ehlo_name`: a pool of workers pinned
/// to one local address, introducing itself by the name its PTR would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_and_ehlo_name_are_used() {
    let port = common::free_port();
    let peer = Peer::start(loopback(15), port, Mode::Accept, None).await;
    let dns =
        DnsServer::start([Zone::new("pinned.test").mx("@", 10, "mx").a("mx", ipv4(15))]).await;
    let node = node(&dns, port, |c| {
        c.delivery.source_ip = "127.0.0.55".into();
        c.delivery.ehlo_name = "out55.example.com".into();
    })
    .await;
    node.send("alice@example.com", &["oz@pinned.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    assert_eq!(peer.messages().len(), 1);
    assert_eq!(
        peer.clients(),
        [(loopback(55), "out55.example.com".to_string())]
    );
}

/// `delivery.relay_host`: every remote message goes to the smarthost —
/// even for a domain whose MX says it takes no mail — over STARTTLS, with
/// AUTH PLAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_relay_with_auth() {
    let port = common::free_port();
    let (acceptor, _ca) = common::peer::tls_for("relay.example.net");
    let relay = Peer::start_relay(loopback(16), port, acceptor, "fleet", "s3cret").await;
    let dns = DnsServer::start([Zone::new("nomail.test").mx("@", 0, ".")]).await;
    let node = node(&dns, port, |c| {
        c.delivery.relay_host = format!("127.0.0.16:{port}");
        c.delivery.relay_username = "fleet".into();
        c.delivery.relay_password = "s3cret".into();
    })
    .await;
    node.send("alice@example.com", &["pat@nomail.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    let got = relay.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(got[0].user.as_deref(), Some("fleet"));
    assert_eq!(got[0].recipients, ["pat@nomail.test"]);
    assert!(
        node.inbox("alice@example.com").await.is_empty(),
        "no bounce"
    );
}

/// Wrong credentials are the operator's problem: the mail waits (4.7.0),
/// it is not bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_refusing_credentials_defers() {
    let port = common::free_port();
    let (acceptor, _ca) = common::peer::tls_for("relay.example.net");
    let relay = Peer::start_relay(loopback(17), port, acceptor, "fleet", "right").await;
    let dns = DnsServer::start([]).await;
    let node = node(&dns, port, |c| {
        c.delivery.relay_host = format!("127.0.0.17:{port}");
        c.delivery.relay_username = "fleet".into();
        c.delivery.relay_password = "wrong".into();
        c.delivery.retry_intervals = vec!["1h".into()];
    })
    .await;
    node.send("alice@example.com", &["quinn@remote.test"], MESSAGE)
        .await;
    common::wait_for("the first attempt", || async { relay.connections() >= 1 }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.depth().await, 1, "kept for a retry");
    assert!(relay.messages().is_empty());
    assert!(
        node.inbox("alice@example.com").await.is_empty(),
        "no bounce"
    );
}

/// `delivery.delay_warning_after`: a message still deferred after it gets
/// one "delayed" DSN (Action: delayed, Will-Retry-Until), not one per retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delay_warning_while_retrying() {
    let port = common::free_port();
    let peer = Peer::start(loopback(18), port, Mode::DeferAlways, None).await;
    let dns = DnsServer::start([Zone::new("slow.test").mx("@", 10, "mx").a("mx", ipv4(18))]).await;
    let node = node(&dns, port, |c| {
        c.delivery.delay_warning_after = "1s".into();
    })
    .await;
    node.send("alice@example.com", &["ray@slow.test"], MESSAGE)
        .await;
    common::wait_for("the delay warning", || async {
        !node.inbox("alice@example.com").await.is_empty()
    })
    .await;
    // Several more attempts: still one warning, and the entry still queued.
    common::wait_for("more attempts", || async { peer.rcpts_seen() >= 4 }).await;
    let warnings = node.inbox("alice@example.com").await;
    assert_eq!(warnings.len(), 1);
    let dsn = &warnings[0];
    assert!(
        dsn.contains("Subject: Delayed Mail (still being retried)\r\n"),
        "{dsn}"
    );
    assert!(
        dsn.contains(
            "Final-Recipient: rfc822; ray@slow.test\r\nAction: delayed\r\nStatus: 4.7.1\r\n"
        ),
        "{dsn}"
    );
    assert!(dsn.contains("Will-Retry-Until: "), "{dsn}");
    assert_eq!(node.depth().await, 1, "still being retried");
}

/// Messages in a row to one MX share one connection (RSET between them)
/// instead of a TCP connection, TLS handshake and EHLO each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_for_the_next_message() {
    let port = common::free_port();
    let (acceptor, _ca) = common::peer::tls_for("mx.reuse.test");
    let peer = Peer::start(loopback(19), port, Mode::Accept, Some(acceptor)).await;
    let dns = DnsServer::start([Zone::new("reuse.test").mx("@", 10, "mx").a("mx", ipv4(19))]).await;
    let node = node(&dns, port, |c| c.delivery.workers = 1).await;
    for i in 0..3 {
        let message = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        node.send("alice@example.com", &["sam@reuse.test"], message.as_bytes())
            .await;
        node.wait_empty_queue().await;
    }
    let got = peer.messages();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.tls));
    assert_eq!(peer.connections(), 1, "one connection for the three");
}

/// A delivery attempt ends before its lease does (3/4 of
/// `delivery.lease_secs`): a peer that stalls on DATA past the lease gets
/// its connection cut, the entry is retried (4.4.7), and no other worker
/// takes it meanwhile — one message arrives, not two. Without the cut, a
/// second worker would take the entry when the lease ran out and deliver
/// it while the first, answered late, delivered it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_is_cut_before_its_lease_runs_out() {
    let port = common::free_port();
    let peer = Peer::start(loopback(20), port, Mode::StallFirstData(6_000), None).await;
    let dns = DnsServer::start([Zone::new("stall.test").mx("@", 10, "mx").a("mx", ipv4(20))]).await;
    let node = node(&dns, port, |c| {
        c.delivery.lease_secs = 4;
        c.delivery.workers = 2;
    })
    .await;
    let started = std::time::Instant::now();
    node.send("alice@example.com", &["uma@stall.test"], MESSAGE)
        .await;
    node.wait_empty_queue().await;
    let delivered_after = started.elapsed();
    assert!(
        delivered_after >= Duration::from_millis(2_900),
        "delivered after {delivered_after:?}: the stalled attempt was not the first"
    );
    // Past the stall: a first attempt still waiting would deliver now.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer.data_commands(), 2, "one cut attempt, one retry");
    assert_eq!(peer.connections(), 2);
    let got = peer.messages();
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert_eq!(got[0].data, MESSAGE);
    assert!(
        node.inbox("alice@example.com").await.is_empty(),
        "no bounce"
    );
}

/// `delivery.max_connections_per_domain = 1` over two delivery processes
/// sharing Redis: the first keeps its connection open for the next message
/// (it holds the domain's one slot while idle); the second waits, the
/// first closes its idle connection because a worker waits for the
/// domain, and only then does the second connect. Never two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_count_against_the_limit_across_processes() {
    let redis = std::env::var("MAILFLEET_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("MAILFLEET_TEST_REDIS_URL is not set: the shared slots need a Redis server")
    });
    // A domain of its own: the slots in Redis are per domain.
    let domain = format!("d{}.test", uuid::Uuid::now_v7().simple());
    let port = common::free_port();
    let peer = Peer::start(loopback(21), port, Mode::Accept, None).await;
    let dns = DnsServer::start([Zone::new(&domain).mx("@", 10, "mx").a("mx", ipv4(21))]).await;
    let tune = |c: &mut mailfleet_runtime::Config| {
        c.backends.counters_url = redis.clone();
        c.delivery.workers = 1;
        c.delivery.max_connections_per_domain = 1;
    };
    let first = node(&dns, port, tune).await;
    let second = node(&dns, port, tune).await;
    let to = format!("vic@{domain}");

    first
        .send("alice@example.com", &[to.as_str()], MESSAGE)
        .await;
    first.wait_empty_queue().await;
    assert_eq!(peer.messages().len(), 1);
    assert_eq!(peer.open_sessions(), 1, "kept open for the next message");

    second
        .send("alice@example.com", &[to.as_str()], MESSAGE)
        .await;
    second.wait_empty_queue().await;
    assert_eq!(peer.messages().len(), 2);
    assert_eq!(peer.connections(), 2);
    assert_eq!(
        peer.max_concurrent(),
        1,
        "a second connection while the first was open"
    );
}
