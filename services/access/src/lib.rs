//! The `access` target: IMAP4rev2/rev1 ([`imap`]) and POP3 ([`pop3`])
//! servers in front of the mailstore. This crate owns the client-facing mail
//! protocols only: it stores nothing itself and reaches mailboxes through the
//! [`MailAccess`] trait (gRPC to the mailstore in production, in memory in
//! tests) and learns of new mail from the runtime's [`Events`] bus.
//!
//! Each protocol is a pure parser (`parser.rs`) and a session loop
//! (`session.rs`) that reads commands, calls one handler per command and is
//! the only place that writes to the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mailfleet_proto::queue::MailboxEvent;
use mailfleet_runtime::backend::{self, Events};
use mailfleet_runtime::config::Listen;
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

mod base64;
pub mod imap;
mod io;
pub mod metrics;
pub mod pop3;
pub mod store;

pub use metrics::Metrics;
pub use store::{AccessError, GrpcMailAccess, MailAccess};

/// The readiness component this target registers.
pub const READINESS: &str = "access";

/// Timeouts and names the sessions run with.
#[derive(Debug, Clone)]
pub struct Limits {
    /// RFC 9051 §5.4: an autologout timer of at least 30 minutes.
    pub imap_idle_timeout: Duration,
    /// RFC 1939 §3: an inactivity autologout timer of at least 10 minutes.
    pub pop3_idle_timeout: Duration,
    /// The name in greetings.
    pub hostname: String,
    /// Largest message an IMAP APPEND may carry.
    pub max_append_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            imap_idle_timeout: Duration::from_secs(30 * 60),
            pop3_idle_timeout: Duration::from_secs(10 * 60),
            hostname: "localhost".into(),
            max_append_bytes: 25 * 1024 * 1024,
        }
    }
}

/// What every session of the process shares.
pub struct Shared {
    pub store: Arc<dyn MailAccess>,
    pub events: Arc<dyn Events>,
    pub metrics: Metrics,
    pub limits: Limits,
}

/// Serves IMAP on `listen.imap` and POP3 on `listen.pop3` until `shutdown`
/// is cancelled, then tells idle sessions goodbye and returns once every
/// session has ended (or the shutdown grace period has run out).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let metrics = Metrics::new();
    metrics.register(&mut ctx.metrics.lock().expect("metrics lock"));
    let shared = Arc::new(Shared {
        store: Arc::new(GrpcMailAccess::new(&ctx.config.services.mailstore_url)?),
        events: Arc::new(ContextEvents(ctx.clone())),
        metrics,
        limits: Limits {
            hostname: ctx.config.hostname.clone(),
            max_append_bytes: usize::try_from(ctx.config.access.max_append_size)
                .unwrap_or(usize::MAX),
            ..Limits::default()
        },
    });

    let imap = bind(&ctx.config.listen.imap, "imap").await?;
    let pop3 = bind(&ctx.config.listen.pop3, "pop3").await?;
    ctx.readiness.set(READINESS, true);

    let tracker = TaskTracker::new();
    tokio::join!(
        accept_loop(imap, Protocol::Imap, &shared, &tracker, &shutdown),
        accept_loop(pop3, Protocol::Pop3, &shared, &tracker, &shutdown),
    );
    ctx.readiness.set(READINESS, false);

    tracker.close();
    let grace = Duration::from_secs(ctx.config.shutdown.grace_secs);
    info!(sessions = tracker.len(), "access draining sessions");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            sessions = tracker.len(),
            "access sessions still open after the grace period"
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Imap,
    Pop3,
}

async fn bind(value: &str, name: &str) -> Result<Option<TcpListener>, BoxError> {
    if value.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = Listen::addr(value)
        .ok_or_else(|| format!("listen.{name} = {value:?} is not an IP:port address"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for {name} on {addr}: {e}"))?;
    info!(protocol = name, addr = %listener.local_addr()?, "access listening");
    Ok(Some(listener))
}

async fn accept_loop(
    listener: Option<TcpListener>,
    protocol: Protocol,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let Some(listener) = listener else {
        return;
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracker.spawn(serve_connection(
                    stream,
                    peer.ip(),
                    protocol,
                    shared.clone(),
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off, go on.
                warn!(%error, "access accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

async fn serve_connection(
    stream: TcpStream,
    remote_ip: IpAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let session_id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    match protocol {
        Protocol::Imap => {
            let span = info_span!("imap_session", session_id, remote_ip = %remote_ip);
            imap::serve(stream, shared, shutdown).instrument(span).await
        }
        Protocol::Pop3 => {
            let span = info_span!("pop3_session", session_id, remote_ip = %remote_ip);
            pop3::serve(stream, shared, shutdown).instrument(span).await
        }
    }
}

/// [`Events`] through the context, opened on first subscription: a session
/// logging in while the event bus is down retries on the next login instead
/// of the whole target failing to start.
struct ContextEvents(Arc<Context>);

#[async_trait]
impl Events for ContextEvents {
    async fn publish(&self, event: &MailboxEvent) -> backend::Result<()> {
        self.0.events().await?.publish(event).await
    }

    async fn subscribe(&self, account: &str) -> backend::Result<BoxStream<'static, MailboxEvent>> {
        self.0.events().await?.subscribe(account).await
    }
}
