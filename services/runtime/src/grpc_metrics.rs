//! A tower layer counting the calls of a gRPC server by method and result,
//! with their latency: one place for every handler, so no RPC is left
//! uncounted when a handler is added.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `Service/Method`, the service without its package (`Mailstore/Deliver`).
    pub rpc: String,
    /// `ok`, or the gRPC status code in snake case (`not_found`).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: String,
}

type Durations = Family<RpcLabels, Histogram, fn() -> Histogram>;

fn buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The layer; cheap to clone (the metrics are shared cells).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    calls: Family<CallLabels, Counter>,
    durations: Durations,
}

impl GrpcMetricsLayer {
    /// Registers `calls` (a counter, exported with `_total`) and
    /// `durations` (a histogram, exported with `_seconds`) in `registry`.
    pub fn register(registry: &mut Registry, calls: &str, durations: &str, what: &str) -> Self {
        let layer = GrpcMetricsLayer {
            calls: Family::default(),
            durations: Family::new_with_constructor(buckets),
        };
        registry.register(
            calls,
            format!("{what} gRPC calls by rpc and result (ok or the gRPC status code)"),
            layer.calls.clone(),
        );
        registry.register_with_unit(
            durations,
            format!("Duration of {what} gRPC calls until the response headers, by rpc"),
            Unit::Seconds,
            layer.durations.clone(),
        );
        layer
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: GrpcMetricsLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = rpc_label(request.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let result = match &response {
                Ok(response) => result_label(response.headers()),
                Err(_) => "transport_error",
            };
            // An unknown method would let any client mint label values.
            let rpc = if result == "unimplemented" {
                "unknown".to_owned()
            } else {
                rpc
            };
            metrics
                .durations
                .get_or_create(&RpcLabels { rpc: rpc.clone() })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .calls
                .get_or_create(&CallLabels { rpc, result })
                .inc();
            response
        })
    }
}

/// "/mailfleet.mailstore.Mailstore/Deliver" → "Mailstore/Deliver".
fn rpc_label(path: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}/{method}")
}

/// A unary call that fails is answered "trailers-only": `grpc-status` in the
/// headers. A success carries its status in the trailers after the body,
/// which a layer sees only by wrapping the body; no header means ok (a
/// streaming call failing midway is counted ok, a known blind spot).
fn result_label(headers: &http::HeaderMap) -> &'static str {
    let Some(status) = headers.get("grpc-status") else {
        return "ok";
    };
    match tonic::Code::from_bytes(status.as_bytes()) {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(
            rpc_label("/mailfleet.mailstore.Mailstore/Deliver"),
            "Mailstore/Deliver"
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(result_label(&headers), "ok");
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(result_label(&headers), "not_found");
    }
}
