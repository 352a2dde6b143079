//! Single-node rate-limit counters: fixed windows aligned on the unix epoch
//! (the same windows as [`super::RedisCounters`]), kept in a map that drops
//! windows which have ended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::*;

/// Hits between two sweeps of ended windows: keeps the map as small as the
/// set of keys seen in the current windows without a sweep per hit.
const PRUNE_EVERY: u64 = 1024;

#[derive(Default)]
pub struct MemoryCounters {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (key, window length in ms) → the current window of that key.
    windows: HashMap<(String, u64), Window>,
    hits_since_prune: u64,
    /// [`Counters::first_seen`]: key → (first seen, forgotten at), unix ms.
    sightings: HashMap<String, (u64, u64)>,
}

#[derive(Clone, Copy)]
struct Window {
    index: u64,
    /// Unix ms at which this window is over.
    ends_ms: u64,
    count: u64,
}

impl MemoryCounters {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a counter half
        // updated, so a poisoned map is still good.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hit_at(&self, key: &str, window: Duration, now_ms: u64) -> Result<u64> {
        let window_ms = window_ms(window)?;
        let index = now_ms / window_ms;
        let mut state = self.lock();
        state.hits_since_prune += 1;
        if state.hits_since_prune >= PRUNE_EVERY {
            state.hits_since_prune = 0;
            state.windows.retain(|_, w| w.ends_ms > now_ms);
        }
        let fresh = Window {
            index,
            ends_ms: (index + 1).saturating_mul(window_ms),
            count: 0,
        };
        let current = state
            .windows
            .entry((key.to_owned(), window_ms))
            .or_insert(fresh);
        if current.index != index {
            *current = fresh;
        }
        current.count += 1;
        Ok(current.count)
    }

    fn first_seen_at(&self, key: &str, ttl: Duration, now_ms: u64) -> Result<u64> {
        let ttl_ms = window_ms(ttl)?;
        let mut state = self.lock();
        state.hits_since_prune += 1;
        if state.hits_since_prune >= PRUNE_EVERY {
            state.hits_since_prune = 0;
            state.sightings.retain(|_, &mut (_, until)| until > now_ms);
        }
        let record = state
            .sightings
            .entry(key.to_owned())
            .or_insert((now_ms, now_ms.saturating_add(ttl_ms)));
        if record.1 <= now_ms {
            *record = (now_ms, now_ms.saturating_add(ttl_ms));
        }
        Ok(record.0)
    }
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn hit(&self, key: &str, window: Duration) -> Result<u64> {
        self.hit_at(key, window, now_ms())
    }

    async fn first_seen(&self, key: &str, ttl: Duration) -> Result<u64> {
        self.first_seen_at(key, ttl, now_ms())
    }
}

/// The window length in whole milliseconds; a zero window counts nothing.
pub(super) fn window_ms(window: Duration) -> Result<u64> {
    match u64::try_from(window.as_millis()) {
        Ok(0) => Err(BackendError::Other(
            "rate-limit window must be at least 1 ms".into(),
        )),
        Ok(ms) => Ok(ms),
        Err(_) => Err(BackendError::Other("rate-limit window too long".into())),
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_resets_in_the_next() {
        let c = MemoryCounters::new();
        let w = Duration::from_secs(10);
        assert_eq!(c.hit_at("ip", w, 10_000).unwrap(), 1);
        assert_eq!(c.hit_at("ip", w, 19_999).unwrap(), 2);
        assert_eq!(c.hit_at("other", w, 19_999).unwrap(), 1);
        assert_eq!(c.hit_at("ip", w, 20_000).unwrap(), 1);
    }

    #[test]
    fn ended_windows_are_pruned() {
        let c = MemoryCounters::new();
        let w = Duration::from_secs(1);
        for i in 0..PRUNE_EVERY - 1 {
            c.hit_at(&format!("k{i}"), w, 500).unwrap();
        }
        assert_eq!(c.lock().windows.len() as u64, PRUNE_EVERY - 1);
        // The next hit, in a later window, sweeps the ended ones.
        c.hit_at("late", w, 5_000).unwrap();
        assert_eq!(c.lock().windows.len(), 1);
    }

    #[test]
    fn zero_window_is_refused() {
        let c = MemoryCounters::new();
        assert!(c.hit_at("k", Duration::ZERO, 1).is_err());
    }
}
