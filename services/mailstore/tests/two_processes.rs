//! Two `mailstore` replicas are two processes on one PostgreSQL database
//! (DESIGN.md: the cluster runs the same binary once per replica). Both take
//! deliveries for one mailbox at the same time, over their own gRPC
//! endpoints, and must never hand out the same UID: every UID from 1 to the
//! count exactly once, UIDNEXT one past the last, every MODSEQ distinct and
//! HIGHESTMODSEQ the largest of them (RFC 3501 §2.3.1.1, RFC 7162 §3.1).
//!
//! Runs `target/debug/mailfleet` (or `MAILFLEET_BIN`); needs
//! `MAILFLEET_TEST_POSTGRES_URL` and fails, not skips, without it.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailfleet_proto::MAX_GRPC_MESSAGE_BYTES;
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{
    AddUserRequest, DeliverRequest, DomainRequest, MailboxRequest, MessageRequest,
};
use sqlx::{AnyConnection, Connection};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const POSTGRES_ENV: &str = "MAILFLEET_TEST_POSTGRES_URL";
const ACCOUNT: &str = "race@replicas.test";
/// Messages each replica delivers, and concurrent callers per replica.
const PER_REPLICA: usize = 200;
const CALLERS: usize = 8;

/// The mailfleet binary: `MAILFLEET_BIN`, or the one cargo built beside
/// this test (`target/debug/deps/<test>` → `target/debug/mailfleet`).
fn mailfleet_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("MAILFLEET_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("mailfleet");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p mailfleet) or set MAILFLEET_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh database on the test server; dropped by [`Database::drop_now`].
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Database {
        let admin_url = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
            panic!(
                "{POSTGRES_ENV} is not set: two mailstore processes need a shared PostgreSQL \
                 (e.g. {POSTGRES_ENV}=postgres://postgres@127.0.0.1:15432/postgres)"
            )
        });
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = AnyConnection::connect(&admin_url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        let base = admin_url.rsplit_once('/').map_or(&*admin_url, |(b, _)| b);
        let url = format!("{base}/{name}");
        Database {
            admin_url,
            name,
            url,
        }
    }

    async fn drop_now(self) {
        let mut conn = AnyConnection::connect(&self.admin_url).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .ok();
    }
}

/// One `mailfleet serve --target mailstore` process, killed on drop.
struct Replica {
    child: Child,
    grpc: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Its own data directory; the blob directory and the database are shared,
    /// as they are between replicas in a cluster.
    async fn start(dir: &Path, database: &str, blobs: &Path) -> Replica {
        let (grpc, admin) = (free_port(), free_port());
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(mailfleet_bin())
            .args(["serve", "--target", "mailstore", "--data-dir"])
            .arg(dir)
            .env("MAILFLEET__BACKENDS__METADATA_URL", database)
            .env("MAILFLEET__BACKENDS__BLOB_DIR", blobs)
            .env(
                "MAILFLEET__LISTEN__MAILSTORE_GRPC",
                format!("127.0.0.1:{grpc}"),
            )
            .env("MAILFLEET__LISTEN__ADMIN", format!("127.0.0.1:{admin}"))
            .env("MAILFLEET_ADMIN_TOKEN", "two-processes-test")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut replica = Replica { child, grpc };
        replica.wait_ready(admin, dir).await;
        replica
    }

    async fn wait_ready(&mut self, admin: u16, dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)).await {
                s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.unwrap();
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line).await;
                if line.contains(" 200 ") {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "mailstore exited with {status}: {}",
                    std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mailstore on {admin} never ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> MailstoreClient<Channel> {
        MailstoreClient::new(self.channel().await)
            .max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES)
    }
}

fn message(tag: &str) -> Vec<u8> {
    format!(
        "From: sender@remote.test\r\nTo: {ACCOUNT}\r\nSubject: {tag}\r\n\
         Message-ID: <{tag}@remote.test>\r\n\r\nbody of {tag}\r\n"
    )
    .into_bytes()
}

/// Delivers `PER_REPLICA` messages tagged `<replica>-<n>` through `client`
/// from `CALLERS` concurrent tasks; returns (tag, uid) of each.
async fn deliver_all(
    client: MailstoreClient<Channel>,
    replica: &'static str,
) -> Vec<(String, u32)> {
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for n in (caller..PER_REPLICA).step_by(CALLERS) {
                let tag = format!("{replica}-{n}");
                let reply = client
                    .deliver(DeliverRequest {
                        account: ACCOUNT.into(),
                        mailbox: String::new(),
                        message: message(&tag),
                        idempotency_key: format!("queue-{tag}/{ACCOUNT}"),
                        ..DeliverRequest::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("deliver {tag} via {replica}: {e}"))
                    .into_inner();
                assert!(!reply.duplicate, "{tag} reported as a duplicate");
                out.push((tag, reply.uid));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_mailstore_processes_on_one_postgres_never_share_a_uid() {
    let db = Database::create().await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    let a = Replica::start(&dir.path().join("a"), &db.url, &blobs).await;
    let b = Replica::start(&dir.path().join("b"), &db.url, &blobs).await;
    let (client_a, client_b) = (a.client().await, b.client().await);

    let mut directory = DirectoryClient::new(a.channel().await);
    directory
        .add_domain(DomainRequest {
            name: "replicas.test".into(),
        })
        .await
        .unwrap();
    directory
        .add_user(AddUserRequest {
            address: ACCOUNT.into(),
            password: "pw".into(),
        })
        .await
        .unwrap();

    let started = Instant::now();
    let (from_a, from_b) = tokio::join!(
        deliver_all(client_a.clone(), "a"),
        deliver_all(client_b.clone(), "b")
    );
    let elapsed = started.elapsed();
    let total = 2 * PER_REPLICA;
    println!(
        "{total} deliveries through two processes in {elapsed:?} ({:.0}/s)",
        total as f64 / elapsed.as_secs_f64()
    );

    // Each delivery got its own UID, and together they are 1..=total.
    let delivered: Vec<(String, u32)> = from_a.into_iter().chain(from_b).collect();
    let uids: BTreeSet<u32> = delivered.iter().map(|(_, uid)| *uid).collect();
    assert_eq!(uids.len(), total, "some UID was handed out twice");
    assert_eq!(uids, (1..=total as u32).collect::<BTreeSet<_>>());

    // Both replicas see the same mailbox: dense UIDs, distinct MODSEQs,
    // UIDNEXT and HIGHESTMODSEQ consistent with them.
    let mailbox = MailboxRequest {
        account: ACCOUNT.into(),
        mailbox: "INBOX".into(),
    };
    for mut client in [client_a.clone(), client_b.clone()] {
        let listed = client
            .list_messages(mailbox.clone())
            .await
            .unwrap()
            .into_inner()
            .messages;
        let listed_uids: Vec<u32> = listed.iter().map(|m| m.uid).collect();
        assert_eq!(listed_uids, (1..=total as u32).collect::<Vec<_>>());
        let modseqs: BTreeSet<u64> = listed.iter().map(|m| m.modseq).collect();
        assert_eq!(modseqs.len(), total, "two messages share a MODSEQ");
        let status = client
            .select_mailbox(mailbox.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.exists as usize, total);
        assert_eq!(status.uid_next, total as u32 + 1);
        assert_eq!(Some(&status.highest_modseq), modseqs.last());
    }

    // Each UID holds the message it was reported for, whichever replica
    // stored it and whichever one reads it.
    for (i, (tag, uid)) in delivered.iter().enumerate() {
        let mut reader = if i % 2 == 0 {
            client_a.clone()
        } else {
            client_b.clone()
        };
        let body = reader
            .fetch_body(MessageRequest {
                account: ACCOUNT.into(),
                mailbox: "INBOX".into(),
                uid: *uid,
            })
            .await
            .unwrap()
            .into_inner()
            .message;
        assert_eq!(body, message(tag), "uid {uid}");
    }

    // A redelivery through the other replica is recognised: same UID,
    // nothing stored (exactly once per queue id and recipient).
    let mut client_b = client_b;
    for (tag, uid) in delivered
        .iter()
        .filter(|(tag, _)| tag.starts_with("a-"))
        .take(20)
    {
        let reply = client_b
            .deliver(DeliverRequest {
                account: ACCOUNT.into(),
                mailbox: String::new(),
                message: message(tag),
                idempotency_key: format!("queue-{tag}/{ACCOUNT}"),
                ..DeliverRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.duplicate && reply.uid == *uid, "{tag}: {reply:?}");
    }
    let status = client_b.select_mailbox(mailbox).await.unwrap().into_inner();
    assert_eq!(status.exists as usize, total);

    drop((a, b));
    db.drop_now().await;
}
