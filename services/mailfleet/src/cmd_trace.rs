//! `mailfleet trace <queue-id | Message-ID>`: the history of one message
//! (received, verdict, each delivery outcome with its remote host and
//! reply, DSNs) for operators without a tracing backend. The admin API
//! (`GET /api/v1/trace/{id}`) reads it from mailstore's `History` service;
//! smtp-edge and delivery record it as the message goes.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::bail;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mailfleet_proto::history::HistoryQuery;
use mailfleet_proto::history::history_client::HistoryClient;
use mailfleet_runtime::Context;
use mailfleet_runtime::history::rfc3339;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cli::Global;

/// Deadline of the history lookup behind one API call.
const GET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(global: &Global, id: String) -> ExitCode {
    crate::cli::admin(global, |c| async move {
        let v = c
            .get(&format!("/api/v1/trace/{}", encode_path(&id)))
            .await?;
        let events = v["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            bail!("no history for {id}");
        }
        for line in lines(&events) {
            println!("{line}");
        }
        Ok(())
    })
    .await
}

/// One line per event: time (RFC 3339, UTC), stage, recipient, remote,
/// reply and detail; prefixed by the queue id when a Message-ID matched
/// several queue entries.
fn lines(events: &[Value]) -> Vec<String> {
    let text = |e: &Value, key: &str| e[key].as_str().unwrap_or_default().to_owned();
    let queue_ids: BTreeSet<String> = events.iter().map(|e| text(e, "queue_id")).collect();
    events
        .iter()
        .map(|e| {
            let mut line = String::new();
            if queue_ids.len() > 1 {
                line.push_str(&format!("[{}] ", text(e, "queue_id")));
            }
            line.push_str(&format!(
                "{}  {:<9}",
                rfc3339(e["at_ms"].as_i64().unwrap_or(0)),
                text(e, "stage")
            ));
            for key in ["recipient", "remote", "reply"] {
                let value = text(e, key);
                if !value.is_empty() {
                    line.push_str("  ");
                    line.push_str(&value);
                }
            }
            let detail = text(e, "detail");
            if !detail.is_empty() {
                line.push_str(&format!("  ({detail})"));
            }
            line
        })
        .collect()
}

/// A path segment for any id: a Message-ID may hold `/`, `%`, `+`, ...
fn encode_path(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The admin API route, merged under `/api/v1` (behind its token).
pub fn routes<S: Clone + Send + Sync + 'static>(ctx: Arc<Context>) -> anyhow::Result<Router<S>> {
    let channel = mailfleet_runtime::grpc::lazy_channel(&ctx.config.services.mailstore_url)?;
    Ok(Router::new()
        .route("/trace/{id}", get(trace))
        .with_state(HistoryClient::new(channel)))
}

/// `{"id": ..., "events": [...]}`, oldest first; no events is not an error
/// (the message may be older than the retention, or not have arrived).
async fn trace(
    State(mut history): State<HistoryClient<Channel>>,
    Path(id): Path<String>,
) -> Response {
    let mut request = mailfleet_runtime::trace::request(HistoryQuery { id: id.clone() });
    request.set_timeout(GET_TIMEOUT);
    match history.get(request).await {
        Ok(reply) => {
            let events: Vec<Value> = reply
                .into_inner()
                .events
                .into_iter()
                .map(|e| {
                    json!({
                        "queue_id": e.queue_id,
                        "message_id": e.message_id,
                        "at_ms": e.at_ms,
                        "at": rfc3339(e.at_ms),
                        "stage": e.stage,
                        "recipient": e.recipient,
                        "remote": e.remote,
                        "reply": e.reply,
                        "detail": e.detail,
                    })
                })
                .collect();
            Json(json!({ "id": id, "events": events })).into_response()
        }
        Err(status) => {
            let code = match status.code() {
                tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(json!({ "error": status.message() }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(encode_path("0193-abc"), "0193-abc");
        assert_eq!(encode_path("<a/b+c@x.test>"), "%3Ca%2Fb%2Bc@x.test%3E");
    }

    #[test]
    fn one_line_per_event() {
        let events = vec![
            json!({"queue_id": "q1", "at_ms": 0, "stage": "received", "detail": "client 127.0.0.1"}),
            json!({"queue_id": "q1", "at_ms": 1000, "stage": "delivered", "recipient": "c@r.test",
                   "remote": "mx.r.test", "reply": "250 ok", "detail": "plaintext"}),
        ];
        assert_eq!(
            lines(&events),
            [
                "1970-01-01T00:00:00Z  received   (client 127.0.0.1)",
                "1970-01-01T00:00:01Z  delivered  c@r.test  mx.r.test  250 ok  (plaintext)",
            ]
        );
        let mut two = events.clone();
        two[1]["queue_id"] = json!("q2");
        assert!(lines(&two)[1].starts_with("[q2] 1970-01-01T00:00:01Z"));
    }
}
