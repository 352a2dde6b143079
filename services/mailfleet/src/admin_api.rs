//! The HTTP server on every process's admin port: `/healthz` (liveness),
//! `/readyz` (every started component ready), `/metrics` (Prometheus text),
//! and the JSON admin API under `/api/v1`, guarded by a bearer token.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::{AddUserRequest, DomainRequest, Empty, UserRequest};
use mailfleet_runtime::Context;
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Context>,
    token: Arc<str>,
    directory: DirectoryClient<Channel>,
}

pub fn router(ctx: Arc<Context>, token: String) -> anyhow::Result<Router> {
    let channel = mailfleet_runtime::grpc::lazy_channel(&ctx.config.services.mailstore_url)?;
    let state = AdminState {
        ctx,
        token: token.into(),
        directory: DirectoryClient::new(channel),
    };
    let api = Router::new()
        .route("/domains", get(list_domains).post(add_domain))
        .route("/users", get(list_users).post(add_user))
        .route("/users/{address}", delete(delete_user))
        .merge(crate::cmd_directory::routes(state.ctx.clone())?)
        .merge(crate::cmd_filter::routes(state.ctx.clone()))
        .merge(crate::cmd_dns::routes(state.ctx.clone())?)
        .merge(crate::cmd_queue::routes(state.ctx.clone()))
        .merge(crate::cmd_trace::routes(state.ctx.clone())?)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .with_state(state))
}

/// 200 when every started component is ready and every backend this
/// process uses (NATS, Redis, the queue) answers; 503 with the reasons else.
async fn readyz(State(s): State<AdminState>) -> Response {
    let (mut ready, components) = s.ctx.readiness.report();
    let mut text = String::new();
    for (name, ok) in components {
        text.push_str(&format!(
            "{name}: {}\n",
            if ok { "ready" } else { "not ready" }
        ));
    }
    let failures = tokio::time::timeout(std::time::Duration::from_secs(3), s.ctx.check_backends())
        .await
        .unwrap_or_else(|_| vec![("backends", "no answer within 3 s".to_owned())]);
    for (backend, error) in failures {
        ready = false;
        text.push_str(&format!("{backend}: unavailable: {error}\n"));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, text).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut text = String::new();
    let encoded = {
        let registry = s.ctx.metrics.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut text, &registry)
    };
    match encoded {
        Ok(()) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn require_token(
    State(s): State<AdminState>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), s.token.as_bytes()) => next.run(request).await,
        _ => error(StatusCode::UNAUTHORIZED, "missing or wrong admin token"),
    }
}

/// Compares without an early exit, so timing does not leak the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Maps a directory gRPC error onto the HTTP status an API user expects.
fn grpc_error(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, status.message())
}

#[derive(Deserialize)]
struct NewDomain {
    name: String,
}

async fn add_domain(State(mut s): State<AdminState>, Json(body): Json<NewDomain>) -> Response {
    match s
        .directory
        .add_domain(DomainRequest { name: body.name })
        .await
    {
        Ok(_) => (StatusCode::CREATED, Json(json!({}))).into_response(),
        Err(e) => grpc_error(e),
    }
}

async fn list_domains(State(mut s): State<AdminState>) -> Response {
    match s.directory.list_domains(Empty {}).await {
        Ok(r) => Json(json!({ "domains": r.into_inner().domains })).into_response(),
        Err(e) => grpc_error(e),
    }
}

#[derive(Deserialize)]
struct NewUser {
    address: String,
    password: String,
}

async fn add_user(State(mut s): State<AdminState>, Json(body): Json<NewUser>) -> Response {
    let request = AddUserRequest {
        address: body.address,
        password: body.password,
    };
    match s.directory.add_user(request).await {
        Ok(_) => (StatusCode::CREATED, Json(json!({}))).into_response(),
        Err(e) => grpc_error(e),
    }
}

async fn list_users(State(mut s): State<AdminState>) -> Response {
    match s.directory.list_users(Empty {}).await {
        Ok(r) => Json(json!({ "users": r.into_inner().addresses })).into_response(),
        Err(e) => grpc_error(e),
    }
}

async fn delete_user(State(mut s): State<AdminState>, Path(address): Path<String>) -> Response {
    match s.directory.delete_user(UserRequest { address }).await {
        Ok(_) => Json(json!({})).into_response(),
        Err(e) => grpc_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
