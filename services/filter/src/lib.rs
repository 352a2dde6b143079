//! The `filter` target: sender authentication and spam scoring, the verdict
//! for every message smtp-edge accepts. It owns the `Filter.Check` gRPC
//! service and the [`Engine`] behind it: [`auth`] (SPF, DKIM, DMARC, ARC,
//! iprev over the shared hickory resolver), [`reputation`] (DNSBL, URIBL),
//! the [`rules`] engine over an [`analysis::Analysis`] of the message, the
//! [`bayes`] classifier, and greylisting over the shared counters.

pub mod analysis;
pub mod auth;
pub mod bayes;
pub mod reputation;
pub mod rules;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mailfleet_proto::filter::filter_server::{Filter, FilterServer};
use mailfleet_proto::filter::{Action, CheckRequest, Header, LearnReply, LearnRequest, Verdict};
use mailfleet_runtime::backend::Counters;
use mailfleet_runtime::config::{Filter as FilterConfig, Listen};
use mailfleet_runtime::{BoxError, CancellationToken, Context};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::analysis::Analysis;
use crate::auth::Envelope;
use crate::bayes::Bayes;
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
    #[error("filter task failed: {0}")]
    Internal(String),
    #[error(transparent)]
    Rules(#[from] rules::RuleError),
    #[error("dns resolver: {0}")]
    Dns(#[from] mailfleet_runtime::dns::DnsError),
    #[error(transparent)]
    Bayes(#[from] bayes::BayesError),
}

/// Verdicts given, by action.
#[derive(Clone, Default)]
pub struct Metrics {
    verdicts: Family<[(&'static str, &'static str); 1], Counter>,
    rules: Family<[(&'static str, String); 1], Counter>,
    learned: Family<[(&'static str, &'static str); 1], Counter>,
}

impl Metrics {
    /// Registers the metrics in `ctx.metrics` (`mailfleet_filter_verdicts_total`,
    /// `mailfleet_filter_rules_total`, `mailfleet_filter_bayes_learned_total`).
    pub fn register(ctx: &Context) -> Metrics {
        let metrics = Metrics::default();
        ctx.metrics.lock().expect("metrics lock").register(
            "filter_verdicts",
            "Verdicts given by the filter, by action",
            metrics.verdicts.clone(),
        );
        ctx.metrics.lock().expect("metrics lock").register(
            "filter_rules",
            "Rules that fired in verdicts, by rule",
            metrics.rules.clone(),
        );
        ctx.metrics.lock().expect("metrics lock").register(
            "filter_bayes_learned",
            "Messages the Bayesian classifier learnt through Filter.Learn (IMAP users' Junk moves), by class",
            metrics.learned.clone(),
        );
        metrics
    }
}

/// Everything a verdict is computed from.
pub struct Engine {
    pub rules: RuleSet,
    pub config: FilterConfig,
    /// The authserv-id of `Authentication-Results:` (RFC 8601 §2.5).
    pub authserv_id: String,
    /// This server's name (SPF's `%{r}`).
    pub host: String,
    /// The shared caching resolver; without it no DNS check runs.
    pub resolver: Option<TokioResolver>,
    /// Greylisting triplets; without it no greylisting.
    pub counters: Option<Arc<dyn Counters>>,
    pub bayes: Option<Arc<Bayes>>,
}

impl Engine {
    /// An engine with `rules` only: no DNS, no greylisting, no classifier.
    pub fn with_rules(rules: RuleSet) -> Engine {
        Engine {
            rules,
            config: FilterConfig::default(),
            authserv_id: "localhost".into(),
            host: "localhost".into(),
            resolver: None,
            counters: None,
            bayes: None,
        }
    }

    /// The full engine for `config`, with every shipped rule.
    pub fn from_config(
        config: &FilterConfig,
        hostname: &str,
        resolver: Option<TokioResolver>,
        counters: Option<Arc<dyn Counters>>,
        bayes: Option<Arc<Bayes>>,
    ) -> Result<Engine, FilterError> {
        let authserv_id = if config.authserv_id.is_empty() {
            hostname.to_string()
        } else {
            config.authserv_id.clone()
        };
        Ok(Engine {
            rules: RuleSet::from_config(config)?,
            config: config.clone(),
            authserv_id,
            host: hostname.to_string(),
            resolver,
            counters,
            bayes,
        })
    }

    /// The verdict for one message. DNS checks run concurrently; parsing,
    /// DKIM hashing and the rules run on a blocking thread.
    pub async fn check(self: &Arc<Self>, request: CheckRequest) -> Result<Verdict, FilterError> {
        let engine = self.clone();
        let handle = tokio::runtime::Handle::current();
        // One blocking thread per message drives its whole evaluation: the
        // lookups inside still run concurrently (joined futures over the
        // shared runtime's I/O), while the CPU work never stalls an async
        // worker.
        tokio::task::spawn_blocking(move || handle.block_on(engine.evaluate(request)))
            .await
            .map_err(|e| FilterError::Internal(e.to_string()))
    }

    /// Evaluates in the current task (tests and benchmarks call it directly).
    pub async fn evaluate(&self, request: CheckRequest) -> Verdict {
        let mut analysis = Analysis::new(&request);
        let ip = analysis.client_ip;
        // Authenticated submissions are our own users: sender
        // authentication and reputation are about strangers.
        let external = !request.authenticated;
        if let (Some(resolver), Some(ip), true) = (&self.resolver, ip, external) {
            let envelope = Envelope {
                ip,
                helo: &request.helo,
                mail_from: &request.mail_from,
                host: &self.host,
            };
            let auth = auth::authenticate(
                resolver,
                &self.authserv_id,
                &envelope,
                &request.message,
                self.config.received_spf,
            );
            let dnsbl = reputation::check_ip(resolver, ip, &self.config.dnsbl_zones);
            let uribl = reputation::check_domains(
                resolver,
                &analysis.body_domains,
                &self.config.uribl_zones,
            );
            let (auth, dnsbl, uribl) = futures::join!(auth, dnsbl, uribl);
            analysis.auth = Some(auth);
            analysis.dnsbl = dnsbl;
            analysis.uribl = uribl;
        }
        if let Some(bayes) = &self.bayes {
            match bayes.classify(&analysis).await {
                Ok(p) => analysis.bayes = p,
                Err(error) => tracing::warn!(%error, "bayes classification skipped"),
            }
        }

        let mut verdict = self.rules.evaluate_analysis(&analysis);
        if let Some(ip) = ip
            && external
        {
            self.greylist(&mut verdict, ip, &request).await;
        }

        // Authentication-Results first: RFC 8601 §5 wants it above the
        // headers it explains, and smtp-edge prepends in this order.
        let mut headers = Vec::new();
        if let Some(auth) = &analysis.auth {
            headers.push(Header {
                name: "Authentication-Results".into(),
                value: auth.header.clone(),
            });
            if let Some(spf) = &auth.received_spf {
                headers.push(Header {
                    name: "Received-SPF".into(),
                    value: spf.clone(),
                });
            }
            for listing in analysis.dnsbl.iter().chain(&analysis.uribl) {
                tracing::info!(zone = %listing.zone, item = %listing.item, "blocklisted");
            }
        }
        if verdict.action() == Action::Reject
            && let Some(auth) = &analysis.auth
            && verdict.rules.iter().any(|r| r.name == "DMARC_REJECT")
            && verdict.smtp_code == 550
            && verdict.reason.contains("DMARC_REJECT")
        {
            verdict.reason = format!(
                "DMARC policy of {} rejects this unauthenticated message",
                auth.dmarc_domain
            );
        }
        headers.append(&mut verdict.headers);
        verdict.headers = headers;
        verdict
    }

    /// Greylisting (RFC 6647): a suspicious message from a (client /24,
    /// sender, recipient) triplet is deferred with 451 4.7.1 until
    /// `greylist_delay_secs` have passed since the triplet's first attempt:
    /// a real MTA retries later and passes, a spam bot that retries at once
    /// (or never) does not. The first attempt is kept in the shared
    /// counters, so every filter replica gives the same answer; it is
    /// forgotten `greylist_window_secs` after it was made.
    async fn greylist(&self, verdict: &mut Verdict, ip: IpAddr, request: &CheckRequest) {
        let threshold = self.config.greylist_score;
        let Some(counters) = &self.counters else {
            return;
        };
        if threshold <= 0.0 || verdict.score < threshold || verdict.action() == Action::Reject {
            return;
        }
        let key = greylist_key(ip, request);
        let window = Duration::from_secs(self.config.greylist_window_secs.max(60));
        let first_ms = match counters.first_seen(&key, window).await {
            Ok(first_ms) => first_ms,
            Err(error) => {
                tracing::warn!(%error, "greylisting skipped");
                return;
            }
        };
        // At least 1 ms, so that a delay of 0 still defers the first attempt.
        let delay_ms = self.config.greylist_delay_secs.saturating_mul(1000).max(1);
        let waited_ms = now_ms().saturating_sub(first_ms);
        if waited_ms >= delay_ms {
            return;
        }
        verdict.set_action(Action::Tempfail);
        // RFC 6647 §2.1 with RFC 3463 4.7.1: try again later.
        verdict.smtp_code = 451;
        verdict.enhanced_code = "4.7.1".into();
        verdict.reason = format!(
            "greylisted, please try again in {} seconds",
            (delay_ms - waited_ms).div_ceil(1000)
        );
        verdict.rules.push(mailfleet_proto::filter::Rule {
            name: "GREYLIST".into(),
            score: 0.0,
        });
        verdict.headers = rules::headers(verdict, self.rules.thresholds.add_header);
    }
}

/// The greylisting triplet of a message (RFC 6647 §2.2): the client's /24
/// (IPv4) or /64 (IPv6), since a sending farm retries from another address
/// of its pool, and the envelope sender and first recipient.
fn greylist_key(ip: IpAddr, request: &CheckRequest) -> String {
    let network = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}", s[0], s[1], s[2], s[3])
        }
    };
    let rcpt = request.rcpt_to.first().map(String::as_str).unwrap_or("");
    format!(
        "greylist:{network}:{}:{}",
        request.mail_from.to_ascii_lowercase(),
        rcpt.to_ascii_lowercase()
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `Filter` gRPC service over an [`Engine`].
pub struct FilterService {
    engine: Arc<Engine>,
    metrics: Metrics,
}

impl FilterService {
    /// A service over `rules` alone (no DNS checks).
    pub fn new(rules: RuleSet, metrics: Metrics) -> Self {
        FilterService::with_engine(Engine::with_rules(rules), metrics)
    }

    pub fn with_engine(engine: Engine, metrics: Metrics) -> Self {
        FilterService {
            engine: Arc::new(engine),
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
        let client_ip = request.client_ip.clone();
        let verdict = self
            .engine
            .check(request)
            .await
            .map_err(|e| Status::internal(format!("filter failed: {e}")))?;
        let action = action_name(verdict.action());
        self.metrics
            .verdicts
            .get_or_create(&[("action", action)])
            .inc();
        for rule in &verdict.rules {
            self.metrics
                .rules
                .get_or_create(&[("rule", rule.name.clone())])
                .inc();
        }
        let rules: Vec<&str> = verdict.rules.iter().map(|r| r.name.as_str()).collect();
        tracing::info!(
            action,
            score = verdict.score,
            rules = %rules.join(","),
            remote_ip = %client_ip,
            "verdict"
        );
        Ok(Response::new(verdict))
    }

    async fn learn(&self, request: Request<LearnRequest>) -> Result<Response<LearnReply>, Status> {
        let LearnRequest { message, spam } = request.into_inner();
        let Some(bayes) = self.engine.bayes.clone() else {
            return Err(Status::failed_precondition(
                "the Bayesian classifier is off (filter.bayes = false)",
            ));
        };
        let check = CheckRequest {
            message,
            ..CheckRequest::default()
        };
        let analysis = tokio::task::spawn_blocking(move || Analysis::new(&check))
            .await
            .map_err(|e| Status::internal(format!("message analysis failed: {e}")))?;
        bayes
            .learn(&analysis, spam)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (spam_messages, ham_messages) = bayes
            .trained()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let class = if spam { "spam" } else { "ham" };
        self.metrics
            .learned
            .get_or_create(&[("class", class)])
            .inc();
        tracing::info!(spam, spam_messages, ham_messages, "bayes learned");
        Ok(Response::new(LearnReply {
            spam_messages,
            ham_messages,
        }))
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
    let engine = engine_for(&ctx).await?;
    let service = FilterService::with_engine(engine, Metrics::register(&ctx));
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
        .layer(mailfleet_runtime::trace::GrpcServerLayer)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned());
    // The listener is bound already: calls queue in its backlog until the
    // server polls it, so the target is ready from here on.
    on_ready();
    server.await?;
    tracing::info!("filter grpc stopped");
    Ok(())
}

/// The engine for a process: the shared resolver and counters of `ctx`,
/// the Bayes store in Redis (cluster) or `<data_dir>/bayes.db`.
pub async fn engine_for(ctx: &Context) -> Result<Engine, BoxError> {
    let config = &ctx.config;
    let resolver = ctx.dns().map_err(FilterError::from)?;
    let counters = if config.filter.greylist_score > 0.0 {
        Some(ctx.counters().await?)
    } else {
        None
    };
    let bayes = if config.filter.bayes {
        Some(Arc::new(open_bayes(config).await?))
    } else {
        None
    };
    Ok(Engine::from_config(
        &config.filter,
        &config.hostname,
        Some(resolver),
        counters,
        bayes,
    )?)
}

/// The Bayes token store of this configuration (also used by
/// `mailfleet filter train`).
pub async fn open_bayes(config: &mailfleet_runtime::Config) -> Result<Bayes, FilterError> {
    let url = &config.backends.counters_url;
    if !url.is_empty() {
        return Ok(Bayes::redis(url).await?);
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| FilterError::Bayes(bayes::BayesError::Sqlite(sqlx::Error::Io(e))))?;
    Ok(Bayes::sqlite(&config.data_dir.join("bayes.db")).await?)
}
