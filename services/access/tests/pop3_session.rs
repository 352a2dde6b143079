//! POP3 session transcripts over an in-memory stream and mailstore.

mod support;

use std::sync::Arc;

use mailfleet_access::pop3;
use mailfleet_runtime::CancellationToken;
use support::{Client, MemoryStore, PASSWORD, UID_VALIDITY, USER};
use tokio::task::JoinHandle;

const MESSAGE_1: &[u8] = b"Subject: one\r\n\r\n.leading dot\r\nplain\r\n.\r\n";
const MESSAGE_2: &[u8] = b"Subject: two\nX: y\n\nline 1\nline 2\nline 3\n";

struct Harness {
    client: Client,
    store: Arc<MemoryStore>,
    shutdown: CancellationToken,
    session: JoinHandle<()>,
}

async fn start() -> Harness {
    let store = MemoryStore::new();
    store.deliver("INBOX", MESSAGE_1);
    store.deliver("INBOX", MESSAGE_2);
    let (client, server) = tokio::io::duplex(1 << 20);
    let shutdown = CancellationToken::new();
    let session = tokio::spawn(pop3::serve(
        server,
        support::shared(&store),
        shutdown.clone(),
    ));
    let mut client = Client::new(client);
    let greeting = client.expect_line().await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    Harness {
        client,
        store,
        shutdown,
        session,
    }
}

async fn logged_in() -> Harness {
    let mut h = start().await;
    assert!(
        h.client
            .pop3(&format!("USER {USER}"))
            .await
            .starts_with("+OK")
    );
    let reply = h.client.pop3(&format!("PASS {PASSWORD}")).await;
    assert_eq!(reply, "+OK maildrop has 2 messages (80 octets)");
    h
}

#[tokio::test]
async fn capa_and_login() {
    let mut h = start().await;
    let (status, caps) = h.client.pop3_multi("CAPA").await;
    assert!(status.starts_with("+OK"));
    for cap in ["TOP", "USER", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"] {
        assert!(caps.iter().any(|c| c == cap), "{cap} in {caps:?}");
    }
    assert!(h.client.pop3("STAT").await.starts_with("-ERR"));
    assert_eq!(h.client.pop3("PASS x").await, "-ERR send USER first");
    h.client.pop3(&format!("USER {USER}")).await;
    assert_eq!(
        h.client.pop3("PASS wrong").await,
        "-ERR [AUTH] invalid credentials"
    );
    h.client.pop3(&format!("USER {USER}")).await;
    assert!(
        h.client
            .pop3(&format!("PASS {PASSWORD}"))
            .await
            .starts_with("+OK")
    );
    assert_eq!(h.client.pop3("QUIT").await, "+OK bye");
    assert_eq!(h.client.line().await, None);
    h.session.await.unwrap();
}

#[tokio::test]
async fn stat_list_uidl() {
    let mut h = logged_in().await;
    assert_eq!(h.client.pop3("STAT").await, "+OK 2 80");
    let (status, lines) = h.client.pop3_multi("LIST").await;
    assert_eq!(status, "+OK 2 messages (80 octets)");
    assert_eq!(lines, ["1 40", "2 40"]);
    assert_eq!(h.client.pop3("LIST 2").await, "+OK 2 40");
    assert_eq!(h.client.pop3("LIST 3").await, "-ERR no such message");
    let (_, lines) = h.client.pop3_multi("UIDL").await;
    assert_eq!(
        lines,
        [format!("1 {UID_VALIDITY}.1"), format!("2 {UID_VALIDITY}.2")]
    );
    assert_eq!(
        h.client.pop3("UIDL 1").await,
        format!("+OK 1 {UID_VALIDITY}.1")
    );
    assert_eq!(h.client.pop3("FROB").await, "-ERR unknown command");
    assert_eq!(h.client.pop3("NOOP").await, "+OK ");
}

#[tokio::test]
async fn retr_dot_stuffs_and_top_cuts() {
    let mut h = logged_in().await;
    let (status, lines) = h.client.pop3_multi("RETR 1").await;
    assert_eq!(status, "+OK 40 octets");
    assert_eq!(lines, ["Subject: one", "", "..leading dot", "plain", ".."]);
    let (_, lines) = h.client.pop3_multi("RETR 2").await;
    assert_eq!(
        lines,
        ["Subject: two", "X: y", "", "line 1", "line 2", "line 3"]
    );
    let (_, lines) = h.client.pop3_multi("TOP 2 1").await;
    assert_eq!(lines, ["Subject: two", "X: y", "", "line 1"]);
    let (_, lines) = h.client.pop3_multi("TOP 2 0").await;
    assert_eq!(lines, ["Subject: two", "X: y", ""]);
    assert!(h.client.pop3("RETR 9").await.starts_with("-ERR"));
}

#[tokio::test]
async fn dele_is_applied_at_quit_only() {
    let mut h = logged_in().await;
    assert_eq!(h.client.pop3("DELE 1").await, "+OK message 1 deleted");
    assert_eq!(
        h.client.pop3("DELE 1").await,
        "-ERR message 1 already deleted"
    );
    assert_eq!(
        h.client.pop3("RETR 1").await,
        "-ERR message 1 already deleted"
    );
    assert_eq!(h.client.pop3("STAT").await, "+OK 1 40");
    // Nothing reaches the mailstore before QUIT.
    assert_eq!(h.store.uids("INBOX"), [1, 2]);
    assert_eq!(h.client.pop3("QUIT").await, "+OK bye (1 messages deleted)");
    assert_eq!(h.store.uids("INBOX"), [2]);
}

#[tokio::test]
async fn rset_undoes_dele() {
    let mut h = logged_in().await;
    h.client.pop3("DELE 1").await;
    h.client.pop3("DELE 2").await;
    assert_eq!(
        h.client.pop3("RSET").await,
        "+OK maildrop has 2 messages (80 octets)"
    );
    assert_eq!(h.client.pop3("QUIT").await, "+OK bye");
    assert_eq!(h.store.uids("INBOX"), [1, 2]);
}

#[tokio::test]
async fn dropped_connection_deletes_nothing() {
    let mut h = logged_in().await;
    h.client.pop3("DELE 1").await;
    drop(h.client);
    h.session.await.unwrap();
    assert_eq!(h.store.uids("INBOX"), [1, 2]);
}

#[tokio::test]
async fn shutdown_ends_idle_sessions_without_update() {
    let mut h = logged_in().await;
    h.client.pop3("DELE 1").await;
    h.shutdown.cancel();
    assert_eq!(h.client.expect_line().await, "-ERR server shutting down");
    assert_eq!(h.client.line().await, None);
    h.session.await.unwrap();
    assert_eq!(h.store.uids("INBOX"), [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_closes() {
    let mut h = logged_in().await;
    tokio::time::advance(std::time::Duration::from_secs(11 * 60)).await;
    let line = h.client.expect_line().await;
    assert!(line.starts_with("-ERR autologout"), "{line}");
    h.session.await.unwrap();
}

#[tokio::test]
async fn auth_plain_inline_and_with_continuation() {
    let mut h = start().await;
    // base64("\0alice@example.com\0secret pw")
    let response = "AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldCBwdw==";
    assert_eq!(
        h.client.pop3("AUTH CRAM-MD5").await,
        "-ERR unsupported mechanism"
    );
    assert_eq!(h.client.pop3("AUTH PLAIN").await, "+ ");
    assert_eq!(h.client.pop3("*").await, "-ERR authentication cancelled");
    assert_eq!(h.client.pop3("AUTH PLAIN !!").await, "-ERR invalid base64");
    assert_eq!(h.client.pop3("AUTH PLAIN").await, "+ ");
    assert_eq!(
        h.client.pop3(response).await,
        "+OK maildrop has 2 messages (80 octets)"
    );
    assert_eq!(
        h.client.pop3("AUTH PLAIN =").await,
        "-ERR already authenticated"
    );
    // STLS without a certificate, and not after login.
    assert_eq!(
        h.client.pop3("STLS").await,
        "-ERR STLS only before authentication"
    );
}

/// RFC 2595 §4: from a non-loopback address without TLS, USER/PASS and
/// AUTH are refused and not advertised.
#[tokio::test]
async fn plain_text_login_is_refused_off_loopback_without_tls() {
    let store = MemoryStore::new();
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(pop3::session::serve_connection(
        server,
        support::shared(&store),
        CancellationToken::new(),
        mailfleet_access::Connection {
            remote_ip: "192.0.2.7".parse().unwrap(),
            tls: false,
        },
    ));
    let mut c = Client::new(client);
    c.expect_line().await;
    let (_, caps) = c.pop3_multi("CAPA").await;
    assert!(
        !caps.iter().any(|c| c == "USER" || c.starts_with("SASL")),
        "{caps:?}"
    );
    assert_eq!(c.pop3(&format!("USER {USER}")).await, "-ERR use STLS first");
    assert_eq!(c.pop3("AUTH PLAIN =").await, "-ERR use STLS first");
    assert_eq!(c.pop3("STLS").await, "-ERR TLS is not available");
}
