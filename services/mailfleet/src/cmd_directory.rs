//! Directory administration beyond domains and users: aliases (`mailfleet
//! alias add|del|list`), per-domain catch-all (`mailfleet catch-all
//! set|clear`) and per-account quota (`mailfleet quota set|show`), as CLI
//! commands and the admin API routes they call (`/api/v1/aliases`,
//! `/api/v1/domains/{domain}/catch-all`, `/api/v1/users/{address}/quota`),
//! which forward to the mailstore's `Directory` and `Mailstore` services.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use clap::Subcommand;
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{
    AccountRequest, AliasRequest, CatchAllRequest, Empty, SetQuotaRequest, UserRequest,
};
use mailfleet_runtime::Context;
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

use crate::cli::Global;

#[derive(Subcommand)]
pub enum DirectoryCommand {
    /// Aliases: addresses delivered to one or more accounts.
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
    /// The account receiving mail for unknown addresses of a domain.
    CatchAll {
        #[command(subcommand)]
        command: CatchAllCommand,
    },
    /// Per-account storage quota.
    Quota {
        #[command(subcommand)]
        command: QuotaCommand,
    },
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Deliver ADDRESS to ACCOUNT... (replaces earlier targets).
    Add {
        address: String,
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Remove an alias.
    Del { address: String },
    /// List aliases and their accounts.
    List,
}

#[derive(Subcommand)]
pub enum CatchAllCommand {
    /// Deliver mail for unknown addresses of DOMAIN to ACCOUNT.
    Set { domain: String, account: String },
    /// Refuse unknown addresses of DOMAIN again (550 5.1.1).
    Clear { domain: String },
}

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Limit ADDRESS's storage: bytes, or with a K, M or G suffix; 0 for none.
    Set { address: String, limit: String },
    /// Show usage and limit.
    Show { address: String },
}

pub async fn run(global: &Global, command: DirectoryCommand) -> std::process::ExitCode {
    crate::cli::admin(global, |c| async move {
        match command {
            DirectoryCommand::Alias { command } => match command {
                AliasCommand::Add { address, accounts } => {
                    c.post(
                        &format!("/api/v1/aliases/{address}"),
                        &json!({ "accounts": accounts }),
                    )
                    .await?;
                    println!("alias {address} -> {}", accounts.join(", "));
                }
                AliasCommand::Del { address } => {
                    c.delete(&format!("/api/v1/aliases/{address}")).await?;
                    println!("alias {address} deleted");
                }
                AliasCommand::List => {
                    let v = c.get("/api/v1/aliases").await?;
                    for alias in v["aliases"].as_array().into_iter().flatten() {
                        let accounts: Vec<&str> = alias["accounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str())
                            .collect();
                        println!(
                            "{} -> {}",
                            alias["address"].as_str().unwrap_or_default(),
                            accounts.join(", ")
                        );
                    }
                }
            },
            DirectoryCommand::CatchAll { command } => {
                let (domain, account) = match command {
                    CatchAllCommand::Set { domain, account } => (domain, account),
                    CatchAllCommand::Clear { domain } => (domain, String::new()),
                };
                c.post(
                    &format!("/api/v1/domains/{domain}/catch-all"),
                    &json!({ "account": account }),
                )
                .await?;
                if account.is_empty() {
                    println!("catch-all of {domain} cleared");
                } else {
                    println!("catch-all of {domain} -> {account}");
                }
            }
            DirectoryCommand::Quota { command } => match command {
                QuotaCommand::Set { address, limit } => {
                    let bytes = parse_size(&limit)?;
                    c.post(
                        &format!("/api/v1/users/{address}/quota"),
                        &json!({ "limit_bytes": bytes }),
                    )
                    .await?;
                    println!("quota of {address}: {bytes} bytes");
                }
                QuotaCommand::Show { address } => {
                    let v = c.get(&format!("/api/v1/users/{address}/quota")).await?;
                    let limit = v["limit_bytes"].as_u64().unwrap_or(0);
                    println!(
                        "{address}: {} bytes in {} messages, limit {}",
                        v["used_bytes"].as_u64().unwrap_or(0),
                        v["messages"].as_u64().unwrap_or(0),
                        if limit == 0 {
                            "none".to_owned()
                        } else {
                            format!("{limit} bytes")
                        }
                    );
                }
            },
        }
        Ok(())
    })
    .await
}

/// `1048576`, `512K`, `100M`, `2G` (powers of 1024).
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {text:?}"))?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => anyhow::bail!("unknown size unit in {text:?}"),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| anyhow::anyhow!("size {text:?} too large"))
}

#[derive(Clone)]
struct DirectoryState {
    directory: DirectoryClient<Channel>,
    mailstore: MailstoreClient<Channel>,
}

/// The admin API routes; merged under `/api/v1` behind the admin token.
pub fn routes<S: Clone + Send + Sync + 'static>(ctx: Arc<Context>) -> anyhow::Result<Router<S>> {
    let channel = mailfleet_runtime::grpc::lazy_channel(&ctx.config.services.mailstore_url)?;
    let state = DirectoryState {
        directory: DirectoryClient::new(channel.clone()),
        mailstore: MailstoreClient::new(channel),
    };
    Ok(Router::new()
        .route("/aliases", get(list_aliases))
        .route(
            "/aliases/{address}",
            put(put_alias).post(put_alias).delete(delete_alias),
        )
        .route(
            "/domains/{domain}/catch-all",
            put(set_catch_all).post(set_catch_all),
        )
        .route(
            "/users/{address}/quota",
            get(get_quota).put(set_quota).post(set_quota),
        )
        .with_state(state))
}

/// A gRPC error as the HTTP status an API user expects.
fn grpc_error(status: tonic::Status) -> Response {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({ "error": status.message() }))).into_response()
}

fn ok() -> Response {
    Json(json!({})).into_response()
}

#[derive(Deserialize)]
struct AliasBody {
    accounts: Vec<String>,
}

async fn put_alias(
    State(mut s): State<DirectoryState>,
    Path(address): Path<String>,
    Json(body): Json<AliasBody>,
) -> Response {
    let request = AliasRequest {
        address,
        accounts: body.accounts,
    };
    match s.directory.put_alias(request).await {
        Ok(_) => ok(),
        Err(e) => grpc_error(e),
    }
}

async fn delete_alias(
    State(mut s): State<DirectoryState>,
    Path(address): Path<String>,
) -> Response {
    match s.directory.delete_alias(UserRequest { address }).await {
        Ok(_) => ok(),
        Err(e) => grpc_error(e),
    }
}

async fn list_aliases(State(mut s): State<DirectoryState>) -> Response {
    match s.directory.list_aliases(Empty {}).await {
        Ok(r) => {
            let aliases: Vec<_> = r
                .into_inner()
                .aliases
                .into_iter()
                .map(|a| json!({ "address": a.address, "accounts": a.accounts }))
                .collect();
            Json(json!({ "aliases": aliases })).into_response()
        }
        Err(e) => grpc_error(e),
    }
}

#[derive(Deserialize)]
struct CatchAllBody {
    #[serde(default)]
    account: String,
}

async fn set_catch_all(
    State(mut s): State<DirectoryState>,
    Path(domain): Path<String>,
    Json(body): Json<CatchAllBody>,
) -> Response {
    let request = CatchAllRequest {
        domain,
        account: body.account,
    };
    match s.directory.set_catch_all(request).await {
        Ok(_) => ok(),
        Err(e) => grpc_error(e),
    }
}

#[derive(Deserialize)]
struct QuotaBody {
    limit_bytes: u64,
}

async fn set_quota(
    State(mut s): State<DirectoryState>,
    Path(address): Path<String>,
    Json(body): Json<QuotaBody>,
) -> Response {
    let request = SetQuotaRequest {
        address,
        limit_bytes: body.limit_bytes,
    };
    match s.directory.set_quota(request).await {
        Ok(_) => ok(),
        Err(e) => grpc_error(e),
    }
}

async fn get_quota(State(mut s): State<DirectoryState>, Path(address): Path<String>) -> Response {
    match s
        .mailstore
        .get_quota(AccountRequest { account: address })
        .await
    {
        Ok(r) => {
            let q = r.into_inner();
            Json(json!({
                "used_bytes": q.used_bytes,
                "limit_bytes": q.limit_bytes,
                "messages": q.messages,
            }))
            .into_response()
        }
        Err(e) => grpc_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("512K").unwrap(), 512 * 1024);
        assert_eq!(parse_size("100m").unwrap(), 100 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5T").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
