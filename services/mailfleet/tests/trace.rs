//! One message is one trace: five `mailfleet serve --target ...` processes
//! (queue on NATS JetStream) export spans over OTLP to a real receiver; the
//! SMTP session, the filter verdict, the delivery attempt and the mailstore
//! commit of one message share a trace id, each with the right parent.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)).await {
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.unwrap();
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line).await;
            if line.contains(" 200 ") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "admin port {admin} never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expect(reader: &mut BufReader<TcpStream>, code: &str) {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            return;
        }
    }
}

async fn send_mail(port: u16, rcpt: &str) {
    let mut s = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    expect(&mut s, "220").await;
    for (cmd, code) in [
        ("EHLO trace.test\r\n".to_owned(), "250"),
        ("MAIL FROM:<sender@remote.test>\r\n".to_owned(), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
        (
            "Subject: traced\r\nMessage-ID: <traced@remote.test>\r\n\r\nhello\r\n.\r\n".to_owned(),
            "250",
        ),
    ] {
        s.get_mut().write_all(cmd.as_bytes()).await.unwrap();
        expect(&mut s, code).await;
    }
    // QUIT ends the session, and with it the session span.
    s.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    expect(&mut s, "221").await;
}

fn cli(admin: u16, token: &str, args: &[&str]) {
    let out = Command::new(BIN)
        .args(["--admin-url", &format!("http://127.0.0.1:{admin}")])
        .args(args)
        .env("MAILFLEET_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn(dir: &Path, target: &str, env: &[(String, String)], otlp: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "--target", target, "--data-dir"])
        .arg(dir)
        .envs(env.iter().cloned())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_SERVICE_NAME", format!("mailfleet-{target}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("MAILFLEET_ADMIN_TOKEN", "trace-test-token")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_four_services() {
    let nats = std::env::var("MAILFLEET_TEST_NATS_URL").expect(
        "MAILFLEET_TEST_NATS_URL must name a NATS server with JetStream (scripts/test starts one)",
    );
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let smtp = free_port();
    let filter = free_port();
    let mailstore = free_port();
    let admins: Vec<u16> = (0..5).map(|_| free_port()).collect();
    // The stream name is per test so runs never see each other's entries.
    let mut env = vec![
        (
            "MAILFLEET__LISTEN__SMTP".to_owned(),
            format!("127.0.0.1:{smtp}"),
        ),
        (
            "MAILFLEET__LISTEN__FILTER_GRPC".to_owned(),
            format!("127.0.0.1:{filter}"),
        ),
        (
            "MAILFLEET__LISTEN__MAILSTORE_GRPC".to_owned(),
            format!("127.0.0.1:{mailstore}"),
        ),
        (
            "MAILFLEET__SERVICES__FILTER_URL".to_owned(),
            format!("http://127.0.0.1:{filter}"),
        ),
        (
            "MAILFLEET__SERVICES__MAILSTORE_URL".to_owned(),
            format!("http://127.0.0.1:{mailstore}"),
        ),
        ("MAILFLEET__BACKENDS__QUEUE_URL".to_owned(), nats),
    ];
    for key in [
        "SUBMISSION",
        "SUBMISSIONS",
        "IMAP",
        "IMAPS",
        "POP3",
        "POP3S",
    ] {
        env.push((
            format!("MAILFLEET__LISTEN__{key}"),
            format!("127.0.0.1:{}", free_port()),
        ));
    }
    let mut processes = Processes(Vec::new());
    for (target, admin) in ["mailstore", "filter", "smtp-edge", "delivery", "access"]
        .iter()
        .zip(&admins)
    {
        let mut env = env.clone();
        env.push((
            "MAILFLEET__LISTEN__ADMIN".to_owned(),
            format!("127.0.0.1:{admin}"),
        ));
        processes
            .0
            .push(spawn(dir.path(), target, &env, &collector.endpoint()));
    }
    for admin in &admins {
        wait_ready(*admin).await;
    }
    cli(
        admins[0],
        "trace-test-token",
        &["domain", "add", "trace.test"],
    );
    cli(
        admins[0],
        "trace-test-token",
        &["user", "add", "alice@trace.test", "--password", "pw"],
    );

    send_mail(smtp, "alice@trace.test").await;

    // Each process exports in batches: wait until every hop has arrived.
    let wanted = [
        "smtp.session",
        "Filter/Check",
        "delivery.attempt",
        "Mailstore/Deliver",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans: Vec<ExportedSpan> = Vec::new();
    while !wanted
        .iter()
        .all(|w| spans.iter().any(|s| s.name == *w || s.name.ends_with(w)))
    {
        assert!(
            Instant::now() < deadline,
            "missing spans; got {:?}",
            names(&spans)
        );
        spans.extend(
            collector
                .exported_spans(1, Duration::from_millis(500))
                .await,
        );
    }
    drop(processes);

    let by_id: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name || s.name.ends_with(name))
            .unwrap_or_else(|| panic!("no span {name}; got {:?}", names(&spans)))
    };
    let session = find("smtp.session");
    let verdict = find("Filter/Check");
    let attempt = find("delivery.attempt");
    let commit = find("Mailstore/Deliver");

    for span in [verdict, attempt, commit] {
        assert_eq!(
            span.trace_id, session.trace_id,
            "{} is in another trace",
            span.name
        );
    }
    // Parent links: each hop is a descendant of the hop before it.
    let descends = |child: &ExportedSpan, ancestor: &ExportedSpan| {
        let mut current = child;
        while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = parent;
        }
        false
    };
    assert!(
        descends(verdict, session),
        "filter verdict is not under the SMTP session"
    );
    assert!(
        descends(attempt, session),
        "delivery attempt is not under the SMTP session"
    );
    assert!(
        descends(commit, attempt),
        "mailstore commit is not under the delivery attempt"
    );
    assert_eq!(
        attempt
            .attributes
            .get("mail.queue_id")
            .map(|s| !s.is_empty()),
        Some(true)
    );
}

fn names(spans: &[ExportedSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}
