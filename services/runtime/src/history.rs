//! The recording side of message history (`mailfleet trace`): smtp-edge and
//! delivery hand events to a [`Recorder`], which sends them to mailstore's
//! `History` service in the background.
//!
//! Recording must never hold up or fail mail: `record` returns at once, the
//! call has a short deadline, at most [`MAX_IN_FLIGHT`] calls run at a time
//! (beyond that events are dropped), and a failure is a warning in the log.
//! The history is an operator's aid; the queue entry stays the truth.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailfleet_proto::history::HistoryEvent;
use mailfleet_proto::history::history_client::HistoryClient;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tracing::Instrument;

/// Deadline of one `Record` call.
const RECORD_TIMEOUT: Duration = Duration::from_secs(3);
/// Calls in flight at most; a mailstore that is down or slow costs a few
/// hundred small tasks, not an unbounded pile of them.
pub const MAX_IN_FLIGHT: usize = 256;

/// Sends history events to mailstore without waiting for them.
#[derive(Clone)]
pub struct Recorder {
    client: Option<HistoryClient<Channel>>,
    in_flight: Arc<Semaphore>,
}

impl Recorder {
    /// A recorder with a lazy channel to `mailstore_url`
    /// (`services.mailstore_url`); it connects on the first event.
    pub fn new(mailstore_url: &str) -> Result<Recorder, tonic::transport::Error> {
        let channel = crate::grpc::lazy_channel(mailstore_url)?;
        Ok(Recorder {
            client: Some(HistoryClient::new(channel)),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// A recorder that drops every event (tests, tools).
    pub fn disabled() -> Recorder {
        Recorder {
            client: None,
            in_flight: Arc::new(Semaphore::new(0)),
        }
    }

    /// Records one event in the background.
    pub fn record(&self, event: HistoryEvent) {
        self.record_all(vec![event]);
    }

    /// Records events in the background, one after the other, so that
    /// events of the same millisecond are stored in the order given.
    /// `at_ms` is set to now where it is 0.
    pub fn record_all(&self, mut events: Vec<HistoryEvent>) {
        let Some(client) = &self.client else { return };
        if events.is_empty() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(
                queue_id = %events[0].queue_id,
                dropped = events.len(),
                "history recorder saturated, events dropped"
            );
            return;
        };
        let now = now_ms();
        for event in &mut events {
            if event.at_ms == 0 {
                event.at_ms = now;
            }
        }
        // Requests are built here, in the caller's span, so that the calls
        // join the message's trace.
        let requests: Vec<_> = events
            .into_iter()
            .map(|event| {
                let mut request = crate::trace::request(event);
                request.set_timeout(RECORD_TIMEOUT);
                request
            })
            .collect();
        let mut client = client.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                for request in requests {
                    let queue_id = request.get_ref().queue_id.clone();
                    let stage = request.get_ref().stage.clone();
                    if let Err(status) = client.record(request).await {
                        tracing::warn!(
                            %queue_id,
                            %stage,
                            code = ?status.code(),
                            error = %status.message(),
                            "cannot record message history"
                        );
                    }
                }
            }
            .in_current_span(),
        );
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A Message-ID as stored and looked up: trimmed, in angle brackets
/// (`abc@x` and `<abc@x>` name the same message); empty stays empty.
pub fn normalize_message_id(id: &str) -> String {
    let id = id.trim();
    if id.is_empty() {
        return String::new();
    }
    let bare = id.trim_start_matches('<').trim_end_matches('>');
    format!("<{bare}>")
}

/// Unix milliseconds as RFC 3339 in UTC, to the second:
/// `2026-11-25T13:05:09Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    crate::dates::rfc3339(unix_ms.div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_057_056_757_999), "2003-07-01T10:52:37Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599_000), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn message_ids_normalize() {
        assert_eq!(normalize_message_id("abc@x"), "<abc@x>");
        assert_eq!(normalize_message_id(" <abc@x> "), "<abc@x>");
        assert_eq!(normalize_message_id(""), "");
    }

    #[tokio::test]
    async fn a_disabled_or_unreachable_recorder_never_blocks() {
        Recorder::disabled().record(HistoryEvent::default());
        // Nothing listens on port 1: the call fails in the background.
        let recorder = Recorder::new("http://127.0.0.1:1").unwrap();
        recorder.record(HistoryEvent {
            queue_id: "q".into(),
            stage: "received".into(),
            ..HistoryEvent::default()
        });
    }
}
