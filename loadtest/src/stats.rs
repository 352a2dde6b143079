//! What a run measures: latency histograms (HDR, microseconds), error counts
//! by kind (an SMTP reply code, an IMAP `NO`/`BAD`, `io`, `timeout`), and the
//! summaries printed for people and as JSON for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds: one hour, in microseconds. Larger
/// values are clamped (and so still counted) rather than dropped.
const MAX_MICROS: u64 = 3_600_000_000;

/// The quantiles written to JSON for latency CDF charts.
const CDF_QUANTILES: [f64; 17] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 1.0,
];

/// One latency distribution.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Three significant digits: 0.1 % resolution at every magnitude.
        Latency(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid"))
    }

    pub fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            mean_ms: self.0.mean() / 1000.0,
            p50_ms: ms(self.0.value_at_quantile(0.5)),
            p90_ms: ms(self.0.value_at_quantile(0.9)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
            cdf: CDF_QUANTILES
                .iter()
                .map(|&q| (q, ms(self.0.value_at_quantile(q))))
                .collect(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// `(quantile, milliseconds)` pairs, for CDF charts.
    pub cdf: Vec<(f64, f64)>,
}

/// Errors by kind: `"550"`, `"NO"`, `"io"`, `"timeout"`, `"connect"`, ...
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    pub fn add(&mut self, kind: &str) {
        *self.0.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Errors) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `n` per second over `elapsed`, 0 for an empty interval.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 { 0.0 } else { n as f64 / secs }
}

/// One line for people: `p50 1.2 ms  p90 ...`.
pub fn latency_line(s: &LatencySummary) -> String {
    if s.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
        s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p90_ms - 90.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(s.cdf.len(), CDF_QUANTILES.len());
        assert!(s.cdf.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn merge_adds_counts_and_huge_values_are_clamped_not_lost() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_micros(0));
        b.record(Duration::from_secs(10 * 3600));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.summary().max_ms >= 3_599_000.0);
    }

    #[test]
    fn empty_summary_and_errors() {
        assert_eq!(Latency::new().summary().count, 0);
        let mut e = Errors::default();
        assert_eq!(e.describe(), "none");
        e.add("550");
        e.add("550");
        e.add("io");
        let mut f = Errors::default();
        f.add("io");
        e.merge(&f);
        assert_eq!(e.total(), 4);
        assert_eq!(e.describe(), "550: 2, io: 2");
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
    }
}
