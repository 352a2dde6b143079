//! Logging and tracing set-up: `tracing` everywhere, text or JSON logs on
//! stderr, and OTLP/gRPC export when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (the exporter reads the other `OTEL_*` variables itself). With
//! OTLP on, JSON log lines carry the `trace_id` and `span_id` of the span
//! they were logged in, so a log line leads to its trace and back.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Telemetry;

/// Flushes pending spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct TelemetryError(String);

/// Installs the global subscriber. `service` names this process in traces
/// (`service.name`, unless `OTEL_SERVICE_NAME` says otherwise).
pub fn init(config: &Telemetry, service: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},h2=warn,tower=warn,hyper=warn",
            config.log_level
        ))
    });

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError(e.to_string()))?;
            let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(name).build())
                .build();
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        _ => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mailfleet")));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    // Colours only for a person at a terminal, never into log files.
    let ansi = std::io::stderr().is_terminal();
    let result = if config.log_format == "json" {
        registry.with(json_layer(std::io::stderr)).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = result;
    Ok(TelemetryGuard { provider })
}

/// The JSON log layer: tracing-subscriber's JSON lines plus `trace_id` and
/// `span_id` when the event is inside a span the OpenTelemetry layer knows.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let dispatch = DispatchSlot::default();
    let format = WithTraceIds {
        inner: tracing_subscriber::fmt::format().json(),
        dispatch: dispatch.clone(),
    };
    let fmt: tracing_subscriber::fmt::Layer<S, JsonFields, WithTraceIds<Format<Json>>, W> =
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(format)
            .with_writer(writer);
    fmt.and_then(RegisterDispatch(dispatch))
}

/// The subscriber the log layer is part of. A formatter runs inside an
/// event's dispatch, where `tracing::dispatcher::get_default` answers "none"
/// (re-entrancy guard), so the subscriber is kept from its registration.
#[derive(Clone, Default)]
struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

struct RegisterDispatch(DispatchSlot);

impl<S: Subscriber> Layer<S> for RegisterDispatch {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.0.set(subscriber.downgrade());
    }
}

/// Wraps a JSON event format and appends the OpenTelemetry ids of the
/// event's span to each object. The ids are read through
/// [`tracing_opentelemetry::get_otel_context`] (the span data itself is
/// private to that crate); without the OpenTelemetry layer there are none
/// and the line is left as it is.
pub struct WithTraceIds<F> {
    inner: F,
    dispatch: DispatchSlot,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        // The innermost span: the explicit parent, else the current one.
        let span_id = ctx
            .event_scope()
            .and_then(|mut scope| scope.next())
            .map(|span| span.id());
        let dispatch = self.dispatch.0.get().and_then(WeakDispatch::upgrade);
        // No extension lock is held here: the inner format is done.
        let ids = span_id
            .zip(dispatch)
            .and_then(|(id, dispatch)| tracing_opentelemetry::get_otel_context(&id, &dispatch));
        let ids = ids.and_then(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context.is_valid().then(|| {
                (
                    context.trace_id().to_string(),
                    context.span_id().to_string(),
                )
            })
        });
        match (ids, line.rfind('}')) {
            (Some((trace_id, span_id)), Some(end)) => {
                // Hex ids need no JSON escaping.
                line.insert_str(
                    end,
                    &format!(",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""),
                );
                writer.write_str(&line)
            }
            _ => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Captures what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<serde_json::Value> {
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_span_ids_with_otlp() {
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer(buffer.clone()));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("smtp.session", session_id = "s1");
            let _entered = span.enter();
            tracing::info!(queue_id = "q1", "message queued");
            let context = span.context();
            let otel = context.span();
            let ids = otel.span_context();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].get("trace_id").is_none(), "{:?}", lines[0]);
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert_eq!(lines[1]["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        // The usual JSON fields are still there.
        assert_eq!(lines[1]["fields"]["queue_id"], "q1");
        assert_eq!(lines[1]["span"]["name"], "smtp.session");
    }

    #[test]
    fn json_lines_have_no_ids_without_otlp() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("smtp.session");
            let _entered = span.enter();
            tracing::info!("message queued");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].get("trace_id").is_none(), "{:?}", lines[0]);
        assert_eq!(lines[0]["fields"]["message"], "message queued");
    }
}
