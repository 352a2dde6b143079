//! The `mailstore` target: it owns the directory (domains, accounts,
//! passwords) and the mailboxes (messages, UIDs, MODSEQs, flags), keeps
//! their metadata in SQLite or PostgreSQL ([`store`]) and the message bodies
//! in the store blob directory, and serves both over gRPC (`Directory` and
//! `Mailstore` of `mailstore.proto`), and keeps the message history
//! (`History` of `history.proto`, pruned after
//! `mailstore.history_retention_days`). After each commit it publishes a
//! `MailboxEvent` so that IMAP IDLE sessions on any replica see the change.
//!
//! Deliveries are exactly once per idempotency key (`<queue id>/<recipient>`),
//! which turns the queue's at-least-once into exactly-once mailbox appends.

mod grpc;
mod metrics;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use mailfleet_proto::history::history_server::HistoryServer;
use mailfleet_proto::mailstore::directory_server::DirectoryServer;
use mailfleet_proto::mailstore::mailstore_server::MailstoreServer;
use mailfleet_runtime::config::Listen;
use mailfleet_runtime::grpc::MAX_MESSAGE_BYTES;
use mailfleet_runtime::grpc_metrics::GrpcMetricsLayer;
use mailfleet_runtime::leader::{Leadership, jobs};
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use store::{Store, StoreError};

/// The readiness component this target registers.
pub const READINESS: &str = "mailstore";

/// Opens the store (migrating it), binds `listen.mailstore_grpc` and serves
/// until `shutdown`; in-flight calls finish before it returns.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let listen = &ctx.config.listen.mailstore_grpc;
    let addr = Listen::addr(listen)
        .ok_or_else(|| format!("listen.mailstore_grpc = {listen:?} is not a listen address"))?;

    if ctx.config.backends.metadata_url.is_empty() {
        std::fs::create_dir_all(&ctx.config.data_dir)?;
    }
    let url = store::database_url(&ctx.config.backends.metadata_url, &ctx.config.data_dir);
    let store = Arc::new(Store::open(&url, ctx.store_blobs().await?).await?);
    let events = ctx.events().await?;
    let (metrics, operations) = {
        let mut registry = ctx
            .metrics
            .lock()
            .map_err(|_| "metrics registry poisoned")?;
        let operations = GrpcMetricsLayer::register(
            &mut registry,
            "mailstore_operations",
            "mailstore_operation_duration",
            "Mailstore",
        );
        (metrics::Metrics::register(&mut registry), operations)
    };

    let directory = DirectoryServer::new(grpc::DirectoryService {
        store: store.clone(),
        metrics: metrics.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mailstore = MailstoreServer::new(grpc::MailstoreService {
        store: store.clone(),
        events,
        metrics,
        over_quota_permanent: ctx.config.mailstore.over_quota_permanent,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let history = HistoryServer::new(grpc::HistoryService {
        store: store.clone(),
    });
    let sweeping = tokio::spawn(sweep_released_blobs(store.clone()));
    let pruning = tokio::spawn(prune_history(
        store.clone(),
        ctx.config.mailstore.history_retention_days,
        ctx.leadership(jobs::HISTORY_PRUNE).await?,
        shutdown.clone(),
    ));

    // Bound before readiness is reported, so "ready" means "accepting".
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, dialect = ?store.dialect(), "mailstore serving");
    ctx.readiness.set(READINESS, true);
    let served = Server::builder()
        .layer(mailfleet_runtime::trace::GrpcServerLayer)
        .layer(operations)
        .add_service(directory)
        .add_service(mailstore)
        .add_service(history)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled())
        .await;
    ctx.readiness.set(READINESS, false);
    pruning.abort();
    sweeping.abort();
    store.close().await;
    tracing::info!("mailstore stopped");
    Ok(served?)
}

/// How many released blobs one sweep query takes at a time.
const RELEASED_BLOB_BATCH: i64 = 500;

/// How often blobs left at refcount 0 are looked for after start-up.
const RELEASED_BLOB_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Deletes the blobs a crash (or a failed file deletion) left at refcount
/// 0: at start-up, in the background so that readiness does not wait for a
/// large backlog, then hourly, so a deletion that failed while serving is
/// retried without a restart. Every replica may run it: each deletion
/// takes the row under a lock and a second replica just finds it gone.
async fn sweep_released_blobs(store: Arc<Store>) {
    // The first tick is immediate.
    let mut every = tokio::time::interval(RELEASED_BLOB_SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut total = 0;
        loop {
            match store.sweep_released_blobs(RELEASED_BLOB_BATCH).await {
                Ok(deleted) => {
                    total += deleted;
                    // A short batch (or one whose deletions all failed) ends
                    // this round: failed rows would otherwise be selected
                    // again forever.
                    if deleted < RELEASED_BLOB_BATCH as usize {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot sweep released blobs");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(deleted = total, "released blobs deleted");
        }
    }
}

/// How often old history is deleted.
const HISTORY_PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes history older than `retention_days` (0: never) on the replica
/// elected for the job (every replica when election is off; a second delete
/// then finds nothing): at once when it becomes leader, so a leader change
/// never skips a round, then hourly while it stays leader.
async fn prune_history(
    store: Arc<Store>,
    retention_days: u32,
    mut leadership: Leadership,
    shutdown: CancellationToken,
) {
    if retention_days == 0 {
        return;
    }
    let retention_ms = i64::from(retention_days) * 86_400_000;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = leadership.wait_until_leader() => {}
        }
        // The first tick is immediate.
        let mut every = tokio::time::interval(HISTORY_PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                leader = leadership.changed() => if leader { continue } else { break },
                _ = every.tick() => {}
            }
            let before = store::now_ms().saturating_sub(retention_ms);
            match store.prune_history(before).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, retention_days, "old message history deleted")
                }
                Err(error) => tracing::warn!(%error, "cannot delete old message history"),
            }
        }
    }
}

/// The accepted gRPC connections, with Nagle off: `TcpIncoming::from`
/// leaves it on (tonic ignores `Server::tcp_nodelay` with an incoming
/// stream), and a small reply then waits for the client's delayed ACK,
/// about 40 ms per call on Linux: most of the time of a FETCH that makes
/// one call per message.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
