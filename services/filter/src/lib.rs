//! The `filter` target: sender authentication and spam scoring, the verdict
//! for every message smtp-edge accepts. It owns the `Filter.Check` gRPC
//! service and the [`rules`] engine behind it.
//!
//! For the walking skeleton the only rule is GTUBE; SPF, DKIM, DMARC, ARC,
//! iprev and DNSBL come as further rules in [`rules::RuleSet::default`].

pub mod rules;

use std::net::SocketAddr;
use std::sync::Arc;

use mailfleet_proto::filter::filter_server::{Filter, FilterServer};
use mailfleet_proto::filter::{CheckRequest, Verdict};
use mailfleet_runtime::config::Listen;
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::rules::{RuleSet, action_name};

/// The readiness component this target registers.
pub const READINESS: &str = "filter";

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("listen.filter_grpc {0:?} is not an address to listen on")]
    NoListenAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Verdicts given, by action.
#[derive(Clone, Default)]
pub struct Metrics {
    verdicts: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Metrics {
    /// Registers the metrics in `ctx.metrics` (`mailfleet_filter_verdicts_total`).
    pub fn register(ctx: &Context) -> Metrics {
        let metrics = Metrics::default();
        ctx.metrics.lock().expect("metrics lock").register(
            "filter_verdicts",
            "Verdicts given by the filter, by action",
            metrics.verdicts.clone(),
        );
        metrics
    }
}

/// The `Filter` gRPC service over a [`RuleSet`].
pub struct FilterService {
    rules: Arc<RuleSet>,
    metrics: Metrics,
}

impl FilterService {
    pub fn new(rules: RuleSet, metrics: Metrics) -> Self {
        FilterService {
            rules: Arc::new(rules),
            metrics,
        }
    }

    /// The tonic server for this service, with message limits raised so a
    /// whole message fits.
    pub fn into_server(self) -> FilterServer<FilterService> {
        FilterServer::new(self)
            .max_decoding_message_size(mailfleet_runtime::grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(mailfleet_runtime::grpc::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl Filter for FilterService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<Verdict>, Status> {
        let request = request.into_inner();
        let rules = self.rules.clone();
        // Rules may scan the whole message (and later verify DKIM over it):
        // CPU work stays off the async workers.
        let verdict = tokio::task::spawn_blocking(move || rules.evaluate(&request))
            .await
            .map_err(|e| Status::internal(format!("rule engine failed: {e}")))?;
        let action = action_name(verdict.action());
        self.metrics
            .verdicts
            .get_or_create(&[("action", action)])
            .inc();
        tracing::info!(
            action,
            score = verdict.score,
            rules = verdict.rules.len(),
            "verdict"
        );
        Ok(Response::new(verdict))
    }
}

/// Serves `Filter.Check` on `config.listen.filter_grpc` until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BoxError> {
    ctx.readiness.register(READINESS);
    let raw = &ctx.config.listen.filter_grpc;
    let addr = Listen::addr(raw).ok_or_else(|| FilterError::NoListenAddress(raw.clone()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| FilterError::Bind { addr, source })?;
    tracing::info!(%addr, "filter grpc listening");
    let service = FilterService::new(RuleSet::default(), Metrics::register(&ctx));
    let ready = {
        let ctx = ctx.clone();
        move || ctx.readiness.set(READINESS, true)
    };
    let result = serve(listener, service, shutdown, ready).await;
    ctx.readiness.set(READINESS, false);
    result.map_err(Into::into)
}

/// Serves `service` on an already bound `listener` until `shutdown` (tests
/// bind `127.0.0.1:0`). `on_ready` runs once the server accepts calls.
pub async fn serve(
    listener: TcpListener,
    service: FilterService,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), FilterError> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    // The listener is bound already: calls queue in its backlog until the
    // server polls it, so the target is ready from here on.
    on_ready();
    server.await?;
    tracing::info!("filter grpc stopped");
    Ok(())
}
