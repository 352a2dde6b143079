//! The `mailfleet_queue_*` gauges: how deep the queue is and how old its
//! oldest entry, by status and by destination domain. Refreshed by a task
//! from [`Queue::stats`], because reading the queue is async and a
//! prometheus-client collector is not.
//!
//! Every process that opened the queue (smtp-edge, delivery) registers
//! them, but only the leader of the `queue-metrics` job reads the queue and
//! exports them (see [`crate::leader`]): one queue scan per refresh for the
//! whole cluster, not one per replica. The others export no queue series at
//! all, so a query over replicas sees the leader's values only; aggregate
//! with `max()` (or `max without (pod, instance)`), which also bridges the
//! moment of a leader change when two replicas may report.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::backend::{Queue, QueueBucket, QueueStats};
use crate::leader::Leadership;

/// How often the gauges are refreshed: often enough for an incident
/// dashboard, rarely enough that listing a large SQLite queue is cheap.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The domains reported one by one; the rest are summed under `other`, so a
/// queue full of spam to random domains cannot blow up the series count.
pub const MAX_DOMAINS: usize = 50;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// `queue_depth`, a gauge without labels that a replica which is not the
/// leader does not export at all (a plain gauge would say 0 there).
#[derive(Clone, Debug, Default)]
struct Depth(Arc<Mutex<Option<i64>>>);

impl Depth {
    fn set(&self, depth: Option<i64>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = depth;
    }
}

impl Collector for Depth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(depth) = *self.0.lock().unwrap_or_else(PoisonError::into_inner) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(depth);
        let metric = encoder.encode_descriptor(
            "depth",
            "Queue entries waiting, whatever their status (exported by the elected replica only: aggregate with max())",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Cheap to clone: every gauge is an `Arc` inside.
#[derive(Clone, Default)]
pub struct QueueMetrics {
    depth: Depth,
    entries: Family<StatusLabels, Gauge>,
    oldest_age: Family<StatusLabels, FloatGauge>,
    domain_entries: Family<DomainLabels, Gauge>,
    domain_oldest_age: Family<DomainLabels, FloatGauge>,
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> QueueMetrics {
        let metrics = QueueMetrics::default();
        let queue = registry.sub_registry_with_prefix("queue");
        queue.register_collector(Box::new(metrics.depth.clone()));
        queue.register(
            "entries",
            "Queue entries by status (due, deferred, leased; JetStream over 10,000 entries: due, leased_or_deferred)",
            metrics.entries.clone(),
        );
        queue.register_with_unit(
            "oldest_entry_age",
            "Age since acceptance of the oldest queue entry, by status (not on JetStream over 10,000 entries)",
            Unit::Seconds,
            metrics.oldest_age.clone(),
        );
        queue.register(
            "domain_entries",
            "Queue entries with recipients pending for a destination domain (not on JetStream over 10,000 entries)",
            metrics.domain_entries.clone(),
        );
        queue.register_with_unit(
            "domain_oldest_entry_age",
            "Age since acceptance of the oldest queue entry pending for a destination domain (not on JetStream over 10,000 entries)",
            Unit::Seconds,
            metrics.domain_oldest_age.clone(),
        );
        metrics
    }

    /// Replaces every gauge with `stats`. Families are cleared first so a
    /// domain that left the queue stops being reported.
    pub fn set(&self, stats: &QueueStats, now_ms: i64) {
        self.depth.set(Some(clamp(stats.depth)));
        self.entries.clear();
        self.oldest_age.clear();
        for (status, bucket) in &stats.by_status {
            let labels = StatusLabels { status };
            self.entries
                .get_or_create(&labels)
                .set(clamp(bucket.entries));
            if let Some(age) = age_secs(bucket, now_ms) {
                self.oldest_age.get_or_create(&labels).set(age);
            }
        }
        self.domain_entries.clear();
        self.domain_oldest_age.clear();
        let mut domains: Vec<(&String, &QueueBucket)> = stats.by_domain.iter().collect();
        domains.sort_by(|a, b| b.1.entries.cmp(&a.1.entries).then(a.0.cmp(b.0)));
        let mut other = QueueBucket::default();
        for (i, (domain, bucket)) in domains.into_iter().enumerate() {
            if i >= MAX_DOMAINS {
                other.entries += bucket.entries;
                other.oldest_received_at_ms =
                    match (other.oldest_received_at_ms, bucket.oldest_received_at_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                continue;
            }
            self.set_domain(domain.clone(), bucket, now_ms);
        }
        if other.entries > 0 {
            self.set_domain("other".into(), &other, now_ms);
        }
    }

    /// Exports nothing: this replica is not (or no longer) the leader, and
    /// values it read while it was would go stale.
    pub fn clear(&self) {
        self.depth.set(None);
        self.entries.clear();
        self.oldest_age.clear();
        self.domain_entries.clear();
        self.domain_oldest_age.clear();
    }

    fn set_domain(&self, domain: String, bucket: &QueueBucket, now_ms: i64) {
        let labels = DomainLabels { domain };
        self.domain_entries
            .get_or_create(&labels)
            .set(clamp(bucket.entries));
        if let Some(age) = age_secs(bucket, now_ms) {
            self.domain_oldest_age.get_or_create(&labels).set(age);
        }
    }
}

/// Refreshes `metrics` from `queue` every [`REFRESH`] while `leadership`
/// says this process is the leader, and exports nothing while it is not,
/// until the queue is dropped (the task holds it weakly, so it never keeps a
/// backend open).
pub fn spawn_refresh(queue: Weak<dyn Queue>, metrics: QueueMetrics, mut leadership: Leadership) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A new leader fills the gauges at once, a deposed one empties
            // them at once, instead of at the next tick.
            tokio::select! {
                _ = tick.tick() => {}
                _ = leadership.changed() => {}
            }
            let Some(queue) = queue.upgrade() else { return };
            if leadership.is_leader() {
                refresh(&*queue, &metrics).await;
            } else {
                metrics.clear();
            }
        }
    });
}

/// One refresh; a failing backend leaves the last values (and says so).
pub async fn refresh(queue: &dyn Queue, metrics: &QueueMetrics) {
    let now = now_ms();
    match queue.stats(now).await {
        Ok(stats) => metrics.set(&stats, now),
        Err(error) => tracing::warn!(%error, "queue stats unavailable, gauges not refreshed"),
    }
}

fn age_secs(bucket: &QueueBucket, now_ms: i64) -> Option<f64> {
    if bucket.entries == 0 {
        return None;
    }
    let oldest = bucket.oldest_received_at_ms?;
    Some(now_ms.saturating_sub(oldest).max(0) as f64 / 1000.0)
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
    use prometheus_client::encoding::text::encode;

    use super::*;
    use crate::backend::QueuedEntry;

    fn queued(
        id: &str,
        rcpts: &[(&str, RecipientStatus)],
        received: i64,
        due: i64,
        leased: bool,
    ) -> QueuedEntry {
        QueuedEntry {
            entry: QueueEntry {
                id: id.into(),
                received_at_ms: received,
                recipients: rcpts
                    .iter()
                    .map(|(address, status)| Recipient {
                        address: (*address).into(),
                        status: *status as i32,
                        ..Recipient::default()
                    })
                    .collect(),
                ..QueueEntry::default()
            },
            due_at_ms: due,
            leased,
        }
    }

    #[test]
    fn stats_by_status_and_domain() {
        use RecipientStatus::*;
        let now = 100_000;
        let entries = [
            queued(
                "a",
                &[("x@Example.com", Pending), ("y@example.com", Pending)],
                10_000,
                0,
                false,
            ),
            queued(
                "b",
                &[("x@example.com", Delivered), ("z@other.org", Pending)],
                40_000,
                200_000,
                false,
            ),
            queued("c", &[("z@other.org", Pending)], 70_000, 0, true),
        ];
        let stats = QueueStats::from_entries(&entries, now);
        assert_eq!(stats.depth, 3);
        assert_eq!(stats.by_status["due"].entries, 1);
        assert_eq!(
            stats.by_status["deferred"].oldest_received_at_ms,
            Some(40_000)
        );
        assert_eq!(stats.by_status["leased"].entries, 1);
        // The delivered recipient of b no longer counts for example.com.
        assert_eq!(stats.by_domain["example.com"].entries, 1);
        assert_eq!(stats.by_domain["other.org"].entries, 2);
        assert_eq!(
            stats.by_domain["other.org"].oldest_received_at_ms,
            Some(40_000)
        );

        let mut registry = Registry::with_prefix("mailfleet");
        let metrics = QueueMetrics::register(&mut registry);
        metrics.set(&stats, now);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("mailfleet_queue_depth 3\n"), "{text}");
        assert!(
            text.contains("mailfleet_queue_entries{status=\"due\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mailfleet_queue_oldest_entry_age_seconds{status=\"due\"} 90.0\n"),
            "{text}"
        );
        assert!(
            text.contains("mailfleet_queue_domain_entries{domain=\"other.org\"} 2\n"),
            "{text}"
        );

        // Emptied: statuses drop to 0, domains disappear.
        metrics.set(&QueueStats::from_entries(&[], now), now);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("mailfleet_queue_entries{status=\"due\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("other.org"), "{text}");
        assert!(text.contains("mailfleet_queue_depth 0\n"), "{text}");

        // Not the leader (any more): no queue series at all, not even a 0,
        // so max() over replicas reads the leader's values.
        metrics.clear();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.contains("mailfleet_queue_"), "{text}");
    }
}
