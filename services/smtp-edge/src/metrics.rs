//! Prometheus metrics of smtp-edge, registered in the process registry
//! (`ctx.metrics`, prefix `mailfleet_`).

use mailfleet_runtime::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Unit;

type Labels = [(&'static str, &'static str); 1];

#[derive(Clone)]
pub struct Metrics {
    /// Connections by result: `accepted`, `over_limit` (all listeners
    /// full), `over_ip_limit` (`smtp.max_connections_per_ip`),
    /// `bad_proxy_header` (a trusted proxy sent no valid PROXY header).
    connections: Family<Labels, Counter>,
    /// Sessions open now.
    sessions: Gauge,
    /// Transactions ended at end of DATA or BDAT LAST, by result: `queued`,
    /// `rejected`, `deferred`, `error`, `too_big`, `bare_lf`, `long_line`,
    /// `loop`.
    transactions: Family<Labels, Counter>,
    /// Sizes of the messages queued, with the headers smtp-edge prepends.
    accepted_sizes: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: Family::default(),
            sessions: Gauge::default(),
            transactions: Family::default(),
            // 1 KiB to 64 MiB by powers of 4: a text mail, an attachment,
            // and the top of any sensible size limit.
            accepted_sizes: Histogram::new(exponential_buckets(1024.0, 4.0, 9)),
        }
    }
}

impl Metrics {
    pub fn register(ctx: &Context) -> Metrics {
        let metrics = Metrics::default();
        let mut registry = ctx.metrics.lock().expect("metrics lock");
        registry.register(
            "smtp_connections",
            "SMTP connections by result",
            metrics.connections.clone(),
        );
        registry.register(
            "smtp_sessions_open",
            "SMTP sessions open now",
            metrics.sessions.clone(),
        );
        registry.register(
            "smtp_transactions",
            "SMTP transactions ended at end of DATA, by result",
            metrics.transactions.clone(),
        );
        registry.register_with_unit(
            "smtp_accepted_message_size",
            "Sizes of the messages queued by SMTP transactions",
            Unit::Bytes,
            metrics.accepted_sizes.clone(),
        );
        metrics
    }

    pub fn accepted_size(&self, bytes: usize) {
        self.accepted_sizes.observe(bytes as f64);
    }

    pub fn connection(&self, result: &'static str) {
        self.connections.get_or_create(&[("result", result)]).inc();
    }

    pub fn transaction(&self, result: &'static str) {
        self.transactions.get_or_create(&[("result", result)]).inc();
    }

    /// Counts an open session until the guard is dropped.
    pub fn session_guard(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard(self.sessions.clone())
    }

    /// For tests: the count of one transaction result.
    pub fn transactions_with(&self, result: &'static str) -> u64 {
        self.transactions.get_or_create(&[("result", result)]).get()
    }
}

pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
