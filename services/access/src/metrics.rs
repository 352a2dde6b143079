//! Prometheus metrics of the access target, registered in the process
//! registry (`ctx.metrics`) and shared by every session.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub protocol: &'static str,
    /// Upper-case verb of a known command, `invalid` for unparsable lines;
    /// never client text, so the label set stays bounded.
    pub command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub protocol: &'static str,
    pub result: &'static str,
}

/// The counters and gauges the sessions update. Cheap to clone (shared cells).
#[derive(Clone, Default)]
pub struct Metrics {
    pub sessions: Family<ProtocolLabels, Counter>,
    pub active_sessions: Family<ProtocolLabels, Gauge>,
    pub commands: Family<CommandLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
}

impl Metrics {
    /// Fresh metrics, not registered anywhere (tests).
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Registers every metric under `access_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let access = registry.sub_registry_with_prefix("access");
        access.register(
            "sessions",
            "IMAP and POP3 sessions accepted",
            self.sessions.clone(),
        );
        access.register(
            "active_sessions",
            "IMAP and POP3 sessions open now",
            self.active_sessions.clone(),
        );
        access.register(
            "commands",
            "IMAP and POP3 commands received, by verb",
            self.commands.clone(),
        );
        access.register(
            "logins",
            "IMAP and POP3 login attempts, by result",
            self.logins.clone(),
        );
    }

    pub fn command(&self, protocol: &'static str, command: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { protocol, command })
            .inc();
    }

    pub fn login(&self, protocol: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins
            .get_or_create(&LoginLabels { protocol, result })
            .inc();
    }

    /// Counts a session as started; the guard counts it as ended when dropped.
    pub fn session(&self, protocol: &'static str) -> SessionGuard {
        let labels = ProtocolLabels { protocol };
        self.sessions.get_or_create(&labels).inc();
        self.active_sessions.get_or_create(&labels).inc();
        SessionGuard {
            metrics: self.clone(),
            labels,
        }
    }
}

pub struct SessionGuard {
    metrics: Metrics,
    labels: ProtocolLabels,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics
            .active_sessions
            .get_or_create(&self.labels)
            .dec();
    }
}
