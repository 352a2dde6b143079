//! What the delivery service tests share: a node with a real mailstore
//! (SQLite, gRPC on loopback), the SQLite queue, the spool, a test DNS
//! server, and SMTP peers on loopback addresses.

#![allow(dead_code)]

pub mod peer;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{MailboxRequest, MessageRequest};
use mailfleet_proto::queue::{QueueEntry, Recipient};
use mailfleet_runtime::{CancellationToken, Config, Context};
use mailfleet_testkit::DnsServer;
use tonic::transport::Channel;

pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A port free on 127.0.0.2 (the peers all listen on it, each on its own
/// address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((loopback(2), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_local_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    pub ctx: Arc<Context>,
    pub shutdown: CancellationToken,
    pub mailstore: MailstoreClient<Channel>,
    pub directory: DirectoryClient<Channel>,
    pub dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A node with mailstore (alice@example.com, bob@example.com) and
/// delivery running; remote MX at `smtp_port`; `tune` adjusts the config.
pub async fn node(dns: &DnsServer, smtp_port: u16, tune: impl FnOnce(&mut Config)) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_local_port();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        hostname: "mx.example.com".into(),
        ..Config::default()
    };
    config.listen.mailstore_grpc = format!("127.0.0.1:{grpc}");
    config.services.mailstore_url = format!("http://127.0.0.1:{grpc}");
    config.delivery.workers = 2;
    config.delivery.lease_secs = 30;
    config.delivery.retry_intervals = vec!["1s".into()];
    config.delivery.remote_smtp_port = smtp_port;
    config.dns.servers = vec![dns.addr().to_string()];
    config.dns.timeout_secs = 2;
    tune(&mut config);
    let ctx = Context::new(config);
    let shutdown = CancellationToken::new();

    let url = mailfleet_mailstore::store::database_url("", &ctx.config.data_dir);
    let store = mailfleet_mailstore::Store::open(&url, ctx.store_blobs().await.unwrap())
        .await
        .unwrap();
    store.add_domain("example.com").await.unwrap();
    store.add_user("alice@example.com", "pw").await.unwrap();
    store.add_user("bob@example.com", "pw").await.unwrap();
    store.close().await;

    tokio::spawn(mailfleet_mailstore::run(ctx.clone(), shutdown.clone()));
    wait_for("mailstore readiness", || {
        let ctx = ctx.clone();
        async move {
            ctx.readiness
                .report()
                .1
                .iter()
                .any(|(name, ready)| name == "mailstore" && *ready)
        }
    })
    .await;
    tokio::spawn(mailfleet_delivery::run(ctx.clone(), shutdown.clone()));
    let channel =
        mailfleet_runtime::grpc::lazy_channel(&format!("http://127.0.0.1:{grpc}")).unwrap();
    Node {
        ctx,
        shutdown,
        mailstore: MailstoreClient::new(channel.clone()),
        directory: DirectoryClient::new(channel),
        dir,
    }
}

impl Node {
    /// Spools `message` and enqueues it from `mail_from` to remote `to`.
    pub async fn send(&self, mail_from: &str, to: &[&str], message: &[u8]) -> String {
        let blob = self.ctx.spool().await.unwrap().put(message).await.unwrap();
        let id = uuid::Uuid::now_v7().to_string();
        let recipients = to
            .iter()
            .map(|address| Recipient {
                address: address.to_string(),
                ..Recipient::default()
            })
            .collect();
        self.ctx
            .queue()
            .await
            .unwrap()
            .enqueue(&QueueEntry {
                id: id.clone(),
                mail_from: mail_from.into(),
                recipients,
                blob,
                size: message.len() as u64,
                received_at_ms: now_ms(),
                message_id: "<m1@example.com>".into(),
                ..QueueEntry::default()
            })
            .await
            .unwrap();
        id
    }

    pub async fn depth(&self) -> u64 {
        self.ctx.queue().await.unwrap().depth().await.unwrap()
    }

    pub async fn wait_empty_queue(&self) {
        wait_for("empty queue", || async { self.depth().await == 0 }).await;
    }

    /// Bodies of the messages in `account`'s INBOX.
    pub async fn inbox(&self, account: &str) -> Vec<String> {
        let client = self.mailstore.clone();
        let list = client
            .clone()
            .list_messages(MailboxRequest {
                account: account.into(),
                mailbox: "INBOX".into(),
            })
            .await
            .map(|r| r.into_inner().messages)
            .unwrap_or_default();
        let mut bodies = Vec::new();
        for info in list {
            let body = client
                .clone()
                .fetch_body(MessageRequest {
                    account: account.into(),
                    mailbox: "INBOX".into(),
                    uid: info.uid,
                })
                .await
                .unwrap()
                .into_inner()
                .message;
            bodies.push(String::from_utf8_lossy(&body).into_owned());
        }
        bodies
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
