//! What every Mailfleet service shares: the typed [`config`], the
//! [`Context`] a target runs with (config, metrics, readiness, and the
//! [`backend`]s opened on first use), [`telemetry`] set-up, the NATS
//! [`subjects`], the small gRPC helpers in [`grpc`], the message
//! [`history`] recorder, and the [`leader`] election of singleton jobs.
//!
//! A service crate exposes `run(ctx, shutdown)`; the `mailfleet` binary
//! builds one [`Context`] and runs the chosen targets on it, so in target
//! `all` every service shares the same backends (the in-process event bus
//! only works that way).

pub mod backend;
pub mod base64;
pub mod config;
mod context;
pub mod dates;
pub mod dns;
pub mod grpc;
pub mod grpc_metrics;
pub mod history;
pub mod imap_mime;
pub mod leader;
pub mod queue_metrics;
pub mod subjects;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use config::Config;
pub use context::{Context, Readiness};
pub use tokio_util::sync::CancellationToken;

/// The error a service's `run` ends with; the binary reports it and exits.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
