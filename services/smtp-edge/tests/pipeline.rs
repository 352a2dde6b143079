//! The production end-of-DATA path with real components: the filter's gRPC
//! server on 127.0.0.1:0, the single-node spool and SQLite queue in a
//! temporary directory. And `run` itself, with the directory unreachable.

use std::sync::Arc;
use std::time::Duration;

use mailfleet_filter::rules::{GTUBE, RuleSet};
use mailfleet_filter::{FilterService, Metrics as FilterMetrics};
use mailfleet_runtime::{CancellationToken, Config, Context};
use mailfleet_smtp_edge::session::Recipient;
use mailfleet_smtp_edge::{AcceptError, Acceptor, Envelope, QueueAcceptor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn envelope() -> Envelope {
    Envelope {
        session_id: "s1".into(),
        client_ip: "192.0.2.1".parse().unwrap(),
        helo: "client.example".into(),
        esmtp: true,
        tls: None,
        auth_account: None,
        mail_from: "sender@client.example".into(),
        recipients: vec![Recipient {
            address: "alice@example.org".into(),
            account: "alice@example.org".into(),
            notify: Some("SUCCESS,FAILURE".into()),
            orcpt: Some("rfc822;alice@example.org".into()),
        }],
        dsn_ret: Some("HDRS"),
        dsn_envid: Some("env-1".into()),
    }
}

async fn filter_server() -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let service = FilterService::new(RuleSet::default(), FilterMetrics::default());
    tokio::spawn(mailfleet_filter::serve(
        listener,
        service,
        shutdown.clone(),
        || {},
    ));
    (format!("http://{addr}"), shutdown)
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn context(dir: &std::path::Path, filter_url: String) -> Arc<Context> {
    let mut config = Config {
        data_dir: dir.to_owned(),
        hostname: "mx.test.example".into(),
        ..Default::default()
    };
    config.services.filter_url = filter_url;
    Context::new(config)
}

#[tokio::test]
async fn accepted_message_is_spooled_and_queued_with_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (filter_url, stop_filter) = filter_server().await;
    let ctx = context(dir.path(), filter_url);
    let acceptor = QueueAcceptor::new(ctx.clone()).unwrap();

    let message = b"Message-ID: <m1@client.example>\r\nSubject: hi\r\n\r\nhello\r\n".to_vec();
    let id = acceptor.accept(&envelope(), message.clone()).await.unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    let queue = ctx.queue().await.unwrap();
    let leased = queue
        .take(Duration::from_secs(2), Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the message is queued");
    let entry = &leased.entry;
    assert_eq!(entry.id, id);
    assert_eq!(entry.mail_from, "sender@client.example");
    assert_eq!(entry.recipients.len(), 1);
    assert_eq!(entry.recipients[0].account, "alice@example.org");
    // RFC 3461 parameters travel with the entry to the delivery worker.
    assert_eq!(entry.recipients[0].dsn_notify, "SUCCESS,FAILURE");
    assert_eq!(entry.recipients[0].dsn_orcpt, "rfc822;alice@example.org");
    assert_eq!(
        (entry.dsn_ret.as_str(), entry.dsn_envid.as_str()),
        ("HDRS", "env-1")
    );
    assert_eq!(entry.message_id, "<m1@client.example>");
    assert_eq!(entry.verdict, 0);
    assert!(entry.received_at_ms > 0);

    let blob = ctx.spool().await.unwrap().get(&entry.blob).await.unwrap();
    assert_eq!(blob.len() as u64, entry.size);
    let text = String::from_utf8(blob).unwrap();
    assert!(
        text.starts_with(
            "X-Spam-Status: No, score=0.0 rules=\r\nX-Mailfleet-Verdict: accept\r\n\
             Received: from client.example ([192.0.2.1])\r\n\tby mx.test.example (Mailfleet) with ESMTP id "
        ),
        "{text}"
    );
    assert!(text.contains(&id));
    assert!(text.ends_with(std::str::from_utf8(&message).unwrap()));
    stop_filter.cancel();
}

#[tokio::test]
async fn gtube_is_rejected_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (filter_url, stop_filter) = filter_server().await;
    let ctx = context(dir.path(), filter_url);
    let acceptor = QueueAcceptor::new(ctx.clone()).unwrap();
    let mut message = b"Subject: spam\r\n\r\n".to_vec();
    message.extend_from_slice(GTUBE);
    message.extend_from_slice(b"\r\n");
    match acceptor.accept(&envelope(), message).await {
        Err(AcceptError::Rejected {
            code,
            enhanced,
            reason,
        }) => {
            assert_eq!((code, enhanced.as_str()), (554, "5.7.1"));
            assert!(reason.contains("GTUBE"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(ctx.queue().await.unwrap().depth().await.unwrap(), 0);
    stop_filter.cancel();
}

#[tokio::test]
async fn unreachable_filter_means_no_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port().await;
    let ctx = context(dir.path(), format!("http://127.0.0.1:{port}"));
    let acceptor = QueueAcceptor::new(ctx.clone()).unwrap();
    let result = acceptor
        .accept(&envelope(), b"Subject: x\r\n\r\nx\r\n".to_vec())
        .await;
    assert!(
        matches!(result, Err(AcceptError::FilterUnavailable(_))),
        "{result:?}"
    );
    assert_eq!(ctx.queue().await.unwrap().depth().await.unwrap(), 0);
}

#[tokio::test]
async fn run_serves_smtp_and_answers_451_when_the_directory_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        hostname: "mx.test.example".into(),
        ..Default::default()
    };
    config.listen.smtp = format!("127.0.0.1:{}", closed_port().await);
    config.listen.submission = String::new();
    config.listen.submissions = String::new();
    config.services.mailstore_url = format!("http://127.0.0.1:{}", closed_port().await);
    let addr = config.listen.smtp.clone();
    let ctx = Context::new(config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(mailfleet_smtp_edge::run(ctx.clone(), shutdown.clone()));

    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(&addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = BufReader::new(stream.expect("smtp-edge listens"));
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 mx.test.example ESMTP Mailfleet\r\n");
    assert_eq!(ctx.readiness.report().1, vec![("smtp-edge".into(), true)]);

    client
        .get_mut()
        .write_all(b"HELO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<alice@example.org>\r\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        client.read_line(&mut line).await.unwrap();
        replies.push(line);
    }
    assert_eq!(
        replies[2],
        "451 4.4.3 directory temporarily unavailable, try again later\r\n"
    );

    let mut metrics = String::new();
    prometheus_client::encoding::text::encode(&mut metrics, &ctx.metrics.lock().unwrap()).unwrap();
    assert!(
        metrics.contains("mailfleet_smtp_connections_total{result=\"accepted\"} 1"),
        "{metrics}"
    );

    shutdown.cancel();
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    assert_eq!(line, "421 4.3.2 service shutting down\r\n");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!ctx.readiness.report().0);
}
