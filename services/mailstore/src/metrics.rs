//! The mailstore's Prometheus metrics, registered in the process registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type ByResult = Family<[(&'static str, &'static str); 1], Counter>;

/// Cheap to clone: every metric is an `Arc` inside.
#[derive(Clone, Default)]
pub struct Metrics {
    deliveries: ByResult,
    authentications: ByResult,
    pub expunged: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "mailstore_deliveries",
            "Deliver calls by result (stored, duplicate, error)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "mailstore_authentications",
            "Authenticate calls by result (ok, failed)",
            metrics.authentications.clone(),
        );
        registry.register(
            "mailstore_expunged_messages",
            "Messages removed by expunge",
            metrics.expunged.clone(),
        );
        metrics
    }

    pub fn deliveries(&self, result: &'static str) -> Counter {
        self.deliveries.get_or_create(&[("result", result)]).clone()
    }

    pub fn authentications(&self, result: &'static str) -> Counter {
        self.authentications
            .get_or_create(&[("result", result)])
            .clone()
    }
}
