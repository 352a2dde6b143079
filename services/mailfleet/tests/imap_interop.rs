//! Interop with an IMAP client nobody here wrote: `async-imap` (tokio),
//! over implicit TLS (RFC 8314) to a real `mailfleet serve` single node,
//! trusting the certificate the node generated. The client logs in,
//! creates a folder, appends, selects, fetches, flags, searches, copies,
//! moves, idles until a second connection appends, expunges and logs out;
//! the test checks each step through the client's own parsed answers.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_imap::Session;
use async_imap::extensions::idle::IdleResponse;
use async_imap::types::Flag;
use futures::TryStreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const BIN: &str = env!("CARGO_BIN_EXE_mailfleet");
const USER: &str = "alice@interop.test";
const PASSWORD: &str = "interop secret";
const TOKEN: &str = "imap-interop-token";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The node, killed when the test ends however it ends.
struct Node {
    child: Child,
    admin: u16,
    imaps: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    async fn start(dir: &Path) -> Node {
        let keys = [
            "smtp",
            "submission",
            "submissions",
            "imap",
            "imaps",
            "pop3",
            "pop3s",
            "admin",
            "filter_grpc",
            "mailstore_grpc",
        ];
        let ports: Vec<(&str, u16)> = keys.iter().map(|k| (*k, free_port())).collect();
        let port = |key: &str| ports.iter().find(|(k, _)| *k == key).unwrap().1;
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--target", "all", "--data-dir"])
            .arg(dir)
            .env("MAILFLEET_ADMIN_TOKEN", TOKEN)
            // No lookups leave the machine: an unused local port answers
            // nothing, and this test sends no SMTP.
            .env(
                "MAILFLEET__DNS__SERVERS",
                format!("[\"127.0.0.1:{}\"]", free_port()),
            )
            .env(
                "MAILFLEET__SERVICES__FILTER_URL",
                format!("http://127.0.0.1:{}", port("filter_grpc")),
            )
            .env(
                "MAILFLEET__SERVICES__MAILSTORE_URL",
                format!("http://127.0.0.1:{}", port("mailstore_grpc")),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, port) in &ports {
            command.env(
                format!("MAILFLEET__LISTEN__{}", key.to_uppercase()),
                format!("127.0.0.1:{port}"),
            );
        }
        let node = Node {
            child: command.spawn().unwrap(),
            admin: port("admin"),
            imaps: port("imaps"),
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.admin)).await {
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.unwrap();
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line).await;
                if line.contains(" 200 ") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "mailfleet never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cli(&self, args: &[&str]) {
        let out = Command::new(BIN)
            .args(["--admin-url", &format!("http://127.0.0.1:{}", self.admin)])
            .args(args)
            .env("MAILFLEET_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

type Imap = Session<TlsStream<TcpStream>>;

/// Logs in over implicit TLS, trusting only `certificate`.
async fn login(port: u16, certificate: &CertificateDer<'static>) -> Imap {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the node's certificate verifies for localhost");
    let mut client = async_imap::Client::new(tls);
    let greeting = client.read_response().await.unwrap().expect("a greeting");
    assert!(
        format!("{:?}", greeting.parsed()).contains("Ok"),
        "{:?}",
        greeting.parsed()
    );
    client
        .login(USER, PASSWORD)
        .await
        .map_err(|(e, _)| e)
        .expect("LOGIN accepted")
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Bob <bob@remote.test>\r\nTo: {USER}\r\nSubject: {subject}\r\n\
         Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@remote.test>\r\n\
         \r\n{body}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_imap_client_over_tls_creates_appends_copies_moves_flags_searches_idles_expunges() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await;
    node.cli(&["domain", "add", "interop.test"]);
    node.cli(&["user", "add", USER, "--password", PASSWORD]);
    let pem = std::fs::read(dir.path().join("tls/self-signed.crt")).unwrap();
    let certificate = CertificateDer::from_pem_slice(&pem).unwrap();

    let mut imap = login(node.imaps, &certificate).await;
    let capabilities = imap.capabilities().await.unwrap();
    for capability in ["IMAP4rev1", "IDLE", "MOVE", "UIDPLUS"] {
        assert!(capabilities.has_str(capability), "{capability}");
    }

    // CREATE and APPEND.
    imap.create("Projects/Interop").await.unwrap();
    let names: Vec<String> = imap
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .map_ok(|n| n.name().to_owned())
        .try_collect()
        .await
        .unwrap();
    for name in ["INBOX", "Junk", "Trash", "Projects", "Projects/Interop"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    imap.append(
        "Projects/Interop",
        Some("(\\Seen)"),
        None,
        message("report", "the quarterly numbers"),
    )
    .await
    .unwrap();
    imap.append("Projects/Interop", None, None, message("lunch", "noon?"))
        .await
        .unwrap();

    // SELECT and FETCH.
    let mailbox = imap.select("Projects/Interop").await.unwrap();
    assert_eq!(mailbox.exists, 2);
    let fetched: Vec<_> = imap
        .fetch("1:*", "(UID FLAGS BODY.PEEK[])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(fetched.len(), 2);
    let first = fetched.iter().find(|f| f.message == 1).unwrap();
    assert!(first.flags().any(|f| f == Flag::Seen));
    let body = String::from_utf8_lossy(first.body().unwrap());
    assert!(body.contains("Subject: report"), "{body}");
    assert!(body.contains("the quarterly numbers"), "{body}");

    // STORE flags, then SEARCH by flag and by text.
    let stored: Vec<_> = imap
        .store("2", "+FLAGS (\\Flagged)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(stored[0].flags().any(|f| f == Flag::Flagged), "{stored:?}");
    let flagged = imap.search("FLAGGED").await.unwrap();
    assert_eq!(flagged.into_iter().collect::<Vec<_>>(), [2]);
    let unseen = imap.search("UNSEEN").await.unwrap();
    assert_eq!(unseen.into_iter().collect::<Vec<_>>(), [2]);
    let by_subject = imap.uid_search("SUBJECT report").await.unwrap();
    assert_eq!(by_subject.len(), 1);

    // COPY to INBOX, MOVE to Trash.
    imap.copy("1", "INBOX").await.unwrap();
    imap.mv("2", "Trash").await.unwrap();
    let status = imap.status("Trash", "(MESSAGES)").await.unwrap();
    assert_eq!(status.exists, 1);
    let mailbox = imap.select("Projects/Interop").await.unwrap();
    assert_eq!(mailbox.exists, 1, "the moved message left");

    // IDLE on INBOX sees a message a second connection appends.
    let inbox = imap.select("INBOX").await.unwrap();
    assert_eq!(inbox.exists, 1, "the copy");
    let mut idle = imap.idle();
    idle.init().await.unwrap();
    let appender = tokio::spawn({
        let certificate = certificate.clone();
        let port = node.imaps;
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut other = login(port, &certificate).await;
            other
                .append("INBOX", None, None, message("news", "while you idled"))
                .await
                .unwrap();
            other.logout().await.unwrap();
        }
    });
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(20));
    match wait.await.unwrap() {
        IdleResponse::NewData(data) => {
            let text = format!("{:?}", data.parsed());
            assert!(text.contains("Exists(2)"), "{text}");
        }
        other => panic!("IDLE ended without new data: {other:?}"),
    }
    let mut imap = idle.done().await.unwrap();
    appender.await.unwrap();

    // EXPUNGE a \Deleted message.
    let inbox = imap.select("INBOX").await.unwrap();
    assert_eq!(inbox.exists, 2);
    imap.store("1", "+FLAGS.SILENT (\\Deleted)")
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let expunged: Vec<u32> = imap.expunge().await.unwrap().try_collect().await.unwrap();
    assert_eq!(expunged, [1]);
    let left: Vec<_> = imap
        .fetch("1:*", "(BODY.PEEK[HEADER])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    let header = String::from_utf8_lossy(left[0].header().unwrap_or_default()).into_owned();
    assert!(header.contains("Subject: news"), "{header:?}");

    imap.logout().await.unwrap();
}
