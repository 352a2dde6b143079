//! `mailfleet queue list|show|retry|delete|bounce`: the delivery queue as
//! an operator sees it, through the admin API (`/api/v1/queue...`) of a
//! running process, which opens the queue backend itself. What is done to
//! an entry is in `mailfleet_delivery::admin`; an entry a worker holds at
//! the moment is left alone (the command says so; try again).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Subcommand;
use mailfleet_delivery::admin;
use mailfleet_runtime::Context;
use mailfleet_runtime::backend::{BackendError, QueuedEntry};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::Global;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// List queue entries.
    List {
        /// Only entries with a pending recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only entries in this state.
        #[arg(long, value_parser = ["deferred", "active", "queued"])]
        status: Option<String>,
    },
    /// Show one entry: recipients, attempts, last error, next retry.
    Show { id: String },
    /// Try an entry (or every entry of a domain) now.
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        domain: Option<String>,
    },
    /// Delete an entry (or every entry of a domain) without telling the sender.
    Delete {
        id: Option<String>,
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        domain: Option<String>,
    },
    /// Give up on an entry: its pending recipients fail and the sender gets a DSN.
    Bounce { id: String },
}

#[derive(Subcommand)]
pub enum QueueCommands {
    /// The delivery queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-11-25 12:00:00` style is not needed by a shell user; an age is.
fn relative(ms: i64, now: i64) -> String {
    let secs = (ms - now) / 1000;
    let (sign, secs) = if secs < 0 { ("-", -secs) } else { ("+", secs) };
    if secs < 120 {
        format!("{sign}{secs}s")
    } else if secs < 7200 {
        format!("{sign}{}m", secs / 60)
    } else {
        format!("{sign}{}h", secs / 3600)
    }
}

pub async fn run(global: &Global, command: QueueCommands) -> ExitCode {
    let QueueCommands::Queue { command } = command;
    crate::cli::admin(global, |c| async move {
        let now = now_ms();
        match command {
            QueueCommand::List { domain, status } => {
                let mut path = String::from("/api/v1/queue?");
                if let Some(d) = &domain {
                    path.push_str(&format!("domain={d}&"));
                }
                if let Some(s) = &status {
                    path.push_str(&format!("status={s}"));
                }
                let v = c.get(&path).await?;
                let entries = v["entries"].as_array().cloned().unwrap_or_default();
                for e in &entries {
                    println!(
                        "{}  {:8}  age {:>6}  next {:>6}  {}/{} pending  <{}>{}",
                        e["id"].as_str().unwrap_or_default(),
                        e["status"].as_str().unwrap_or_default(),
                        relative(e["received_at_ms"].as_i64().unwrap_or(now), now),
                        relative(e["next_retry_at_ms"].as_i64().unwrap_or(now), now),
                        e["pending"],
                        e["recipients"],
                        e["from"].as_str().unwrap_or_default(),
                        if e["is_dsn"].as_bool().unwrap_or(false) {
                            "  (DSN)"
                        } else {
                            ""
                        },
                    );
                }
                println!(
                    "{} entr{}",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                );
            }
            QueueCommand::Show { id } => {
                let e = c.get(&format!("/api/v1/queue/{id}")).await?;
                println!("id:        {}", e["id"].as_str().unwrap_or_default());
                println!("from:      <{}>", e["from"].as_str().unwrap_or_default());
                println!("status:    {}", e["status"].as_str().unwrap_or_default());
                println!("size:      {}", e["size"]);
                println!(
                    "message-id: {}",
                    e["message_id"].as_str().unwrap_or_default()
                );
                for r in e["recipients"].as_array().into_iter().flatten() {
                    println!(
                        "  {} ({}): {}, {} attempt(s){}{}{}",
                        r["address"].as_str().unwrap_or_default(),
                        if r["local"].as_bool().unwrap_or(false) {
                            "local"
                        } else {
                            "remote"
                        },
                        r["status"].as_str().unwrap_or_default(),
                        r["attempts"],
                        match r["last_error"].as_str() {
                            Some(err) if !err.is_empty() => format!(", last error: {err}"),
                            _ => String::new(),
                        },
                        if r["status"] == "pending" {
                            let next = r["next_attempt_at_ms"].as_i64().unwrap_or(0).max(now);
                            format!(", next retry {}", relative(next, now))
                        } else {
                            String::new()
                        },
                        match r["tls"].as_str() {
                            Some(tls) if !tls.is_empty() => format!(", {tls}"),
                            _ => String::new(),
                        },
                    );
                }
            }
            QueueCommand::Retry { id, domain } => {
                let v = c
                    .post(
                        "/api/v1/queue/retry",
                        &json!({ "id": id, "domain": domain }),
                    )
                    .await?;
                report(&v, "retried now");
            }
            QueueCommand::Delete { id, domain } => {
                let v = c
                    .post(
                        "/api/v1/queue/delete",
                        &json!({ "id": id, "domain": domain }),
                    )
                    .await?;
                report(&v, "deleted");
            }
            QueueCommand::Bounce { id } => {
                let v = c.post("/api/v1/queue/bounce", &json!({ "id": id })).await?;
                report(&v, "bounced");
            }
        }
        Ok(())
    })
    .await
}

fn report(v: &Value, what: &str) {
    println!(
        "{} entr{} {what}",
        v["changed"],
        if v["changed"] == 1 { "y" } else { "ies" }
    );
    let busy = v["busy"].as_u64().unwrap_or(0);
    if busy > 0 {
        println!("{busy} held by a worker right now, left alone: try again in a moment");
    }
}

/// The admin API routes of the queue, merged under `/api/v1` (behind its token).
pub fn routes<S: Clone + Send + Sync + 'static>(ctx: Arc<Context>) -> Router<S> {
    Router::new()
        .route("/queue", get(list))
        .route("/queue/{id}", get(show))
        .route("/queue/retry", post(retry))
        .route("/queue/delete", post(delete))
        .route("/queue/bounce", post(bounce))
        .with_state(ctx)
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn backend_error(error: BackendError) -> Response {
    match error {
        BackendError::Unsupported(_) => api_error(StatusCode::NOT_IMPLEMENTED, &error.to_string()),
        other => api_error(StatusCode::SERVICE_UNAVAILABLE, &other.to_string()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    domain: Option<String>,
    status: Option<String>,
}

async fn list(State(ctx): State<Arc<Context>>, Query(q): Query<ListQuery>) -> Response {
    let entries = match all(&ctx).await {
        Ok(entries) => entries,
        Err(response) => return response,
    };
    let now = now_ms();
    let shown: Vec<Value> = entries
        .iter()
        .filter(|e| {
            q.domain
                .as_deref()
                .is_none_or(|d| admin::concerns_domain(&e.entry, d))
        })
        .filter(|e| {
            q.status
                .as_deref()
                .is_none_or(|s| admin::status(e, now) == s)
        })
        .map(|e| admin::to_json(e, now, false))
        .collect();
    Json(json!({ "entries": shown })).into_response()
}

async fn all(ctx: &Context) -> Result<Vec<QueuedEntry>, Response> {
    let queue = ctx.queue().await.map_err(backend_error)?;
    queue.list().await.map_err(backend_error)
}

async fn show(State(ctx): State<Arc<Context>>, Path(id): Path<String>) -> Response {
    let queue = match ctx.queue().await {
        Ok(q) => q,
        Err(e) => return backend_error(e),
    };
    match queue.get(&id).await {
        Ok(Some(e)) => Json(admin::to_json(&e, now_ms(), true)).into_response(),
        Ok(None) => api_error(StatusCode::NOT_FOUND, &format!("no queue entry {id}")),
        Err(e) => backend_error(e),
    }
}

#[derive(Deserialize)]
struct Selection {
    id: Option<String>,
    domain: Option<String>,
}

/// The entries an operation applies to: one by id, or every one with a
/// pending recipient in a domain.
async fn select(ctx: &Context, selection: &Selection) -> Result<Vec<QueuedEntry>, Response> {
    match (&selection.id, &selection.domain) {
        (Some(id), _) => {
            let queue = ctx.queue().await.map_err(backend_error)?;
            match queue.get(id).await.map_err(backend_error)? {
                Some(e) => Ok(vec![e]),
                None => Err(api_error(
                    StatusCode::NOT_FOUND,
                    &format!("no queue entry {id}"),
                )),
            }
        }
        (None, Some(domain)) => Ok(all(ctx)
            .await?
            .into_iter()
            .filter(|e| admin::concerns_domain(&e.entry, domain))
            .collect()),
        (None, None) => Err(api_error(StatusCode::BAD_REQUEST, "give an id or a domain")),
    }
}

/// Applies `change` to the selected entries and stores them due now.
async fn change_each(
    ctx: &Context,
    selection: &Selection,
    change: impl Fn(&mut mailfleet_proto::queue::QueueEntry, i64) -> bool,
) -> Response {
    let selected = match select(ctx, selection).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let queue = match ctx.queue().await {
        Ok(q) => q,
        Err(e) => return backend_error(e),
    };
    let (mut changed, mut busy) = (0, 0);
    for mut queued in selected {
        let now = now_ms();
        if queued.leased {
            busy += 1;
            continue;
        }
        if !change(&mut queued.entry, now) {
            continue;
        }
        match queue.update(&queued.entry, now).await {
            Ok(true) => changed += 1,
            Ok(false) => busy += 1,
            Err(e) => return backend_error(e),
        }
    }
    Json(json!({ "changed": changed, "busy": busy })).into_response()
}

async fn retry(State(ctx): State<Arc<Context>>, Json(s): Json<Selection>) -> Response {
    change_each(&ctx, &s, |entry, _| admin::retry_now(entry)).await
}

async fn bounce(State(ctx): State<Arc<Context>>, Json(s): Json<Selection>) -> Response {
    if s.id.is_none() {
        return api_error(StatusCode::BAD_REQUEST, "bounce takes an id");
    }
    change_each(&ctx, &s, admin::bounce).await
}

async fn delete(State(ctx): State<Arc<Context>>, Json(s): Json<Selection>) -> Response {
    let selected = match select(&ctx, &s).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (queue, spool) = match (ctx.queue().await, ctx.spool().await) {
        (Ok(q), Ok(s)) => (q, s),
        (Err(e), _) | (_, Err(e)) => return backend_error(e),
    };
    let (mut changed, mut busy) = (0, 0);
    for queued in selected {
        match queue.remove(&queued.entry.id).await {
            Ok(true) => {
                changed += 1;
                tracing::info!(queue_id = %queued.entry.id, "queue entry deleted by the administrator");
                if let Err(error) = spool.delete(&queued.entry.blob).await {
                    tracing::warn!(blob = %queued.entry.blob, %error, "cannot delete spooled message");
                }
            }
            Ok(false) => busy += 1,
            Err(e) => return backend_error(e),
        }
    }
    Json(json!({ "changed": changed, "busy": busy })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(relative(0, 30_000), "-30s");
        assert_eq!(relative(600_000, 0), "+10m");
        assert_eq!(relative(0, 3 * 3_600_000), "-3h");
    }
}
