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
use mailfleet_runtime::config::{Cidr, Listen};
use mailfleet_runtime::tls::TlsProvider;
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub mod imap;
mod io;
pub mod learn;
pub mod metrics;
pub mod pop3;
pub mod store;

pub use learn::Learner;
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
    /// The certificate for STARTTLS/STLS and implicit TLS; `None` offers
    /// no TLS (session tests).
    pub tls: Option<Arc<TlsProvider>>,
    /// `access.trusted_networks`: plain-text passwords are accepted from
    /// there (and from loopback) without TLS.
    pub trusted_networks: Vec<Cidr>,
    /// `access.learn_from_junk_moves`: trains the filter's Bayes from
    /// messages users move into and out of Junk; `None` when off.
    pub learner: Option<Arc<Learner>>,
}

impl Shared {
    /// RFC 9051 §6.2.3 / RFC 2595 §2.1: passwords only over TLS, except
    /// from loopback and trusted networks.
    pub fn plaintext_auth_allowed(&self, connection: &Connection) -> bool {
        connection.tls
            || connection.remote_ip.is_loopback()
            || self
                .trusted_networks
                .iter()
                .any(|net| net.contains(connection.remote_ip))
    }
}

/// What a session knows of its connection.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub remote_ip: IpAddr,
    /// TLS is active (implicit TLS, or after STARTTLS/STLS).
    pub tls: bool,
}

impl Connection {
    /// A plain-text connection from loopback.
    pub fn local() -> Self {
        Connection {
            remote_ip: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            tls: false,
        }
    }
}

/// How long a client gets to finish a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The server side of a TLS handshake on `stream`, bounded in time.
pub(crate) async fn tls_handshake<S>(
    tls: &TlsProvider,
    stream: S,
) -> std::io::Result<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Serves IMAP on `listen.imap` and POP3 on `listen.pop3` until `shutdown`
/// is cancelled, then tells idle sessions goodbye and returns once every
/// session has ended (or the shutdown grace period has run out).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let metrics = Metrics::new();
    metrics.register(&mut ctx.metrics.lock().expect("metrics lock"));
    let tls = ctx.tls().await?;
    tls.watch(Duration::from_secs(30), shutdown.clone());
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
        tls: Some(tls),
        trusted_networks: Cidr::parse_list(&ctx.config.access.trusted_networks),
        learner: if ctx.config.access.learn_from_junk_moves {
            Some(Arc::new(Learner::new(&ctx.config.services.filter_url)?))
        } else {
            None
        },
    });

    let imap = bind(&ctx.config.listen.imap, "imap").await?;
    let imaps = bind(&ctx.config.listen.imaps, "imaps").await?;
    let pop3 = bind(&ctx.config.listen.pop3, "pop3").await?;
    let pop3s = bind(&ctx.config.listen.pop3s, "pop3s").await?;
    ctx.readiness.set(READINESS, true);

    let tracker = TaskTracker::new();
    tokio::join!(
        accept_loop(imap, Protocol::Imap, false, &shared, &tracker, &shutdown),
        accept_loop(imaps, Protocol::Imap, true, &shared, &tracker, &shutdown),
        accept_loop(pop3, Protocol::Pop3, false, &shared, &tracker, &shutdown),
        accept_loop(pop3s, Protocol::Pop3, true, &shared, &tracker, &shutdown),
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
    implicit_tls: bool,
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
                    implicit_tls,
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
    implicit_tls: bool,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let session_id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = match protocol {
        Protocol::Imap => {
            info_span!("imap_session", session_id, remote_ip = %remote_ip, implicit_tls)
        }
        Protocol::Pop3 => {
            info_span!("pop3_session", session_id, remote_ip = %remote_ip, implicit_tls)
        }
    };
    async move {
        let connection = Connection {
            remote_ip,
            tls: implicit_tls,
        };
        if !implicit_tls {
            return match protocol {
                Protocol::Imap => {
                    imap::session::serve_connection(stream, shared, shutdown, connection).await
                }
                Protocol::Pop3 => {
                    pop3::session::serve_connection(stream, shared, shutdown, connection).await
                }
            };
        }
        // RFC 8314 §3.3: implicit TLS, the handshake before any greeting.
        let Some(tls) = shared.tls.clone() else {
            return;
        };
        let stream = match tls_handshake(&tls, stream).await {
            Ok(stream) => stream,
            Err(error) => {
                info!(%error, "tls handshake failed");
                return;
            }
        };
        match protocol {
            Protocol::Imap => {
                imap::session::serve_connection(stream, shared, shutdown, connection).await
            }
            Protocol::Pop3 => {
                pop3::session::serve_connection(stream, shared, shutdown, connection).await
            }
        }
    }
    .instrument(span)
    .await
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
