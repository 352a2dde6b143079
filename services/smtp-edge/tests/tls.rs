//! TLS: STARTTLS on the MX and submission, implicit TLS on submissions,
//! with a test CA (rcgen) whose root the client trusts and verifies the
//! server's chain against; AUTH only after TLS; the PROXY protocol and the
//! per-IP limit on real TCP listeners.

mod common;

use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::tls::TlsProvider;
use mailfleet_smtp_edge::session::{Session, serve};
use mailfleet_smtp_edge::{Metrics, Mode, SessionConfig, serve_listener};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::TestAcceptor;

const HOST: &str = "mx.test.example";

/// A test CA and a server certificate for [`HOST`] signed by it.
struct TestCa {
    root: CertificateDer<'static>,
    provider: Arc<TlsProvider>,
    _dir: tempfile::TempDir,
}

fn test_ca() -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Mailfleet Test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TestCa {
        root: ca.der().clone(),
        provider: Arc::new(TlsProvider::from_files(&cert_file, &key_file).unwrap()),
        _dir: dir,
    }
}

fn connector(root: &CertificateDer<'static>, tls12_only: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::ALL_VERSIONS
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn line<R: AsyncRead + Unpin>(read: &mut BufReader<R>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_line(&mut line))
        .await
        .expect("a reply in time")
        .unwrap();
    line.trim_end_matches("\r\n").to_owned()
}

/// Sends `command` and returns every line of the reply.
async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    command: &str,
) -> Vec<String> {
    stream
        .get_mut()
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .unwrap();
    let mut lines = Vec::new();
    loop {
        let l = line(stream).await;
        let last = l.as_bytes().get(3) != Some(&b'-');
        lines.push(l);
        if last {
            return lines;
        }
    }
}

fn config(mode: Mode) -> SessionConfig {
    SessionConfig {
        mode,
        ..common::config()
    }
}

fn services(acceptor: Arc<TestAcceptor>, ca: &TestCa) -> mailfleet_smtp_edge::Services {
    let mut services = common::services(acceptor);
    services.tls = Some(ca.provider.clone());
    services
}

fn session(mode: Mode, acceptor: Arc<TestAcceptor>, ca: &TestCa) -> Session {
    Session::new(
        Arc::new(config(mode)),
        services(acceptor, ca),
        Metrics::default(),
        "test".into(),
        "192.0.2.1".parse().unwrap(),
    )
}

#[tokio::test]
async fn starttls_on_submission_then_auth_and_a_message_with_tls_recorded() {
    let ca = test_ca();
    let acceptor = Arc::new(TestAcceptor::default());
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(
        server,
        session(Mode::Submission, acceptor.clone(), &ca),
        CancellationToken::new(),
    ));
    let mut client = BufReader::new(client);
    assert!(line(&mut client).await.starts_with("220 "));
    let ehlo = command(&mut client, "EHLO mua.example").await;
    assert!(ehlo.contains(&"250-STARTTLS".to_owned()), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    assert_eq!(
        command(&mut client, "STARTTLS").await,
        ["220 2.0.0 ready to start TLS"]
    );
    let tls = connector(&ca.root, false)
        .connect(ServerName::try_from(HOST).unwrap(), client.into_inner())
        .await
        .expect("handshake with a chain verified against the test CA");
    let mut client = BufReader::new(tls);
    // RFC 3207 §4.2: the session starts over; no second greeting.
    let ehlo = command(&mut client, "EHLO mua.example").await;
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert!(
        ehlo.contains(&"250-AUTH PLAIN LOGIN".to_owned()),
        "{ehlo:?}"
    );
    assert_eq!(
        command(&mut client, "STARTTLS").await,
        ["503 5.5.1 TLS already active"]
    );
    assert_eq!(
        command(
            &mut client,
            "AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA=="
        )
        .await,
        ["235 2.7.0 authentication successful"]
    );
    for (cmd, reply) in [
        ("MAIL FROM:<alice@example.org>", "250 2.1.0 sender ok"),
        (
            "RCPT TO:<friend@elsewhere.example>",
            "250 2.1.5 recipient ok",
        ),
        ("DATA", "354 2.0.0 end data with <CR><LF>.<CR><LF>"),
        (
            "Subject: over tls\r\n\r\nhi\r\n.",
            "250 2.0.0 Ok: queued as Q1",
        ),
        ("QUIT", "221 2.0.0 bye"),
    ] {
        assert_eq!(command(&mut client, cmd).await, [reply], "{cmd}");
    }
    task.await.unwrap().unwrap();
    let accepted = acceptor.accepted.lock().unwrap();
    let (envelope, _) = &accepted[0];
    let tls = envelope.tls.as_deref().unwrap();
    assert!(tls.starts_with("TLSv1.3 TLS13_"), "{tls}");
    assert_eq!(envelope.auth_account.as_deref(), Some("alice@example.org"));
    assert_eq!(envelope.recipients[0].account, "");
}

#[tokio::test]
async fn tls12_is_accepted_and_recorded() {
    let ca = test_ca();
    let acceptor = Arc::new(TestAcceptor::default());
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(
        server,
        session(Mode::Mx, acceptor.clone(), &ca),
        CancellationToken::new(),
    ));
    let mut client = BufReader::new(client);
    line(&mut client).await;
    command(&mut client, "EHLO c.example").await;
    command(&mut client, "STARTTLS").await;
    let tls = connector(&ca.root, true)
        .connect(ServerName::try_from(HOST).unwrap(), client.into_inner())
        .await
        .unwrap();
    let mut client = BufReader::new(tls);
    command(&mut client, "EHLO c.example").await;
    for cmd in [
        "MAIL FROM:<a@c.example>",
        "RCPT TO:<alice@example.org>",
        "DATA",
        "x\r\n.",
        "QUIT",
    ] {
        command(&mut client, cmd).await;
    }
    task.await.unwrap().unwrap();
    let accepted = acceptor.accepted.lock().unwrap();
    let tls = accepted[0].0.tls.clone().unwrap();
    assert!(tls.starts_with("TLSv1.2 TLS_ECDHE_"), "{tls}");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_in_clear_are_discarded() {
    // CVE-2011-0411: a man in the middle appends commands after STARTTLS;
    // they must never run inside the TLS session.
    let ca = test_ca();
    let acceptor = Arc::new(TestAcceptor::default());
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(
        server,
        session(Mode::Mx, acceptor.clone(), &ca),
        CancellationToken::new(),
    ));
    let mut client = BufReader::new(client);
    line(&mut client).await;
    command(&mut client, "EHLO c.example").await;
    assert_eq!(
        command(
            &mut client,
            "STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<alice@example.org>"
        )
        .await,
        ["220 2.0.0 ready to start TLS"]
    );
    let tls = connector(&ca.root, false)
        .connect(ServerName::try_from(HOST).unwrap(), client.into_inner())
        .await
        .unwrap();
    let mut client = BufReader::new(tls);
    // The first reply inside TLS answers our EHLO, not the injected MAIL,
    // and there is no transaction.
    let ehlo = command(&mut client, "EHLO c.example").await;
    assert!(
        ehlo[0].starts_with("250-mx.test.example greets"),
        "{ehlo:?}"
    );
    assert_eq!(
        command(&mut client, "DATA").await,
        ["503 5.5.1 bad sequence of commands"]
    );
    command(&mut client, "QUIT").await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let ca = test_ca();
    let other = test_ca();
    let (client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve(
        server,
        session(Mode::Mx, Default::default(), &ca),
        CancellationToken::new(),
    ));
    let mut client = BufReader::new(client);
    line(&mut client).await;
    command(&mut client, "EHLO c.example").await;
    command(&mut client, "STARTTLS").await;
    let result = connector(&other.root, false)
        .connect(ServerName::try_from(HOST).unwrap(), client.into_inner())
        .await;
    assert!(result.is_err(), "an unknown issuer must not verify");
    let _ = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap();
}

async fn listener(
    mode: Mode,
    config: SessionConfig,
    services: mailfleet_smtp_edge::Services,
) -> (std::net::SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_listener(
        listener,
        Arc::new(SessionConfig { mode, ..config }),
        services,
        Metrics::default(),
        shutdown.clone(),
        || {},
    ));
    (addr, shutdown)
}

#[tokio::test]
async fn submissions_speaks_tls_from_the_first_byte() {
    let ca = test_ca();
    let acceptor = Arc::new(TestAcceptor::default());
    let (addr, shutdown) = listener(
        Mode::Submissions,
        common::config(),
        services(acceptor.clone(), &ca),
    )
    .await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector(&ca.root, false)
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let mut client = BufReader::new(tls);
    assert_eq!(
        line(&mut client).await,
        "220 mx.test.example ESMTP Mailfleet"
    );
    let ehlo = command(&mut client, "EHLO mua.example").await;
    assert!(
        ehlo.contains(&"250-AUTH PLAIN LOGIN".to_owned()),
        "{ehlo:?}"
    );
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert_eq!(
        command(&mut client, "AUTH LOGIN").await,
        ["334 VXNlcm5hbWU6"]
    );
    assert_eq!(
        command(&mut client, "Ym9iQGV4YW1wbGUub3Jn").await,
        ["334 UGFzc3dvcmQ6"]
    );
    assert_eq!(
        command(&mut client, "aHVudGVyMg==").await,
        ["235 2.7.0 authentication successful"]
    );
    assert_eq!(
        command(&mut client, "MAIL FROM:<alice@example.org>").await,
        ["553 5.7.1 sender address not owned by the authenticated user"]
    );
    command(&mut client, "QUIT").await;
    shutdown.cancel();
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_proxy_gives_the_real_client_ip() {
    let acceptor = Arc::new(TestAcceptor::default());
    let config = SessionConfig {
        proxy_trusted_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..common::config()
    };
    let (addr, shutdown) = listener(Mode::Mx, config, common::services(acceptor.clone())).await;

    // v1
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    client
        .get_mut()
        .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.25 40000 25\r\n")
        .await
        .unwrap();
    assert!(line(&mut client).await.starts_with("220 "));
    for cmd in [
        "HELO c.example",
        "MAIL FROM:<a@c.example>",
        "RCPT TO:<alice@example.org>",
        "DATA",
        "x\r\n.",
        "QUIT",
    ] {
        command(&mut client, cmd).await;
    }
    // v2, IPv6
    let mut header = mailfleet_smtp_edge::proxy::V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let client_ip: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    header.extend_from_slice(&client_ip.octets());
    header.extend_from_slice(&[0; 16]);
    header.extend_from_slice(&[0x9c, 0x40, 0, 25]);
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    client.get_mut().write_all(&header).await.unwrap();
    assert!(line(&mut client).await.starts_with("220 "));
    for cmd in [
        "HELO c.example",
        "MAIL FROM:<a@c.example>",
        "RCPT TO:<alice@example.org>",
        "DATA",
        "x\r\n.",
        "QUIT",
    ] {
        command(&mut client, cmd).await;
    }
    {
        let accepted = acceptor.accepted.lock().unwrap();
        assert_eq!(accepted[0].0.client_ip.to_string(), "203.0.113.7");
        assert_eq!(accepted[1].0.client_ip.to_string(), "2001:db8::7");
    }

    // A trusted peer without a header: closed without a greeting.
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    client
        .get_mut()
        .write_all(b"EHLO c.example\r\n")
        .await
        .unwrap();
    // Closed (or reset, since our EHLO was never read); never a greeting.
    let mut got = String::new();
    let read = tokio::time::timeout(Duration::from_secs(15), client.read_line(&mut got))
        .await
        .expect("closed in time");
    assert!(read.is_err() || got.is_empty(), "{got:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_just_a_bad_command() {
    let (addr, shutdown) = listener(
        Mode::Mx,
        common::config(),
        common::services(Default::default()),
    )
    .await;
    let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(line(&mut client).await.starts_with("220 "));
    assert_eq!(
        command(&mut client, "PROXY TCP4 203.0.113.7 192.0.2.25 40000 25").await,
        ["500 5.5.1 command unrecognized"]
    );
    shutdown.cancel();
}

#[tokio::test]
async fn connections_per_ip_over_the_limit_get_421() {
    let config = SessionConfig {
        max_connections_per_ip: 2,
        ..common::config()
    };
    let (addr, shutdown) = listener(Mode::Mx, config, common::services(Default::default())).await;
    let mut first = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut second = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(line(&mut first).await.starts_with("220 "));
    assert!(line(&mut second).await.starts_with("220 "));
    let mut third = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        line(&mut third).await,
        "421 4.7.0 too many connections, try again later"
    );
    // One leaves, the next comes in.
    command(&mut first, "QUIT").await;
    assert_eq!(line(&mut first).await, "");
    let mut fourth = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(line(&mut fourth).await.starts_with("220 "));
    shutdown.cancel();
}
