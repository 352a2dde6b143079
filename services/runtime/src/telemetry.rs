//! Logging and tracing set-up: `tracing` everywhere, text or JSON logs on
//! stderr, and OTLP/gRPC export when the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (the exporter reads the other `OTEL_*` variables itself).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
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
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
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
