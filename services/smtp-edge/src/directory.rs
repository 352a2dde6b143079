//! [`RecipientLookup`] and [`Authenticator`] over gRPC:
//! `Directory.LookupRecipient` and `Directory.Authenticate` of mailstore.

use std::time::Duration;

use async_trait::async_trait;
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::lookup_reply::Kind;
use mailfleet_proto::mailstore::{AuthRequest, LookupRequest};
use tonic::transport::Channel;

use crate::auth::{AuthError, AuthOutcome, Authenticator};
use crate::session::{Lookup, LookupError, RecipientLookup};

/// How long RCPT waits for the directory before answering 451.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct DirectoryLookup {
    client: DirectoryClient<Channel>,
}

impl DirectoryLookup {
    /// A lookup on a lazy channel to `mailstore_url`: the directory may
    /// start after smtp-edge; until then RCPT answers 451.
    pub fn new(mailstore_url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = mailfleet_runtime::grpc::lazy_channel(mailstore_url)?;
        Ok(DirectoryLookup {
            client: DirectoryClient::new(channel),
        })
    }
}

#[async_trait]
impl RecipientLookup for DirectoryLookup {
    async fn lookup(&self, address: &str) -> Result<Lookup, LookupError> {
        let mut request = mailfleet_runtime::trace::request(LookupRequest {
            address: address.to_owned(),
        });
        request.set_timeout(LOOKUP_TIMEOUT);
        let reply = self
            .client
            .clone()
            .lookup_recipient(request)
            .await
            .map_err(|status| LookupError(status.to_string()))?
            .into_inner();
        // An unknown kind decodes as REMOTE: refused, never relayed.
        Ok(match reply.kind() {
            // `accounts` is newer than `account`: a directory that only
            // fills the latter still works.
            Kind::Local if reply.accounts.is_empty() => Lookup::Local {
                accounts: vec![reply.account]
                    .into_iter()
                    .filter(|a| !a.is_empty())
                    .collect(),
            },
            Kind::Local => Lookup::Local {
                accounts: reply.accounts,
            },
            Kind::UnknownUser => Lookup::UnknownUser,
            Kind::Remote => Lookup::Remote,
        })
    }
}

#[async_trait]
impl Authenticator for DirectoryLookup {
    async fn authenticate(&self, user: &str, password: &str) -> Result<AuthOutcome, AuthError> {
        let mut request = mailfleet_runtime::trace::request(AuthRequest {
            address: user.to_owned(),
            password: password.to_owned(),
        });
        request.set_timeout(LOOKUP_TIMEOUT);
        let reply = self
            .client
            .clone()
            .authenticate(request)
            .await
            .map_err(|status| AuthError(status.to_string()))?
            .into_inner();
        Ok(if reply.ok && !reply.account.is_empty() {
            AuthOutcome::Ok {
                account: reply.account,
            }
        } else {
            AuthOutcome::Invalid
        })
    }
}
