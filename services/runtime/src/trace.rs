//! One message, one trace: W3C trace context carried across processes.
//!
//! - gRPC clients build requests with [`request`], which puts the current
//!   span's `traceparent` into the metadata; gRPC servers add
//!   [`GrpcServerLayer`], which opens a server span whose parent is the
//!   caller's.
//! - The queue entry keeps the `traceparent` of the SMTP session that
//!   accepted it ([`current_traceparent`]); a delivery attempt, hours later
//!   on another worker, continues that trace with [`set_parent`].
//!
//! Without `OTEL_EXPORTER_OTLP_ENDPOINT` no propagator is installed: nothing
//! is injected and every span stays local, at no cost.

use std::collections::HashMap;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A gRPC request carrying the current span's trace context.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
    });
    request
}

/// The current span's W3C `traceparent`, empty when tracing is off.
pub fn current_traceparent() -> String {
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote span named by `traceparent` (ignored
/// when empty or malformed).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

/// Tower layer for tonic servers: one `grpc.server` span per call, child of
/// the caller's span (OpenTelemetry RPC conventions: `rpc.system`,
/// `rpc.service`, `rpc.method`).
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcServerLayer;

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerTrace { inner }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcServerTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcServerTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The path is "/package.Service/Method".
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let cx = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(cx);
        self.inner.call(request).instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_subscriber::layer::SubscriberExt;

    /// A traceparent written by one span is the parent of a span in
    /// another "process" (here: another subscriber scope).
    #[test]
    fn traceparent_round_trips() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("smtp.session");
            let traceparent = sender.in_scope(current_traceparent);
            assert!(traceparent.starts_with("00-"), "{traceparent}");
            let sender_trace = sender.context().span().span_context().trace_id();

            let receiver = tracing::info_span!("delivery.attempt");
            set_parent(&receiver, &traceparent);
            let receiver_trace = receiver.context().span().span_context().trace_id();
            assert_eq!(sender_trace, receiver_trace);

            let grpc = sender.in_scope(|| request(()));
            let header = grpc
                .metadata()
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(header, traceparent);
        });
    }
}
