//! The delivery workers' Prometheus metrics, registered in the process registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type ByResult = Family<[(&'static str, &'static str); 1], Counter>;

/// Cheap to clone: every metric is an `Arc` inside.
#[derive(Clone, Default)]
pub struct Metrics {
    recipients: ByResult,
    entries: ByResult,
    pub queue_errors: Counter,
    pub throttled: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "delivery_recipients",
            "Recipient delivery attempts by result (delivered, failed, deferred)",
            metrics.recipients.clone(),
        );
        registry.register(
            "delivery_entries",
            "Queue entries handled by result (done, retried)",
            metrics.entries.clone(),
        );
        registry.register(
            "delivery_queue_errors",
            "Queue or spool backend errors seen by the workers",
            metrics.queue_errors.clone(),
        );
        registry.register(
            "delivery_throttled",
            "Remote delivery attempts postponed because the destination was at its limit",
            metrics.throttled.clone(),
        );
        metrics
    }

    pub fn recipient(&self, result: &'static str) {
        self.recipients.get_or_create(&[("result", result)]).inc();
    }

    pub fn entry(&self, result: &'static str) {
        self.entries.get_or_create(&[("result", result)]).inc();
    }
}
