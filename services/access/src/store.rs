//! What the sessions need from the mailstore, as one small trait
//! ([`MailAccess`]), and its production implementation over gRPC
//! ([`GrpcMailAccess`]). Sessions never see tonic: tests drive them with an
//! in-memory implementation.

use async_trait::async_trait;
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{
    AccountRequest, AuthRequest, ChangesRequest, CopyRequest, DeliverRequest, ExpungeRequest,
    MailboxRequest, MessageRequest, RenameMailboxRequest, StoreFlagsRequest, SubscribeRequest,
};
use mailfleet_runtime::imap_mime::Rendered;
use mailfleet_runtime::trace;
use tonic::transport::Channel;

pub use mailfleet_proto::mailstore::store_flags_request::Mode as FlagMode;
pub use mailfleet_proto::mailstore::{MailboxInfo, MailboxStatus, MessageInfo};

/// A mailstore call failed. Sessions map [`AccessError::NotFound`] to a
/// permanent answer (`NO [NONEXISTENT]`, `-ERR no such message`) and the rest
/// to a transient one (`NO [UNAVAILABLE]`).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("mailstore unavailable: {0}")]
    Unavailable(String),
    #[error("mailstore refused: {0}")]
    Refused(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// RFC 9208 §4: the account's quota would be exceeded.
    #[error("over quota: {0}")]
    OverQuota(String),
}

/// Where APPEND put a message (UIDPLUS `APPENDUID`, RFC 4315 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub uid_validity: u32,
    pub uid: u32,
}

/// What COPY or MOVE did: `pairs[i]` is (source UID, new UID).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copied {
    pub uid_validity: u32,
    pub pairs: Vec<(u32, u32)>,
}

/// An account's storage (RFC 9208 `STORAGE`, in bytes; limit 0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub messages: u64,
}

impl From<tonic::Status> for AccessError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => AccessError::NotFound(message),
            tonic::Code::AlreadyExists => AccessError::AlreadyExists(message),
            tonic::Code::ResourceExhausted => AccessError::OverQuota(message),
            tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::FailedPrecondition => AccessError::Refused(message),
            _ => AccessError::Unavailable(format!("{:?}: {message}", status.code())),
        }
    }
}

/// The mailstore as the IMAP and POP3 sessions see it. `account` is the
/// canonical account name returned by [`MailAccess::authenticate`].
#[async_trait]
pub trait MailAccess: Send + Sync + 'static {
    /// `Ok(Some(account))` when the password is right, `Ok(None)` when not.
    async fn authenticate(&self, user: &str, password: &str)
    -> Result<Option<String>, AccessError>;
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, AccessError>;
    async fn select(&self, account: &str, mailbox: &str) -> Result<MailboxStatus, AccessError>;
    /// Every message of the mailbox, in UID order.
    async fn list_messages(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError>;
    async fn fetch_body(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Vec<u8>, AccessError>;
    /// ENVELOPE, BODYSTRUCTURE and BODY as the mailstore rendered them at
    /// delivery; `None` for a message stored before it did (or a backend
    /// that keeps none): the caller renders them from [`Self::fetch_body`].
    async fn fetch_structure(
        &self,
        _account: &str,
        _mailbox: &str,
        _uid: u32,
    ) -> Result<Option<Rendered>, AccessError> {
        Ok(None)
    }
    /// Changes the flags of one message and returns its new state.
    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
        mode: FlagMode,
        flags: &[String],
    ) -> Result<MessageInfo, AccessError>;
    /// Removes `uids` (every `\Deleted` message when empty); returns the UIDs
    /// actually removed.
    async fn expunge(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
    ) -> Result<Vec<u32>, AccessError>;
    /// RFC 9051 §6.3.4 CREATE (superior names are created too).
    async fn create_mailbox(&self, account: &str, mailbox: &str) -> Result<(), AccessError>;
    async fn delete_mailbox(&self, account: &str, mailbox: &str) -> Result<(), AccessError>;
    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<(), AccessError>;
    async fn set_subscribed(
        &self,
        account: &str,
        mailbox: &str,
        subscribed: bool,
    ) -> Result<(), AccessError>;
    /// RFC 9051 §6.3.12 APPEND; `internal_date_ms` 0 means now.
    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: &[u8],
        flags: &[String],
        internal_date_ms: i64,
    ) -> Result<Appended, AccessError>;
    /// COPY, or MOVE when `move_messages` (RFC 6851), of `uids`.
    async fn copy(
        &self,
        account: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        move_messages: bool,
    ) -> Result<Copied, AccessError>;
    async fn quota(&self, account: &str) -> Result<Quota, AccessError>;
    /// [`MailAccess::list_messages`] with `search_header` filled in (parsed
    /// at delivery), for SEARCH on header keys.
    async fn list_messages_for_search(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError>;
    /// The messages whose MODSEQ is above `changed_since` or whose UID is in
    /// `uids` (inclusive), with the mailbox's count and HIGHEST_MODSEQ seen
    /// at the same time. This default filters the whole list; the gRPC
    /// client asks the mailstore for just those rows.
    async fn list_changes(
        &self,
        account: &str,
        mailbox: &str,
        changed_since: u64,
        uids: Option<(u32, u32)>,
    ) -> Result<Changes, AccessError> {
        let status = self.select(account, mailbox).await?;
        let all = self.list_messages(account, mailbox).await?;
        let highest_modseq = all
            .iter()
            .map(|m| m.modseq)
            .fold(status.highest_modseq, u64::max);
        Ok(Changes {
            exists: u32::try_from(all.len()).unwrap_or(u32::MAX),
            highest_modseq,
            messages: all
                .into_iter()
                .filter(|m| {
                    m.modseq > changed_since
                        || uids.is_some_and(|(first, last)| (first..=last).contains(&m.uid))
                })
                .collect(),
        })
    }
}

/// What [`MailAccess::list_changes`] returns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changes {
    /// In UID order.
    pub messages: Vec<MessageInfo>,
    pub exists: u32,
    pub highest_modseq: u64,
}

/// [`MailAccess`] over the mailstore's gRPC `Directory` and `Mailstore`
/// services. Clones share one lazily connected channel.
#[derive(Clone)]
pub struct GrpcMailAccess {
    directory: DirectoryClient<Channel>,
    mailstore: MailstoreClient<Channel>,
}

impl GrpcMailAccess {
    /// Connects lazily to `url` (`services.mailstore_url`): the mailstore may
    /// start after us.
    pub fn new(url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = mailfleet_runtime::grpc::lazy_channel(url)?;
        let max = mailfleet_runtime::grpc::MAX_MESSAGE_BYTES;
        Ok(GrpcMailAccess {
            directory: DirectoryClient::new(channel.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            mailstore: MailstoreClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        })
    }
}

#[async_trait]
impl MailAccess for GrpcMailAccess {
    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<String>, AccessError> {
        let reply = self
            .directory
            .clone()
            .authenticate(trace::request(AuthRequest {
                address: user.to_owned(),
                password: password.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(reply.ok.then_some(reply.account))
    }

    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .list_mailboxes(trace::request(AccountRequest {
                account: account.to_owned(),
            }))
            .await?;
        Ok(reply.into_inner().mailboxes)
    }

    async fn select(&self, account: &str, mailbox: &str) -> Result<MailboxStatus, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .select_mailbox(trace::request(MailboxRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
            }))
            .await?;
        Ok(reply.into_inner())
    }

    async fn list_messages(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .list_messages(trace::request(MailboxRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
            }))
            .await?;
        Ok(reply.into_inner().messages)
    }

    async fn fetch_body(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Vec<u8>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .fetch_body(trace::request(MessageRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                uid,
            }))
            .await?;
        Ok(reply.into_inner().message)
    }

    async fn fetch_structure(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Option<Rendered>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .fetch_structure(trace::request(MessageRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                uid,
            }))
            .await?
            .into_inner();
        // Empty strings: stored before the mailstore rendered them.
        let stored = !reply.envelope.is_empty()
            && !reply.body_structure.is_empty()
            && !reply.body.is_empty();
        Ok(stored.then_some(Rendered {
            envelope: reply.envelope,
            body_structure: reply.body_structure,
            body: reply.body,
        }))
    }

    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
        mode: FlagMode,
        flags: &[String],
    ) -> Result<MessageInfo, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .store_flags(trace::request(StoreFlagsRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                uid,
                mode: mode as i32,
                flags: flags.to_vec(),
            }))
            .await?;
        Ok(reply.into_inner())
    }

    async fn expunge(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
    ) -> Result<Vec<u32>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .expunge(trace::request(ExpungeRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                uids: uids.to_vec(),
            }))
            .await?;
        Ok(reply.into_inner().expunged_uids)
    }

    async fn create_mailbox(&self, account: &str, mailbox: &str) -> Result<(), AccessError> {
        self.mailstore
            .clone()
            .create_mailbox(trace::request(MailboxRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
            }))
            .await?;
        Ok(())
    }

    async fn delete_mailbox(&self, account: &str, mailbox: &str) -> Result<(), AccessError> {
        self.mailstore
            .clone()
            .delete_mailbox(trace::request(MailboxRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
            }))
            .await?;
        Ok(())
    }

    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<(), AccessError> {
        self.mailstore
            .clone()
            .rename_mailbox(trace::request(RenameMailboxRequest {
                account: account.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
            }))
            .await?;
        Ok(())
    }

    async fn set_subscribed(
        &self,
        account: &str,
        mailbox: &str,
        subscribed: bool,
    ) -> Result<(), AccessError> {
        self.mailstore
            .clone()
            .set_subscribed(trace::request(SubscribeRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                subscribed,
            }))
            .await?;
        Ok(())
    }

    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: &[u8],
        flags: &[String],
        internal_date_ms: i64,
    ) -> Result<Appended, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .deliver(trace::request(DeliverRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                message: message.to_vec(),
                // APPEND is not deduplicated: a client may append twice.
                idempotency_key: String::new(),
                flags: flags.to_vec(),
                internal_date_ms,
            }))
            .await?
            .into_inner();
        Ok(Appended {
            uid_validity: reply.uid_validity,
            uid: reply.uid,
        })
    }

    async fn copy(
        &self,
        account: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        move_messages: bool,
    ) -> Result<Copied, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .copy_messages(trace::request(CopyRequest {
                account: account.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                uids: uids.to_vec(),
                move_messages,
            }))
            .await?
            .into_inner();
        Ok(Copied {
            uid_validity: reply.uid_validity,
            pairs: reply.source_uids.into_iter().zip(reply.dest_uids).collect(),
        })
    }

    async fn quota(&self, account: &str) -> Result<Quota, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .get_quota(trace::request(AccountRequest {
                account: account.to_owned(),
            }))
            .await?
            .into_inner();
        Ok(Quota {
            used_bytes: reply.used_bytes,
            limit_bytes: reply.limit_bytes,
            messages: reply.messages,
        })
    }

    async fn list_messages_for_search(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError> {
        let reply = self
            .mailstore
            .clone()
            .list_messages_for_search(trace::request(MailboxRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
            }))
            .await?;
        Ok(reply.into_inner().messages)
    }

    async fn list_changes(
        &self,
        account: &str,
        mailbox: &str,
        changed_since: u64,
        uids: Option<(u32, u32)>,
    ) -> Result<Changes, AccessError> {
        let (uid_first, uid_last) = uids.unwrap_or((0, 0));
        let reply = self
            .mailstore
            .clone()
            .list_changes(trace::request(ChangesRequest {
                account: account.to_owned(),
                mailbox: mailbox.to_owned(),
                changed_since,
                uid_first,
                uid_last,
            }))
            .await?
            .into_inner();
        Ok(Changes {
            messages: reply.messages,
            exists: reply.exists,
            highest_modseq: reply.highest_modseq,
        })
    }
}
