//! The command line: `serve`, `config check`, and the admin commands.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mailfleet_runtime::Config;
use mailfleet_runtime::config::ProcessEnv;

use crate::EXIT_USAGE;
use crate::client::AdminClient;

#[derive(Parser)]
#[command(
    name = "mailfleet",
    version,
    about = "A mail cluster: SMTP, filtering, delivery, mailboxes, IMAP and POP3"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Global {
    /// TOML configuration file (every key can also be set by MAILFLEET__SECTION__KEY).
    #[arg(long, global = true, env = "MAILFLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory of a single node (overrides `data_dir` of the config).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Admin API of the server the CLI talks to (default: from `listen.admin`).
    #[arg(long, global = true, env = "MAILFLEET_ADMIN_URL")]
    pub admin_url: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run Mailfleet: every target (default) or the chosen ones.
    Serve {
        /// Comma-separated: all, smtp-edge, filter, delivery, mailstore, access.
        #[arg(long, default_value = "all")]
        target: String,
    },
    /// Check a configuration file and exit (0 valid, 64 invalid).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Mail domains served by this cluster.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Aliases, catch-all addresses and quotas.
    #[command(flatten)]
    Directory(crate::cmd_directory::DirectoryCommand),
    /// The delivery queue.
    #[command(flatten)]
    Queue(crate::cmd_queue::QueueCommands),
    /// DKIM keys, and the DNS records a domain needs.
    #[command(flatten)]
    Dns(crate::cmd_dns::DnsCommands),
    /// The history of one message: received, verdict, each delivery
    /// attempt with its remote host and reply, bounces.
    Trace {
        /// A queue id (from "250 ... queued as ID") or a Message-ID.
        id: String,
    },
    /// The spam filter: train the Bayesian classifier.
    Filter {
        #[command(subcommand)]
        command: crate::cmd_filter::FilterCommand,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE as `serve` would, without binding any port.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum DomainCommand {
    /// Add a domain (mail for it is delivered locally).
    Add { name: String },
    /// List domains.
    List,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account; its domain must exist.
    Add {
        address: String,
        /// The password (visible in the process list: prefer --password-stdin).
        #[arg(
            long,
            conflicts_with = "password_stdin",
            required_unless_present = "password_stdin"
        )]
        password: Option<String>,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Delete an account and its mail.
    Del { address: String },
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { target } => crate::serve::serve(&cli.global, &target).await,
        Command::Directory(command) => crate::cmd_directory::run(&cli.global, command).await,
        Command::Filter { command } => crate::cmd_filter::run(&cli.global, command).await,
        Command::Dns(command) => crate::cmd_dns::run(&cli.global, command).await,
        Command::Queue(command) => crate::cmd_queue::run(&cli.global, command).await,
        Command::Trace { id } => crate::cmd_trace::run(&cli.global, id).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Domain { command } => {
            admin(&cli.global, |c| async move {
                match command {
                    DomainCommand::Add { name } => {
                        c.post("/api/v1/domains", &serde_json::json!({ "name": name }))
                            .await?;
                        println!("domain {name} added");
                    }
                    DomainCommand::List => {
                        let v = c.get("/api/v1/domains").await?;
                        for d in v["domains"].as_array().into_iter().flatten() {
                            println!("{}", d.as_str().unwrap_or_default());
                        }
                    }
                }
                Ok(())
            })
            .await
        }
        Command::User { command } => {
            admin(&cli.global, |c| async move {
                match command {
                    UserCommand::Add {
                        address,
                        password,
                        password_stdin,
                    } => {
                        let password = match (password, password_stdin) {
                            (Some(p), _) => p,
                            (None, _) => read_password_stdin()?,
                        };
                        c.post(
                            "/api/v1/users",
                            &serde_json::json!({ "address": address, "password": password }),
                        )
                        .await?;
                        println!("user {address} added");
                    }
                    UserCommand::List => {
                        let v = c.get("/api/v1/users").await?;
                        for u in v["users"].as_array().into_iter().flatten() {
                            println!("{}", u.as_str().unwrap_or_default());
                        }
                    }
                    UserCommand::Del { address } => {
                        c.delete(&format!("/api/v1/users/{address}")).await?;
                        println!("user {address} deleted");
                    }
                }
                Ok(())
            })
            .await
        }
    }
}

/// Loads the config as `serve` would: file, then env, then `--data-dir`.
pub fn load_config(global: &Global) -> Result<Config, mailfleet_runtime::config::ConfigError> {
    let mut config = Config::load(global.config.as_deref(), &ProcessEnv)?;
    if let Some(dir) = &global.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

fn config_check(file: &Path) -> ExitCode {
    match Config::load(Some(file), &ProcessEnv) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn read_password_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let password = input.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

/// Runs one admin request against the server the config points at.
pub(crate) async fn admin<F, Fut>(global: &Global, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = match load_config(global) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailfleet: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let client = match AdminClient::new(global.admin_url.as_deref(), &config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailfleet: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match f(client).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailfleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
