//! The `smtp-edge` target: the SMTP front door. It owns the MX listener
//! (`listen.smtp`): the command [`parser`], the [`session`] state machine
//! and its loop, the DATA decoder ([`data`]), and the end-of-DATA path
//! ([`accept`]: filter verdict, `Received:`, spool, queue) — a message is
//! acknowledged with `250` only once its blob and queue entry are durable.
//!
//! Submission (587) and submissions (465) with STARTTLS/AUTH come later;
//! without AUTH every non-local recipient is refused (`554 5.7.1`).

pub mod accept;
mod conn;
pub mod data;
pub mod directory;
pub mod metrics;
pub mod parser;
pub mod reply;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::config::Listen;
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use crate::accept::QueueAcceptor;
pub use crate::directory::DirectoryLookup;
pub use crate::metrics::Metrics;
pub use crate::session::{
    AcceptError, Acceptor, Envelope, Lookup, LookupError, RecipientLookup, Services, SessionConfig,
};

/// The readiness component this target registers.
pub const READINESS: &str = "smtp-edge";

#[derive(Debug, thiserror::Error)]
pub enum SmtpEdgeError {
    #[error("listen.smtp {0:?} is not an address to listen on")]
    NoListenAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc channel: {0}")]
    Channel(#[from] tonic::transport::Error),
    #[error("backend: {0}")]
    Backend(#[from] mailfleet_runtime::backend::BackendError),
}

/// Serves SMTP on `config.listen.smtp` until `shutdown`, then waits for
/// every session to end (each gets `421 4.3.2` at its next command).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let raw = &ctx.config.listen.smtp;
    let addr = Listen::addr(raw).ok_or_else(|| SmtpEdgeError::NoListenAddress(raw.clone()))?;
    let counters = if ctx.config.smtp.messages_per_ip_per_minute > 0 {
        Some(ctx.counters().await.map_err(SmtpEdgeError::from)?)
    } else {
        None
    };
    let services = Services {
        lookup: Arc::new(
            DirectoryLookup::new(&ctx.config.services.mailstore_url)
                .map_err(SmtpEdgeError::from)?,
        ),
        acceptor: Arc::new(QueueAcceptor::new(ctx.clone()).map_err(SmtpEdgeError::from)?),
        counters,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SmtpEdgeError::Bind { addr, source })?;
    tracing::info!(%addr, "smtp listening");
    ctx.readiness.set(READINESS, true);
    let config = Arc::new(SessionConfig::from_config(&ctx.config));
    let metrics = Metrics::register(&ctx);
    let not_ready = {
        let ctx = ctx.clone();
        move || ctx.readiness.set(READINESS, false)
    };
    serve_listener(listener, config, services, metrics, shutdown, not_ready).await;
    Ok(())
}

/// Accepts connections on `listener` until `shutdown` and runs a session
/// for each; returns once every session has ended. `on_stop` runs when
/// accepting stops (readiness goes false). Tests bind `127.0.0.1:0`.
pub async fn serve_listener(
    listener: TcpListener,
    config: Arc<SessionConfig>,
    services: Services,
    metrics: Metrics,
    shutdown: CancellationToken,
    on_stop: impl FnOnce(),
) {
    let sessions = TaskTracker::new();
    // mini-redis: a semaphore caps concurrent sessions.
    let permits = Arc::new(Semaphore::new(config.max_connections()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection("over_limit");
            tracing::info!(remote_ip = %peer.ip(), "connection refused, too many sessions");
            sessions.spawn(refuse(stream));
            continue;
        };
        metrics.connection("accepted");
        let session_id = uuid::Uuid::now_v7().simple().to_string();
        let span =
            tracing::info_span!("smtp_session", session_id = %session_id, remote_ip = %peer.ip());
        let session = session::Session::new(
            config.clone(),
            services.clone(),
            metrics.clone(),
            session_id,
            peer.ip(),
        );
        let shutdown = shutdown.clone();
        let guard = metrics.session_guard();
        sessions.spawn(
            async move {
                tracing::debug!("session started");
                if let Err(error) = session::serve(stream, session, shutdown).await {
                    tracing::debug!(%error, "session ended with an i/o error");
                }
                tracing::debug!("session ended");
                drop((permit, guard));
            }
            .instrument(span),
        );
    }
    drop(listener);
    on_stop();
    tracing::info!(
        open = sessions.len(),
        "smtp stopped accepting, draining sessions"
    );
    sessions.close();
    sessions.wait().await;
    tracing::info!("smtp sessions drained");
}

/// RFC 5321 §3.1: a server that cannot serve may answer 421 and close.
async fn refuse(mut stream: TcpStream) {
    let wire = reply::TOO_MANY_CONNECTIONS.to_wire();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(wire.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
