//! Service test: a real mailstore (SQLite, gRPC on loopback), the SQLite
//! queue and the spool directory; delivery workers take entries and the
//! messages show up in the mailboxes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailfleet_proto::filter::Action;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{MailboxRequest, MessageInfo, MessageRequest};
use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
use mailfleet_runtime::{CancellationToken, Config, Context};
use mailfleet_testkit::{DnsServer, Zone};
use tonic::transport::Channel;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn context(dir: &std::path::Path, port: u16, retry_secs: u64, dns: &DnsServer) -> Arc<Context> {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.mailstore_grpc = format!("127.0.0.1:{port}");
    config.services.mailstore_url = format!("http://127.0.0.1:{port}");
    config.delivery.workers = 2;
    config.delivery.retry_intervals = vec![format!("{retry_secs}s")];
    config.delivery.lease_secs = 30;
    config.dns.servers = vec![dns.addr().to_string()];
    Context::new(config)
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
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

fn recipient(address: &str, account: &str) -> Recipient {
    Recipient {
        address: address.into(),
        account: account.into(),
        status: RecipientStatus::Pending as i32,
        last_error: String::new(),
        ..Recipient::default()
    }
}

async fn messages(client: &MailstoreClient<Channel>, mailbox: &str) -> Vec<MessageInfo> {
    client
        .clone()
        .list_messages(MailboxRequest {
            account: "bob@example.com".into(),
            mailbox: mailbox.into(),
        })
        .await
        .map(|r| r.into_inner().messages)
        .unwrap_or_default()
}

async fn start_mailstore(ctx: Arc<Context>, shutdown: CancellationToken) {
    tokio::spawn(mailfleet_mailstore::run(ctx.clone(), shutdown));
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
}

/// Creates bob before mailstore serves, straight in its database, so that
/// no delivery attempt can see a missing account.
async fn provision(ctx: &Context) {
    let url = mailfleet_mailstore::store::database_url("", &ctx.config.data_dir);
    let store = mailfleet_mailstore::Store::open(&url, ctx.store_blobs().await.unwrap())
        .await
        .unwrap();
    store.add_domain("example.com").await.unwrap();
    store.add_user("bob@example.com", "pw").await.unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_recipients_land_in_inbox_and_junk() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Both remote domains refuse mail (null MX, RFC 7505): the remote
    // recipient fails at once, and so does the bounce to alice@example.org
    // (a DSN is never bounced), so the queue empties.
    let dns = DnsServer::start([
        Zone::new("elsewhere.net").mx("@", 0, "."),
        Zone::new("example.org").mx("@", 0, "."),
    ])
    .await;
    let ctx = context(dir.path(), port, 300, &dns);
    let shutdown = CancellationToken::new();
    provision(&ctx).await;
    start_mailstore(ctx.clone(), shutdown.clone()).await;

    let spool = ctx.spool().await.unwrap();
    let queue = ctx.queue().await.unwrap();
    let body = b"Subject: hello\r\n\r\nhi bob\r\n";
    let blob = spool.put(body).await.unwrap();
    let ham_id = uuid::Uuid::now_v7().to_string();
    queue
        .enqueue(&QueueEntry {
            id: ham_id.clone(),
            mail_from: "alice@example.org".into(),
            recipients: vec![
                recipient("Bob@example.com", "bob@example.com"),
                recipient("someone@elsewhere.net", ""),
            ],
            blob: blob.clone(),
            size: body.len() as u64,
            verdict: Action::Accept as i32,
            ..QueueEntry::default()
        })
        .await
        .unwrap();
    let spam = b"Subject: cheap pills\r\n\r\nbuy\r\n";
    let spam_blob = spool.put(spam).await.unwrap();
    queue
        .enqueue(&QueueEntry {
            id: uuid::Uuid::now_v7().to_string(),
            mail_from: "".into(),
            recipients: vec![recipient("bob@example.com", "bob@example.com")],
            blob: spam_blob.clone(),
            size: spam.len() as u64,
            verdict: Action::Junk as i32,
            ..QueueEntry::default()
        })
        .await
        .unwrap();

    let delivery = tokio::spawn(mailfleet_delivery::run(ctx.clone(), shutdown.clone()));

    let channel =
        mailfleet_runtime::grpc::lazy_channel(&format!("http://127.0.0.1:{port}")).unwrap();
    let client = MailstoreClient::new(channel);
    wait_for("both messages", || {
        let client = client.clone();
        async move {
            messages(&client, "INBOX").await.len() == 1
                && messages(&client, "Junk").await.len() == 1
        }
    })
    .await;
    let stored = client
        .clone()
        .fetch_body(MessageRequest {
            account: "bob@example.com".into(),
            mailbox: "INBOX".into(),
            uid: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .message;
    let expected = [
        b"Return-Path: <alice@example.org>\r\nDelivered-To: Bob@example.com\r\n".as_slice(),
        body,
    ]
    .concat();
    assert_eq!(stored, expected);
    let junk = client
        .clone()
        .fetch_body(MessageRequest {
            account: "bob@example.com".into(),
            mailbox: "Junk".into(),
            uid: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .message;
    assert!(junk.starts_with(b"Return-Path: <>\r\n"));

    // Both entries are done (the remote recipient failed, nothing pending),
    // and so is the bounce: acknowledged, and their spooled messages deleted.
    wait_for("empty queue and spool", || {
        let (queue, spool, blob, spam_blob) = (
            queue.clone(),
            spool.clone(),
            blob.clone(),
            spam_blob.clone(),
        );
        async move {
            queue.depth().await.unwrap() == 0
                && spool.get(&blob).await.is_err()
                && spool.get(&spam_blob).await.is_err()
        }
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("delivery stops on shutdown")
        .unwrap()
        .expect("delivery run ends cleanly");
}

/// Mailstore down: the entry stays queued with its recipient pending; once
/// mailstore is up, the retry delivers it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailstore_down_means_retry_not_loss() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let dns = DnsServer::start([]).await;
    let ctx = context(dir.path(), port, 1, &dns);
    let shutdown = CancellationToken::new();
    provision(&ctx).await;

    let spool = ctx.spool().await.unwrap();
    let queue = ctx.queue().await.unwrap();
    let body = b"Subject: later\r\n\r\n.\r\n";
    let blob = spool.put(body).await.unwrap();
    queue
        .enqueue(&QueueEntry {
            id: uuid::Uuid::now_v7().to_string(),
            mail_from: "alice@example.org".into(),
            recipients: vec![recipient("bob@example.com", "bob@example.com")],
            blob: blob.clone(),
            size: body.len() as u64,
            ..QueueEntry::default()
        })
        .await
        .unwrap();
    let delivery = tokio::spawn(mailfleet_delivery::run(ctx.clone(), shutdown.clone()));

    // A few attempts fail while nothing listens on the port.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(queue.depth().await.unwrap(), 1, "entry kept for retry");
    assert!(spool.get(&blob).await.is_ok(), "spooled message kept");

    start_mailstore(ctx.clone(), shutdown.clone()).await;
    let channel =
        mailfleet_runtime::grpc::lazy_channel(&format!("http://127.0.0.1:{port}")).unwrap();
    let client = MailstoreClient::new(channel);
    wait_for("delivery after retry", || {
        let (client, queue) = (client.clone(), queue.clone());
        async move { messages(&client, "INBOX").await.len() == 1 && queue.depth().await.unwrap() == 0 }
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("delivery stops on shutdown")
        .unwrap()
        .expect("delivery run ends cleanly");
}
