//! Service tests: `run` on loopback ports, and real clients (Python's
//! imaplib and poplib) against sessions on TCP with the in-memory mailstore.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mailfleet_access::{Shared, imap, pop3};
use mailfleet_runtime::{CancellationToken, Config, Context};
use support::{Client, MemoryStore, PASSWORD, USER};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(port: u16) -> Client {
    for _ in 0..100 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            // Bridge the TCP stream to the duplex-based test client.
            let (client, mut bridge) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut bridge).await;
            });
            return Client::new(client);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listening on {port}");
}

#[tokio::test]
async fn run_serves_both_protocols_reports_readiness_and_drains() {
    let (imap_port, pop3_port) = (free_port(), free_port());
    let mut config = Config::default();
    config.listen.imap = format!("127.0.0.1:{imap_port}");
    config.listen.pop3 = format!("127.0.0.1:{pop3_port}");
    // No implicit-TLS listeners on the fixed default ports (they may be
    // taken); the self-signed certificate goes to a private directory.
    config.listen.imaps = String::new();
    config.listen.pop3s = String::new();
    config.data_dir = std::env::temp_dir().join(format!(
        "mailfleet-access-service-{}-{}",
        std::process::id(),
        imap_port
    ));
    // Nobody listens here: logins must fail softly, not hang or crash.
    config.services.mailstore_url = format!("http://127.0.0.1:{}", free_port());
    let ctx = Context::new(config);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(mailfleet_access::run(ctx.clone(), shutdown.clone()));

    let mut imap = connect(imap_port).await;
    assert!(imap.expect_line().await.starts_with("* OK"));
    assert_eq!(ctx.readiness.report().1, [("access".to_owned(), true)]);
    let lines = imap.imap("a1", &format!("LOGIN {USER} x")).await;
    assert!(lines[0].starts_with("a1 NO [UNAVAILABLE]"), "{lines:?}");

    let mut pop = connect(pop3_port).await;
    assert!(pop.expect_line().await.starts_with("+OK"));
    assert_eq!(pop.pop3("CAPA").await, "+OK capability list follows");

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &ctx.metrics.lock().unwrap()).unwrap();
    assert!(
        text.contains("mailfleet_access_sessions_total{protocol=\"imap\"} 1"),
        "{text}"
    );
    assert!(text.contains("command=\"LOGIN\""), "{text}");

    shutdown.cancel();
    assert_eq!(imap.expect_line().await, "* BYE server shutting down");
    // The POP3 client is in the middle of reading CAPA lines; drain them.
    loop {
        let line = pop.expect_line().await;
        if line == "-ERR server shutting down" {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(ctx.readiness.report().1, [("access".to_owned(), false)]);
}

/// Accepts connections on an ephemeral port and serves them with `serve`.
async fn listen<F, Fut>(shared: Arc<Shared>, serve: F) -> u16
where
    F: Fn(TcpStream, Arc<Shared>, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, shared.clone(), CancellationToken::new()));
        }
    });
    port
}

fn python(script: &str, port: u16) -> Option<String> {
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(USER)
        .arg(PASSWORD)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) => {
            eprintln!("python3 not available ({error}); skipping real-client test");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

const IMAPLIB: &str = r#"
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
m = imaplib.IMAP4("127.0.0.1", port)
assert "IMAP4REV1" in m.capabilities, m.capabilities
try:
    m.login(user, "wrong")
    raise SystemExit("wrong password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
m = imaplib.IMAP4("127.0.0.1", port)
m.login(user, password)
typ, boxes = m.list()
assert typ == "OK" and any(b'\\Sent' in b for b in boxes), boxes
typ, data = m.select("INBOX")
assert typ == "OK" and data == [b"2"], data
typ, data = m.fetch("1", "(BODY.PEEK[])")
assert typ == "OK" and data[0][1].startswith(b"From: bob"), data
typ, data = m.fetch("1", "(FLAGS)")
assert b"\\Seen" not in data[0], data
typ, data = m.fetch("1", "(RFC822)")
assert data[0][1].endswith(b"Hello Alice.\r\n"), data
typ, data = m.uid("FETCH", "1:*", "(FLAGS)")
assert b"UID 1" in data[0] and b"\\Seen" in data[0], data
typ, data = m.store("2", "+FLAGS", "(\\Deleted)")
assert typ == "OK", data
typ, data = m.expunge()
assert data == [b"2"], data
m.noop()
m.close()
m.logout()
print("imaplib ok")
"#;

const POPLIB: &str = r#"
import poplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = poplib.POP3("127.0.0.1", port)
assert "UIDL" in p.capa()
p.user(user)
try:
    p.pass_("wrong")
    raise SystemExit("wrong password accepted")
except poplib.error_proto as e:
    assert b"[AUTH]" in e.args[0], e
p = poplib.POP3("127.0.0.1", port)
p.user(user)
p.pass_(password)
count, size = p.stat()
assert count == 2, (count, size)
resp, lines, octets = p.retr(1)
assert lines[0] == b"From: bob@example.org", lines
resp, listing, _ = p.uidl()
assert len(listing) == 2, listing
p.dele(1)
p.quit()
print("poplib ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_imaplib_client() {
    let store = MemoryStore::new();
    store.deliver(
        "INBOX",
        b"From: bob@example.org\r\nSubject: one\r\n\r\nHello Alice.\r\n",
    );
    store.deliver("INBOX", b"Subject: two\r\n\r\n.dot\r\n");
    let port = listen(support::shared(&store), imap::serve::<TcpStream>).await;
    let out = tokio::task::spawn_blocking(move || python(IMAPLIB, port))
        .await
        .unwrap();
    if let Some(out) = out {
        assert!(out.contains("imaplib ok"), "{out}");
        assert_eq!(store.uids("INBOX"), [1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_poplib_client() {
    let store = MemoryStore::new();
    store.deliver(
        "INBOX",
        b"From: bob@example.org\r\nSubject: one\r\n\r\nHello Alice.\r\n",
    );
    store.deliver("INBOX", b"Subject: two\r\n\r\n.dot\r\n");
    let port = listen(support::shared(&store), pop3::serve::<TcpStream>).await;
    let out = tokio::task::spawn_blocking(move || python(POPLIB, port))
        .await
        .unwrap();
    if let Some(out) = out {
        assert!(out.contains("poplib ok"), "{out}");
        assert_eq!(store.uids("INBOX"), [2]);
    }
}
