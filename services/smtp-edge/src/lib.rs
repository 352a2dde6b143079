//! The `smtp-edge` target: the SMTP front door. It owns three listeners:
//! the MX (`listen.smtp`, STARTTLS), submission (`listen.submission`,
//! STARTTLS then AUTH) and submissions (`listen.submissions`, implicit
//! TLS then AUTH); the command [`parser`], the [`session`] state machine
//! and its loop, the DATA decoder ([`data`]), AUTH ([`auth`]), the relay
//! checks ([`address`]), the PROXY protocol ([`proxy`]), and the
//! end-of-message path ([`accept`]: filter verdict, `Received:`, spool,
//! queue) — a message is acknowledged with `250` only once its blob and
//! queue entry are durable.

pub mod accept;
pub mod address;
pub mod auth;
mod conn;
pub mod data;
pub mod directory;
pub mod metrics;
pub mod parser;
pub mod proxy;
pub mod reply;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailfleet_runtime::config::Listen;
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use crate::accept::QueueAcceptor;
pub use crate::auth::{AuthError, AuthOutcome, Authenticator};
pub use crate::directory::DirectoryLookup;
pub use crate::metrics::Metrics;
pub use crate::session::{
    AcceptError, Acceptor, AuthBlocklist, Envelope, Lookup, LookupError, Mode, RecipientLookup,
    Services, SessionConfig,
};

/// The readiness component this target registers.
pub const READINESS: &str = "smtp-edge";

/// How long a trusted proxy has to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SmtpEdgeError {
    #[error("{key} {value:?} is not an address to listen on")]
    NoListenAddress { key: &'static str, value: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc channel: {0}")]
    Channel(#[from] tonic::transport::Error),
    #[error("backend: {0}")]
    Backend(#[from] mailfleet_runtime::backend::BackendError),
    #[error("tls: {0}")]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
}

/// Open sessions per client IP, shared by every listener of the process.
#[derive(Default)]
pub struct ConnectionsPerIp(Mutex<HashMap<IpAddr, usize>>);

impl ConnectionsPerIp {
    /// Counts a session of `ip` until the guard drops; `None` if `ip`
    /// already has `limit` (0: no limit).
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpGuard> {
        let mut map = self.0.lock().expect("connections lock");
        let count = map.entry(ip).or_default();
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpGuard {
            map: self.clone(),
            ip,
        })
    }
}

pub struct IpGuard {
    map: Arc<ConnectionsPerIp>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().expect("connections lock");
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves SMTP on `listen.smtp`, `listen.submission` and
/// `listen.submissions` (an empty key is not served) until `shutdown`,
/// then waits for every session to end (each gets `421 4.3.2` at its next
/// command).
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let listen = &ctx.config.listen;
    let mut addrs = Vec::new();
    for (key, value, mode) in [
        ("listen.smtp", &listen.smtp, Mode::Mx),
        ("listen.submission", &listen.submission, Mode::Submission),
        ("listen.submissions", &listen.submissions, Mode::Submissions),
    ] {
        if value.is_empty() {
            continue;
        }
        let addr = Listen::addr(value).ok_or_else(|| SmtpEdgeError::NoListenAddress {
            key,
            value: value.clone(),
        })?;
        addrs.push((addr, mode));
    }
    // Rate limits and AUTH failures; in memory unless Redis is configured.
    let counters = ctx.counters().await.map_err(SmtpEdgeError::from)?;
    let tls = ctx.tls().await.map_err(SmtpEdgeError::from)?;
    tls.watch(Duration::from_secs(30), shutdown.clone());
    let directory = Arc::new(
        DirectoryLookup::new(&ctx.config.services.mailstore_url).map_err(SmtpEdgeError::from)?,
    );
    let services = Services {
        lookup: directory.clone(),
        auth: directory,
        acceptor: Arc::new(QueueAcceptor::new(ctx.clone()).map_err(SmtpEdgeError::from)?),
        counters: Some(counters),
        tls: Some(tls),
        auth_blocklist: Arc::default(),
        connections: Arc::default(),
        session_permits: Some(Arc::new(Semaphore::new(
            SessionConfig::from_config(&ctx.config).max_connections(),
        ))),
    };
    let mut listeners = Vec::new();
    for (addr, mode) in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SmtpEdgeError::Bind { addr, source })?;
        tracing::info!(%addr, listener = mode.name(), "smtp listening");
        listeners.push((listener, mode));
    }
    ctx.readiness.set(READINESS, true);
    let metrics = Metrics::register(&ctx);
    let base = SessionConfig::from_config(&ctx.config);
    let tasks = TaskTracker::new();
    for (listener, mode) in listeners {
        let config = Arc::new(SessionConfig {
            mode,
            ..base.clone()
        });
        let ctx = ctx.clone();
        tasks.spawn(serve_listener(
            listener,
            config,
            services.clone(),
            metrics.clone(),
            shutdown.clone(),
            move || ctx.readiness.set(READINESS, false),
        ));
    }
    tasks.close();
    tasks.wait().await;
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
    let permits = services
        .session_permits
        .clone()
        .unwrap_or_else(|| Arc::new(Semaphore::new(config.max_connections())));
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
        let session_id = uuid::Uuid::now_v7().simple().to_string();
        let span = tracing::info_span!(
            "smtp.session",
            session_id = %session_id,
            listener = config.mode.name(),
            peer_ip = %peer.ip(),
            remote_ip = tracing::field::Empty,
            net.peer.ip = tracing::field::Empty,
        );
        let task = connection(
            stream,
            peer.ip(),
            session_id,
            config.clone(),
            services.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        sessions.spawn(
            async move {
                task.await;
                drop(permit);
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

/// One connection: the PROXY header if the peer is a trusted proxy, the
/// per-IP limit on the real client, implicit TLS on submissions, then the
/// session.
async fn connection(
    mut stream: TcpStream,
    peer_ip: IpAddr,
    session_id: String,
    config: Arc<SessionConfig>,
    services: Services,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut client_ip = peer_ip;
    if config
        .proxy_trusted_networks
        .iter()
        .any(|n| n.contains(peer_ip))
    {
        let header =
            tokio::time::timeout(PROXY_HEADER_TIMEOUT, proxy::read_header(&mut stream)).await;
        match header {
            Ok(Ok(proxy::ProxyHeader::Client(addr))) => client_ip = addr.ip(),
            Ok(Ok(proxy::ProxyHeader::Local)) => {}
            Ok(Err(error)) => {
                metrics.connection("bad_proxy_header");
                tracing::info!(%error, "connection from a trusted proxy without a valid PROXY header");
                return;
            }
            Err(_elapsed) => {
                metrics.connection("bad_proxy_header");
                tracing::info!("no PROXY header in time");
                return;
            }
        }
    }
    let span = tracing::Span::current();
    span.record("remote_ip", tracing::field::display(client_ip));
    span.record("net.peer.ip", tracing::field::display(client_ip));
    let Some(ip_guard) = services
        .connections
        .enter(client_ip, config.max_connections_per_ip)
    else {
        metrics.connection("over_ip_limit");
        tracing::info!("connection refused, too many sessions from this ip");
        refuse(stream).await;
        return;
    };
    metrics.connection("accepted");
    let guard = metrics.session_guard();
    let mut session = session::Session::new(
        config.clone(),
        services,
        metrics.clone(),
        session_id,
        client_ip,
    );
    tracing::debug!("session started");
    let result = if config.mode == Mode::Submissions {
        let Some(acceptor) = session.tls_acceptor() else {
            tracing::warn!("submissions without a certificate");
            return;
        };
        match tokio::time::timeout(session::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                session.tls_started(mailfleet_runtime::tls::describe(tls.get_ref().1));
                session::serve(tls, session, shutdown).await
            }
            Ok(Err(error)) => {
                tracing::info!(%error, "tls handshake failed");
                return;
            }
            Err(_elapsed) => {
                tracing::info!("tls handshake timeout");
                return;
            }
        }
    } else {
        session::serve(stream, session, shutdown).await
    };
    if let Err(error) = result {
        tracing::debug!(%error, "session ended with an i/o error");
    }
    tracing::debug!("session ended");
    drop((ip_guard, guard));
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
