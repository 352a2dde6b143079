//! `mailfleet`: the one binary. `serve` runs targets (every service, or a
//! chosen set); the other subcommands are the admin CLI, talking to a
//! running server's admin API over HTTP.

mod admin_api;
mod cli;
mod client;
mod cmd_directory;
mod cmd_dns;
mod cmd_filter;
mod cmd_queue;
mod cmd_trace;
mod serve;
mod token;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for a bad command line or configuration (sysexits EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(args))
}
