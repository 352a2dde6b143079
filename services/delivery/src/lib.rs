//! The `delivery` target: queue workers. It owns what happens to a queue
//! entry after smtp-edge accepted it. Recipients are grouped by destination
//! — local (appended to the mailbox through mailstore's gRPC `Deliver`,
//! Junk on a junk verdict, with an idempotency key so a retried entry never
//! stores a message twice) or one remote domain (MX routing in [`mx`],
//! outbound SMTP in [`client`] with opportunistic STARTTLS) — and each group
//! is retried on its own schedule ([`schedule`], `delivery.retry_intervals`)
//! until `delivery.max_queue_lifetime`. Recipients that fail for good get
//! one RFC 3464 DSN ([`dsn`]) to the envelope sender. A failure is
//! classified transient or permanent in one place, [`error`].
//!
//! Protocol pieces are pure and tested on their own: [`reply`] (SMTP reply
//! parsing), [`wire`] (line endings and dot-stuffing), [`dsn`], [`schedule`].

pub mod admin;
pub mod client;
pub mod dkim;
pub mod dsn;
pub mod error;
pub mod limits;
mod metrics;
pub mod mx;
pub mod pool;
pub mod remote;
pub mod reply;
pub mod route;
pub mod schedule;
pub mod tls;
pub mod wire;
mod worker;

use std::sync::Arc;

use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_runtime::grpc::{MAX_MESSAGE_BYTES, lazy_channel};
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::task::JoinSet;

/// The readiness component this target registers.
pub const READINESS: &str = "delivery";

/// Runs `delivery.workers` workers until `shutdown`; returns once every
/// worker has finished the entry it was handling.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let channel = lazy_channel(&ctx.config.services.mailstore_url)?;
    let mailstore = MailstoreClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let directory = DirectoryClient::new(channel);
    let history = mailfleet_runtime::history::Recorder::new(&ctx.config.services.mailstore_url)?;
    let limits = open_limits(&ctx).await;
    let connections = pool::Connections::new(limits.clone());
    let remote = remote::Remote {
        resolver: ctx.dns()?,
        client: client::ClientSettings {
            ehlo_name: if ctx.config.delivery.ehlo_name.is_empty() {
                ctx.config.hostname.clone()
            } else {
                ctx.config.delivery.ehlo_name.clone()
            },
            timeouts: client::Timeouts::default(),
            tls: tls::TlsClient::with_system_roots(),
            starttls: true,
            // Validated with the config.
            source_ip: ctx.config.delivery.source_ip.parse().ok(),
            auth: (!ctx.config.delivery.relay_username.is_empty()).then(|| client::Credentials {
                username: ctx.config.delivery.relay_username.clone(),
                password: ctx.config.delivery.relay_password.clone(),
            }),
        },
        port: ctx.config.delivery.remote_smtp_port,
        relay: ctx.config.delivery.relay(),
        connections: connections.clone(),
    };
    let metrics = {
        let mut registry = ctx
            .metrics
            .lock()
            .map_err(|_| "metrics registry poisoned")?;
        metrics::Metrics::register(&mut registry)
    };
    // The spool is a local (or shared) directory: failing to open it is a
    // configuration problem, reported at start. The queue may be a NATS
    // server that is not up yet, so workers open it (and retry) themselves.
    ctx.spool().await?;
    // Idle connections are closed once no worker can use them any more.
    let sweeper_stop = CancellationToken::new();
    let sweeper = tokio::spawn(connections.run_sweeper(sweeper_stop.clone()));

    let mut workers = JoinSet::new();
    for id in 0..ctx.config.delivery.workers {
        let worker = worker::Worker {
            id,
            ctx: ctx.clone(),
            mailstore: mailstore.clone(),
            directory: directory.clone(),
            remote: remote.clone(),
            limits: limits.clone(),
            history: history.clone(),
            metrics: metrics.clone(),
        };
        workers.spawn(worker.run(shutdown.clone()));
    }
    ctx.readiness.set(READINESS, true);
    tracing::info!(workers = ctx.config.delivery.workers, mailstore = %ctx.config.services.mailstore_url, "delivery started");

    while let Some(joined) = workers.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "delivery worker panicked");
        }
    }
    sweeper_stop.cancel();
    if let Err(error) = sweeper.await {
        tracing::error!(%error, "idle connection sweeper panicked");
    }
    ctx.readiness.set(READINESS, false);
    if !shutdown.is_cancelled() {
        return Err("every delivery worker stopped before shutdown".into());
    }
    tracing::info!("delivery stopped");
    Ok(())
}

/// The per-destination limits, shared through Redis when the counters are
/// (`backends.counters_url`). Redis down at start falls back to per-process
/// limits with a warning rather than stopping delivery.
async fn open_limits(ctx: &Context) -> limits::Limits {
    let d = &ctx.config.delivery;
    let counters = match ctx.counters().await {
        Ok(counters) => Some(counters),
        Err(error) => {
            tracing::warn!(%error, "rate counters unavailable: no per-domain rate limit");
            None
        }
    };
    // A slot is a connection: its lease covers one attempt's budget (see
    // the worker), then the idle time of the connection, with a margin;
    // taking it for an attempt and keeping it idle both renew it (`pool`).
    let lease = std::time::Duration::from_secs(d.lease_secs * 3 / 4 + 30) + pool::POOL_IDLE;
    let (max, per_minute) = (
        d.max_connections_per_domain,
        d.messages_per_domain_per_minute,
    );
    let url = &ctx.config.backends.counters_url;
    match limits::Limits::open(url, counters.clone(), max, per_minute, lease).await {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "shared destination limits unavailable, limiting per process");
            limits::Limits::in_memory(counters, max, per_minute, lease)
        }
    }
}
