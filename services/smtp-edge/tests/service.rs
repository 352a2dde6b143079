//! Service tests: timeouts, graceful shutdown and the connection limit,
//! over in-memory streams and over TCP on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::CancellationToken;
use mailfleet_smtp_edge::session::{Session, serve};
use mailfleet_smtp_edge::{Metrics, SessionConfig, serve_listener};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::TestAcceptor;

async fn reply<R: AsyncRead + Unpin>(read: &mut BufReader<R>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line))
        .await
        .expect("a reply in time")
        .unwrap();
    line.trim_end_matches("\r\n").to_owned()
}

fn session(config: SessionConfig, acceptor: Arc<TestAcceptor>, metrics: Metrics) -> Session {
    Session::new(
        Arc::new(config),
        common::services(acceptor),
        metrics,
        "test".into(),
        "192.0.2.1".parse().unwrap(),
    )
}

#[tokio::test]
async fn idle_client_gets_421_after_the_command_timeout() {
    let config = SessionConfig {
        command_timeout: Duration::from_millis(100),
        ..common::config()
    };
    let (client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(serve(
        server,
        session(config, Default::default(), Metrics::default()),
        CancellationToken::new(),
    ));
    let mut client = BufReader::new(client);
    assert!(reply(&mut client).await.starts_with("220 "));
    assert_eq!(reply(&mut client).await, "421 4.4.2 timeout, closing");
    assert_eq!(reply(&mut client).await, "");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_message_in_data_finish_then_says_421() {
    let acceptor = Arc::new(TestAcceptor::default());
    let metrics = Metrics::default();
    let shutdown = CancellationToken::new();
    let (client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(serve(
        server,
        session(common::config(), acceptor.clone(), metrics.clone()),
        shutdown.clone(),
    ));
    let mut client = BufReader::new(client);
    assert!(reply(&mut client).await.starts_with("220 "));
    client
        .get_mut()
        .write_all(
            b"HELO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n",
        )
        .await
        .unwrap();
    for expected in ["250 ", "250 2.1.0", "250 2.1.5", "354 "] {
        assert!(reply(&mut client).await.starts_with(expected));
    }
    client
        .get_mut()
        .write_all(b"half a message\r\n")
        .await
        .unwrap();
    shutdown.cancel();
    // The transaction in progress completes; the next command boundary
    // is where the session stops, buffered commands included.
    client
        .get_mut()
        .write_all(b"the end\r\n.\r\nNOOP\r\n")
        .await
        .unwrap();
    assert_eq!(reply(&mut client).await, "250 2.0.0 Ok: queued as Q1");
    assert_eq!(reply(&mut client).await, "421 4.3.2 service shutting down");
    assert_eq!(reply(&mut client).await, "");
    task.await.unwrap().unwrap();
    assert_eq!(acceptor.accepted.lock().unwrap().len(), 1);
    assert_eq!(metrics.transactions_with("queued"), 1);
}

async fn tcp_server(
    config: SessionConfig,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_listener(
        listener,
        Arc::new(config),
        common::services(Default::default()),
        Metrics::default(),
        shutdown.clone(),
        || {},
    ));
    (addr, shutdown, task)
}

#[tokio::test]
async fn shutdown_sends_421_to_idle_sessions_and_run_returns() {
    let (addr, shutdown, task) = tcp_server(common::config()).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert!(reply(&mut client).await.starts_with("220 mx.test.example"));
        client.get_mut().write_all(b"NOOP\r\n").await.unwrap();
        assert_eq!(reply(&mut client).await, "250 2.0.0 ok");
        sessions.push(client);
    }
    shutdown.cancel();
    for client in &mut sessions {
        assert_eq!(reply(client).await, "421 4.3.2 service shutting down");
        assert_eq!(reply(client).await, "");
    }
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve_listener returns once sessions are done")
        .unwrap();
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let config = SessionConfig {
        max_connections: 1,
        ..common::config()
    };
    let (addr, shutdown, task) = tcp_server(config).await;
    let mut first = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(reply(&mut first).await.starts_with("220 "));
    let mut second = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        reply(&mut second).await,
        "421 4.7.0 too many connections, try again later"
    );
    assert_eq!(reply(&mut second).await, "");
    // Once the first leaves, a new session is served.
    first.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(reply(&mut first).await, "221 2.0.0 bye");
    assert_eq!(reply(&mut first).await, "");
    let mut third = None;
    for _ in 0..50 {
        let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
        if reply(&mut client).await.starts_with("220 ") {
            third = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(third.is_some(), "the freed slot was never reused");
    shutdown.cancel();
    task.await.unwrap();
}

/// Repeated AUTH failures from one IP are answered more and more slowly
/// (from the fourth on: 1 s, 2 s, ... at most 5 s), then refused.
#[tokio::test(start_paused = true)]
async fn auth_failures_are_slowed_then_refused() {
    let config = SessionConfig {
        mode: mailfleet_smtp_edge::Mode::Submission,
        auth_failures_per_ip: 6,
        ..common::config()
    };
    let mut session = session(config, Default::default(), Metrics::default());
    session.tls_started("TLSv1.3 TEST".into());
    let (client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(serve(server, session, CancellationToken::new()));
    let mut client = BufReader::new(client);
    assert!(reply(&mut client).await.starts_with("220 "));
    client
        .get_mut()
        .write_all(b"EHLO m.example\r\n")
        .await
        .unwrap();
    while !reply(&mut client).await.starts_with("250 ") {}
    let mut waits = Vec::new();
    for _ in 0..6 {
        let start = tokio::time::Instant::now();
        client
            .get_mut()
            .write_all(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n\r\n")
            .await
            .unwrap();
        assert_eq!(
            reply(&mut client).await,
            "535 5.7.8 authentication credentials invalid"
        );
        waits.push(start.elapsed().as_secs());
    }
    assert_eq!(waits, [0, 0, 0, 1, 2, 3]);
    // The right password no longer gets a hearing from this IP.
    client
        .get_mut()
        .write_all(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(
        reply(&mut client).await,
        "454 4.7.0 too many authentication failures, try again later"
    );
    assert_eq!(reply(&mut client).await, "221 2.0.0 bye");
    task.await.unwrap().unwrap();
}
