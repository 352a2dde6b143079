//! `mailfleet serve`: checks the config before binding anything, then runs
//! the chosen targets on one shared [`Context`], serves the admin port, and
//! on SIGTERM/SIGINT drains every target within `shutdown.grace_secs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::{BoxError, CancellationToken, Context};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::EXIT_USAGE;
use crate::cli::{Global, load_config};

/// The services one binary can run (DESIGN.md "One binary, many targets").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    SmtpEdge,
    Filter,
    Delivery,
    Mailstore,
    Access,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Mailstore,
        Target::Filter,
        Target::SmtpEdge,
        Target::Delivery,
        Target::Access,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::SmtpEdge => "smtp-edge",
            Target::Filter => "filter",
            Target::Delivery => "delivery",
            Target::Mailstore => "mailstore",
            Target::Access => "access",
        }
    }
}

/// Parses `all` or a comma-separated list of target names.
pub fn parse_targets(spec: &str) -> Result<Vec<Target>, String> {
    let mut targets = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "all" {
            targets.extend(Target::ALL);
            continue;
        }
        match Target::ALL.iter().find(|t| t.name() == name) {
            Some(t) => targets.push(*t),
            None => {
                return Err(format!(
                    "unknown target {name:?} (expected all, smtp-edge, filter, delivery, mailstore, access)"
                ));
            }
        }
    }
    targets.dedup();
    if targets.is_empty() {
        return Err("no target given".into());
    }
    Ok(targets)
}

pub async fn serve(global: &Global, target_spec: &str) -> ExitCode {
    // Everything that can be wrong with the command line or config is
    // reported before any port is bound, with exit status 64.
    let targets = match parse_targets(target_spec) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mailfleet: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let config = match load_config(global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailfleet: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let service_name = if targets.len() == Target::ALL.len() {
        "mailfleet".to_owned()
    } else {
        format!(
            "mailfleet-{}",
            targets
                .iter()
                .map(|t| t.name())
                .collect::<Vec<_>>()
                .join("+")
        )
    };
    let _telemetry = match mailfleet_runtime::telemetry::init(&config.telemetry, &service_name) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mailfleet: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(config, targets).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "mailfleet stopped on an error");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: mailfleet_runtime::Config, targets: Vec<Target>) -> Result<(), BoxError> {
    let token = crate::token::server_token(&config.data_dir)?;
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let ctx = Context::new(config);
    let shutdown = CancellationToken::new();

    // The admin port first, so probes answer while targets start.
    let admin_addr = ctx.config.listen.admin.clone();
    let admin = if admin_addr.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&admin_addr)
            .await
            .map_err(|e| format!("cannot bind admin port {admin_addr}: {e}"))?;
        let router = crate::admin_api::router(ctx.clone(), token)?;
        let stop = shutdown.clone();
        tracing::info!(addr = %admin_addr, "admin api listening");
        Some(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }))
    };

    let mut tasks = JoinSet::new();
    for target in &targets {
        tasks.spawn(run_target(*target, ctx.clone(), shutdown.clone()));
    }
    tracing::info!(
        targets = ?targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        data_dir = %ctx.config.data_dir.display(),
        "mailfleet started"
    );

    let mut first_error: Option<BoxError> = None;
    tokio::select! {
        signal = wait_for_signal() => {
            tracing::info!(signal, grace_secs = grace.as_secs(), "shutting down");
        }
        Some(done) = tasks.join_next() => {
            first_error = Some(match done {
                Ok((target, Ok(()))) => format!("target {} stopped unexpectedly", target.name()).into(),
                Ok((target, Err(e))) => format!("target {} failed: {e}", target.name()).into(),
                Err(e) => format!("target task panicked: {e}").into(),
            });
        }
    }
    shutdown.cancel();

    // Drain: every target gets the grace period to finish its sessions.
    // Meanwhile the singleton jobs stop and their Leases are released, so
    // another replica takes them over now rather than after expiry.
    let drained = tokio::time::timeout(grace, async {
        let targets = async {
            while let Some(done) = tasks.join_next().await {
                if let Ok((target, Err(e))) = done {
                    tracing::warn!(target = target.name(), error = %e, "target ended with an error while draining");
                }
            }
        };
        tokio::join!(ctx.step_down(), targets);
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over; cutting the remaining sessions");
        tasks.abort_all();
    }
    if let Some(admin) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("mailfleet stopped");
            Ok(())
        }
    }
}

async fn run_target(
    target: Target,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> (Target, Result<(), BoxError>) {
    let result = match target {
        Target::SmtpEdge => mailfleet_smtp_edge::run(ctx, shutdown).await,
        Target::Filter => mailfleet_filter::run(ctx, shutdown).await,
        Target::Delivery => mailfleet_delivery::run(ctx, shutdown).await,
        Target::Mailstore => mailfleet_mailstore::run(ctx, shutdown).await,
        Target::Access => mailfleet_access::run(ctx, shutdown).await,
    };
    (target, result)
}

async fn wait_for_signal() -> &'static str {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can still be killed; wait forever.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_targets("all").unwrap().len(), 5);
        assert_eq!(
            parse_targets("smtp-edge, delivery").unwrap(),
            vec![Target::SmtpEdge, Target::Delivery]
        );
        assert!(
            parse_targets("smtp")
                .unwrap_err()
                .contains("unknown target")
        );
        assert!(parse_targets("").is_err());
    }
}
