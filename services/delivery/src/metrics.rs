//! The delivery workers' Prometheus metrics, registered in the process registry.
//!
//! Named for the questions asked during an incident: are we delivering
//! (`delivery_attempts_total` by result and destination kind), how slow are
//! the attempts (`delivery_attempt_duration_seconds`) and how long does a
//! message wait between acceptance and delivery (`delivery_end_to_end_seconds`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type ByResult = Family<[(&'static str, &'static str); 1], Counter>;

/// Where an attempt went: `local` (mailstore) or `remote` (SMTP). Never the
/// remote domain itself: that would make the label set unbounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub destination: &'static str,
    /// `delivered`, `deferred` (transient, tried again), `bounced`
    /// (permanent answer), `failed` (transient but out of time or retries).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: &'static str,
}

type Histograms = Family<DestinationLabels, Histogram, fn() -> Histogram>;

/// Attempts take from milliseconds (mailstore) to minutes (a slow remote MX).
fn attempt_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

/// From a second (the first attempt succeeds) to days (retries until expiry).
fn end_to_end_buckets() -> Histogram {
    Histogram::new([
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        24.0 * 3600.0,
        5.0 * 24.0 * 3600.0,
    ])
}

/// Cheap to clone: every metric is an `Arc` inside.
#[derive(Clone)]
pub struct Metrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Histograms,
    end_to_end: Histograms,
    entries: ByResult,
    pub queue_errors: Counter,
    pub throttled: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(attempt_buckets),
            end_to_end: Family::new_with_constructor(end_to_end_buckets),
            entries: ByResult::default(),
            queue_errors: Counter::default(),
            throttled: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        registry.register(
            "delivery_attempts",
            "Recipient delivery attempts by destination kind (local, remote) and result (delivered, deferred, bounced, failed)",
            metrics.attempts.clone(),
        );
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Duration of one delivery attempt: a mailstore Deliver call, or one SMTP transaction to a remote domain",
            Unit::Seconds,
            metrics.attempt_duration.clone(),
        );
        registry.register_with_unit(
            "delivery_end_to_end",
            "Time from acceptance by smtp-edge to delivery of a recipient",
            Unit::Seconds,
            metrics.end_to_end.clone(),
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

    /// One recipient's attempt ended with `result`.
    pub fn attempt(&self, destination: &'static str, result: &'static str) {
        self.attempts
            .get_or_create(&AttemptLabels {
                destination,
                result,
            })
            .inc();
    }

    /// One attempt (local: one recipient; remote: one SMTP transaction) took `seconds`.
    pub fn attempt_duration(&self, destination: &'static str, seconds: f64) {
        self.attempt_duration
            .get_or_create(&DestinationLabels { destination })
            .observe(seconds);
    }

    /// A recipient was delivered `seconds` after the message was accepted.
    pub fn end_to_end(&self, destination: &'static str, seconds: f64) {
        self.end_to_end
            .get_or_create(&DestinationLabels { destination })
            .observe(seconds);
    }

    pub fn entry(&self, result: &'static str) {
        self.entries.get_or_create(&[("result", result)]).inc();
    }
}
