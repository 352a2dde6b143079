//! `mailfleet filter train --spam|--ham FILE...`: teaches the Bayesian
//! classifier with labelled messages, through the admin API of the running
//! server (`POST /api/v1/filter/train`), which keeps the token counts where
//! the filter reads them (SQLite on a single node, Redis in a cluster).
//! A FILE is one message (RFC 5322) or an mbox of several.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Subcommand;
use mailfleet_filter::analysis::Analysis;
use mailfleet_filter::bayes::Bayes;
use mailfleet_proto::filter::CheckRequest;
use mailfleet_runtime::Context;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;

use crate::cli::Global;

#[derive(Subcommand)]
pub enum FilterCommand {
    /// Train the Bayesian classifier with messages known to be spam or ham.
    Train {
        /// The messages are spam.
        #[arg(long, conflicts_with = "ham", required_unless_present = "ham")]
        spam: bool,
        /// The messages are ham (wanted mail).
        #[arg(long)]
        ham: bool,
        /// Message files (one message each) or mbox files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub async fn run(global: &Global, command: FilterCommand) -> std::process::ExitCode {
    let FilterCommand::Train { spam, files, .. } = command;
    crate::cli::admin(global, |client| async move {
        let class = if spam { "spam" } else { "ham" };
        let mut learned = 0usize;
        for file in &files {
            for message in read_messages(file)? {
                let reply = client
                    .post(
                        "/api/v1/filter/train",
                        &json!({ "class": class, "message_hex": hex::encode(&message) }),
                    )
                    .await?;
                learned += 1;
                tracing::debug!(?reply, "trained");
            }
        }
        println!("learned {learned} message(s) as {class}");
        Ok(())
    })
    .await
}

/// The messages of a file: an mbox (first line `From `) is split at its
/// `From ` lines (mboxrd `>From ` quoting undone), anything else is one
/// message.
fn read_messages(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(split_mbox(&data))
}

fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    if !data.starts_with(b"From ") {
        return vec![data.to_vec()];
    }
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(done) = current.take() {
                messages.push(done);
            }
            current = Some(Vec::new());
            continue;
        }
        let line = match line.strip_prefix(b">") {
            Some(rest)
                if rest.trim_ascii_start().starts_with(b"From ") || rest.starts_with(b">") =>
            {
                rest
            }
            _ => line,
        };
        if let Some(message) = current.as_mut() {
            message.extend_from_slice(line);
        }
    }
    messages.extend(current);
    messages.retain(|m| !m.trim_ascii().is_empty());
    messages
}

/// The admin API routes of the filter, merged under `/api/v1` (behind its
/// token).
pub fn routes<S: Clone + Send + Sync + 'static>(ctx: Arc<Context>) -> Router<S> {
    let state = TrainState {
        ctx,
        bayes: Arc::new(OnceCell::new()),
    };
    Router::new()
        .route("/filter/train", post(train))
        .with_state(state)
}

#[derive(Clone)]
struct TrainState {
    ctx: Arc<Context>,
    /// Opened on first use: a process that never trains never opens it.
    bayes: Arc<OnceCell<Bayes>>,
}

#[derive(Deserialize)]
struct TrainRequest {
    class: String,
    message_hex: String,
}

async fn train(State(s): State<TrainState>, Json(body): Json<TrainRequest>) -> Response {
    let spam = match body.class.as_str() {
        "spam" => true,
        "ham" => false,
        other => {
            return bad_request(&format!("class must be spam or ham, not {other:?}"));
        }
    };
    let Ok(message) = hex::decode(&body.message_hex) else {
        return bad_request("message_hex is not hex");
    };
    let bayes = match s
        .bayes
        .get_or_try_init(|| mailfleet_filter::open_bayes(&s.ctx.config))
        .await
    {
        Ok(b) => b,
        Err(e) => return server_error(&e.to_string()),
    };
    let request = CheckRequest {
        message,
        ..CheckRequest::default()
    };
    let analysis = tokio::task::spawn_blocking(move || Analysis::new(&request)).await;
    let Ok(analysis) = analysis else {
        return server_error("message analysis failed");
    };
    if let Err(e) = bayes.learn(&analysis, spam).await {
        return server_error(&e.to_string());
    }
    match bayes.trained().await {
        Ok((spam, ham)) => Json(json!({ "spam": spam, "ham": ham })).into_response(),
        Err(e) => server_error(&e.to_string()),
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

fn server_error(message: &str) -> Response {
    tracing::warn!(error = message, "filter training failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_is_split_and_unquoted() {
        let mbox = b"From a@b Tue Nov 24 10:00:00 2026\nSubject: one\n\nbody\n>From here\n\
            From c@d Tue Nov 24 10:00:01 2026\nSubject: two\n\nbody two\n";
        let messages = split_mbox(mbox);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], b"Subject: one\n\nbody\nFrom here\n");
        assert_eq!(messages[1], b"Subject: two\n\nbody two\n");
        assert_eq!(split_mbox(b"Subject: x\r\n\r\ny\r\n").len(), 1);
    }
}
