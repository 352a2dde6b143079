//! The gRPC face of the store: `Directory` and `Mailstore` of
//! `mailstore.proto`, and `History` of `history.proto`. Handlers translate
//! requests, call [`Store`], map [`StoreError`] to a status, and publish
//! change events after commits.

use std::sync::Arc;

use mailfleet_proto::history::history_server::History;
use mailfleet_proto::history::{HistoryEvent, HistoryEvents, HistoryQuery, RecordReply};
use mailfleet_proto::mailstore::Structure;
use mailfleet_proto::mailstore::directory_server::Directory;
use mailfleet_proto::mailstore::mailstore_server::Mailstore;
use mailfleet_proto::mailstore::{
    AccountRequest, AddUserRequest, Alias, AliasList, AliasRequest, AuthReply, AuthRequest, Body,
    CatchAllRequest, ChangesReply, ChangesRequest, CopyReply, CopyRequest, DeliverReply,
    DeliverRequest, DkimKey, DkimKeyList, DkimKeyRequest, DomainList, DomainRequest, Empty,
    ExpungeReply, ExpungeRequest, LookupReply, LookupRequest, MailboxList, MailboxRequest,
    MailboxStatus, MessageInfo, MessageList, MessageRequest, QuotaReply, RenameMailboxRequest,
    SetQuotaRequest, StoreFlagsRequest, SubscribeRequest, UserList, UserRequest, lookup_reply,
    store_flags_request,
};
use mailfleet_proto::queue::{MailboxEvent, mailbox_event};
use mailfleet_runtime::backend::Events;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::store::{DkimKeyRecord, FlagMode, HistoryRecord, Lookup, NewMessage, Store, StoreError};

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        match error {
            StoreError::Invalid(m) => Status::invalid_argument(m),
            StoreError::AlreadyExists(_) => Status::already_exists(error.to_string()),
            StoreError::NotFound(_) => Status::not_found(error.to_string()),
            StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
            // delivery answers 452 4.2.2 (or 552 5.2.2 when configured
            // permanent); IMAP APPEND answers NO [OVERQUOTA].
            StoreError::OverQuota(m) => Status::resource_exhausted(m),
            // Database and blob failures are worth retrying (a replica or
            // the database may be back soon); the caller decides.
            StoreError::Database(_) | StoreError::Blob(_) => {
                tracing::error!(%error, "store backend failed");
                Status::unavailable(error.to_string())
            }
            StoreError::Hash(_) | StoreError::Corrupt(_) => {
                tracing::error!(%error, "store internal error");
                Status::internal(error.to_string())
            }
        }
    }
}

/// The account name events are published under: the stored, lowercased
/// address (the store accepted it, so it parses).
fn canonical_account(account: &str) -> String {
    crate::store::names::address(account)
        .map(|(address, _)| address)
        .unwrap_or_else(|_| account.to_owned())
}

pub struct DirectoryService {
    pub store: Arc<Store>,
    pub metrics: Metrics,
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    /// Idempotent: adding a domain that exists already succeeds.
    async fn add_domain(&self, request: Request<DomainRequest>) -> Result<Response<Empty>, Status> {
        let name = request.into_inner().name;
        if self.store.add_domain(&name).await? {
            tracing::info!(domain = %name, "domain added");
        }
        Ok(Response::new(Empty {}))
    }

    async fn list_domains(&self, _: Request<Empty>) -> Result<Response<DomainList>, Status> {
        let domains = self.store.list_domains().await?;
        Ok(Response::new(DomainList { domains }))
    }

    async fn add_user(&self, request: Request<AddUserRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.add_user(&r.address, &r.password).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_users(&self, _: Request<Empty>) -> Result<Response<UserList>, Status> {
        let addresses = self.store.list_users().await?;
        Ok(Response::new(UserList { addresses }))
    }

    async fn delete_user(&self, request: Request<UserRequest>) -> Result<Response<Empty>, Status> {
        self.store
            .delete_user(&request.into_inner().address)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn lookup_recipient(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupReply>, Status> {
        let reply = match self
            .store
            .lookup_recipient(&request.into_inner().address)
            .await?
        {
            Lookup::Remote => LookupReply {
                kind: lookup_reply::Kind::Remote as i32,
                ..LookupReply::default()
            },
            Lookup::Local { account } => LookupReply {
                kind: lookup_reply::Kind::Local as i32,
                accounts: vec![account.clone()],
                account,
            },
            Lookup::Alias { accounts } => LookupReply {
                kind: lookup_reply::Kind::Local as i32,
                account: accounts.first().cloned().unwrap_or_default(),
                accounts,
            },
            Lookup::UnknownUser => LookupReply {
                kind: lookup_reply::Kind::UnknownUser as i32,
                ..LookupReply::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn authenticate(
        &self,
        request: Request<AuthRequest>,
    ) -> Result<Response<AuthReply>, Status> {
        let r = request.into_inner();
        let account = self.store.authenticate(&r.address, &r.password).await?;
        let result = if account.is_some() { "ok" } else { "failed" };
        self.metrics.authentications(result).inc();
        Ok(Response::new(AuthReply {
            ok: account.is_some(),
            account: account.unwrap_or_default(),
        }))
    }

    async fn put_alias(&self, request: Request<AliasRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.put_alias(&r.address, &r.accounts).await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete_alias(&self, request: Request<UserRequest>) -> Result<Response<Empty>, Status> {
        self.store
            .delete_alias(&request.into_inner().address)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_aliases(&self, _: Request<Empty>) -> Result<Response<AliasList>, Status> {
        let aliases = self
            .store
            .list_aliases()
            .await?
            .into_iter()
            .map(|(address, accounts)| Alias { address, accounts })
            .collect();
        Ok(Response::new(AliasList { aliases }))
    }

    async fn set_catch_all(
        &self,
        request: Request<CatchAllRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.set_catch_all(&r.domain, &r.account).await?;
        Ok(Response::new(Empty {}))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.set_quota(&r.address, r.limit_bytes).await?;
        Ok(Response::new(Empty {}))
    }

    async fn put_dkim_key(&self, request: Request<DkimKey>) -> Result<Response<Empty>, Status> {
        let k = request.into_inner();
        self.store
            .put_dkim_key(&DkimKeyRecord {
                domain: k.domain,
                selector: k.selector,
                algorithm: k.algorithm,
                private_key_pem: k.private_key_pem,
                public_key: k.public_key,
                created_at_ms: k.created_at_ms,
            })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_dkim_key(
        &self,
        request: Request<DkimKeyRequest>,
    ) -> Result<Response<DkimKey>, Status> {
        let domain = request.into_inner().domain;
        match self.store.dkim_key(&domain).await? {
            Some(k) => Ok(Response::new(dkim_key(k))),
            None => Err(Status::not_found(format!("no DKIM key for {domain}"))),
        }
    }

    async fn list_dkim_keys(&self, _: Request<Empty>) -> Result<Response<DkimKeyList>, Status> {
        let keys = self.store.list_dkim_keys().await?;
        Ok(Response::new(DkimKeyList {
            keys: keys.into_iter().map(dkim_key).collect(),
        }))
    }
}

fn dkim_key(k: DkimKeyRecord) -> DkimKey {
    DkimKey {
        domain: k.domain,
        selector: k.selector,
        algorithm: k.algorithm,
        private_key_pem: k.private_key_pem,
        public_key: k.public_key,
        created_at_ms: k.created_at_ms,
    }
}

pub struct MailstoreService {
    pub store: Arc<Store>,
    pub events: Arc<dyn Events>,
    pub metrics: Metrics,
    /// `mailstore.over_quota_permanent`: a delivery over quota is
    /// FAILED_PRECONDITION (delivery bounces it, 5.2.2) rather than
    /// RESOURCE_EXHAUSTED (delivery retries it, 4.2.2).
    pub over_quota_permanent: bool,
}

impl MailstoreService {
    /// Publishes after the commit; a lost event only delays what IDLE
    /// sessions see until their next command, so it is logged, not returned.
    async fn publish(&self, event: MailboxEvent) {
        if let Err(error) = self.events.publish(&event).await {
            tracing::warn!(account = %event.account, mailbox = %event.mailbox, %error, "cannot publish mailbox event");
        }
    }
}

#[tonic::async_trait]
impl Mailstore for MailstoreService {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverReply>, Status> {
        let r = request.into_inner();
        let delivered = self
            .store
            .deliver(NewMessage {
                account: &r.account,
                mailbox: &r.mailbox,
                message: &r.message,
                idempotency_key: &r.idempotency_key,
                flags: &r.flags,
                internal_date_ms: r.internal_date_ms,
            })
            .await;
        let delivered = match delivered {
            Ok(d) => d,
            // Only deliveries carry an idempotency key; APPEND always gets
            // RESOURCE_EXHAUSTED (IMAP `[OVERQUOTA]`).
            Err(StoreError::OverQuota(message))
                if self.over_quota_permanent && !r.idempotency_key.is_empty() =>
            {
                self.metrics.deliveries("over_quota").inc();
                tracing::info!(account = %r.account, %message, "delivery refused: over quota");
                return Err(Status::failed_precondition(format!(
                    "quota exceeded: {message}"
                )));
            }
            Err(error) => {
                let outcome = if matches!(error, StoreError::OverQuota(_)) {
                    "over_quota"
                } else {
                    "error"
                };
                self.metrics.deliveries(outcome).inc();
                return Err(error.into());
            }
        };
        if delivered.duplicate {
            self.metrics.deliveries("duplicate").inc();
            tracing::info!(account = %r.account, key = %r.idempotency_key, uid = delivered.uid, "duplicate delivery ignored");
        } else {
            self.metrics.deliveries("stored").inc();
            tracing::info!(account = %r.account, mailbox = %delivered.mailbox, uid = delivered.uid, size = r.message.len(), "message stored");
            self.publish(MailboxEvent {
                account: canonical_account(&r.account),
                mailbox: delivered.mailbox.clone(),
                kind: mailbox_event::Kind::Appended as i32,
                uid: delivered.uid,
                modseq: delivered.modseq,
            })
            .await;
        }
        Ok(Response::new(DeliverReply {
            uid: delivered.uid,
            duplicate: delivered.duplicate,
            uid_validity: delivered.uid_validity,
        }))
    }

    async fn list_mailboxes(
        &self,
        request: Request<AccountRequest>,
    ) -> Result<Response<MailboxList>, Status> {
        let mailboxes = self
            .store
            .list_mailboxes(&request.into_inner().account)
            .await?;
        Ok(Response::new(MailboxList { mailboxes }))
    }

    async fn select_mailbox(
        &self,
        request: Request<MailboxRequest>,
    ) -> Result<Response<MailboxStatus>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.store.select_mailbox(&r.account, &r.mailbox).await?,
        ))
    }

    async fn list_messages(
        &self,
        request: Request<MailboxRequest>,
    ) -> Result<Response<MessageList>, Status> {
        let r = request.into_inner();
        let messages = self.store.list_messages(&r.account, &r.mailbox).await?;
        Ok(Response::new(MessageList { messages }))
    }

    async fn list_changes(
        &self,
        request: Request<ChangesRequest>,
    ) -> Result<Response<ChangesReply>, Status> {
        let r = request.into_inner();
        let uids = (r.uid_last > 0).then_some((r.uid_first, r.uid_last));
        let changes = self
            .store
            .list_changes(&r.account, &r.mailbox, r.changed_since, uids)
            .await?;
        Ok(Response::new(ChangesReply {
            messages: changes.messages,
            exists: changes.exists,
            highest_modseq: changes.highest_modseq,
        }))
    }

    async fn fetch_structure(
        &self,
        request: Request<MessageRequest>,
    ) -> Result<Response<Structure>, Status> {
        let r = request.into_inner();
        let stored = self
            .store
            .fetch_structure(&r.account, &r.mailbox, r.uid)
            .await?
            .unwrap_or_default();
        Ok(Response::new(Structure {
            envelope: stored.envelope,
            body_structure: stored.body_structure,
            body: stored.body,
        }))
    }

    async fn fetch_body(&self, request: Request<MessageRequest>) -> Result<Response<Body>, Status> {
        let r = request.into_inner();
        let message = self.store.fetch_body(&r.account, &r.mailbox, r.uid).await?;
        Ok(Response::new(Body { message }))
    }

    async fn store_flags(
        &self,
        request: Request<StoreFlagsRequest>,
    ) -> Result<Response<MessageInfo>, Status> {
        let r = request.into_inner();
        let mode = match store_flags_request::Mode::try_from(r.mode) {
            Ok(store_flags_request::Mode::Replace) => FlagMode::Replace,
            Ok(store_flags_request::Mode::Add) => FlagMode::Add,
            Ok(store_flags_request::Mode::Remove) => FlagMode::Remove,
            Err(_) => return Err(Status::invalid_argument(format!("unknown mode {}", r.mode))),
        };
        let (info, changed) = self
            .store
            .store_flags(&r.account, &r.mailbox, r.uid, mode, &r.flags)
            .await?;
        if changed {
            self.publish(MailboxEvent {
                account: canonical_account(&r.account),
                mailbox: crate::store::names::mailbox(&r.mailbox)?,
                kind: mailbox_event::Kind::Flags as i32,
                uid: info.uid,
                modseq: info.modseq,
            })
            .await;
        }
        Ok(Response::new(info))
    }

    async fn expunge(
        &self,
        request: Request<ExpungeRequest>,
    ) -> Result<Response<ExpungeReply>, Status> {
        let r = request.into_inner();
        let expunged = self.store.expunge(&r.account, &r.mailbox, &r.uids).await?;
        self.metrics
            .expunged
            .inc_by(expunged.uids.len().try_into().unwrap_or(u64::MAX));
        for uid in &expunged.uids {
            self.publish(MailboxEvent {
                account: canonical_account(&r.account),
                mailbox: expunged.mailbox.clone(),
                kind: mailbox_event::Kind::Expunged as i32,
                uid: *uid,
                modseq: expunged.modseq,
            })
            .await;
        }
        Ok(Response::new(ExpungeReply {
            expunged_uids: expunged.uids,
        }))
    }

    async fn create_mailbox(
        &self,
        request: Request<MailboxRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.create_mailbox(&r.account, &r.mailbox).await?;
        tracing::info!(account = %r.account, mailbox = %r.mailbox, "mailbox created");
        Ok(Response::new(Empty {}))
    }

    async fn delete_mailbox(
        &self,
        request: Request<MailboxRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store.delete_mailbox(&r.account, &r.mailbox).await?;
        tracing::info!(account = %r.account, mailbox = %r.mailbox, "mailbox deleted");
        Ok(Response::new(Empty {}))
    }

    async fn rename_mailbox(
        &self,
        request: Request<RenameMailboxRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store
            .rename_mailbox(&r.account, &r.from, &r.to)
            .await?;
        tracing::info!(account = %r.account, from = %r.from, to = %r.to, "mailbox renamed");
        Ok(Response::new(Empty {}))
    }

    async fn set_subscribed(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.store
            .set_subscribed(&r.account, &r.mailbox, r.subscribed)
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn copy_messages(
        &self,
        request: Request<CopyRequest>,
    ) -> Result<Response<CopyReply>, Status> {
        let r = request.into_inner();
        let copied = self
            .store
            .copy_messages(&r.account, &r.from, &r.to, &r.uids, r.move_messages)
            .await?;
        let account = canonical_account(&r.account);
        for (source_uid, uid) in &copied.pairs {
            self.publish(MailboxEvent {
                account: account.clone(),
                mailbox: copied.mailbox.clone(),
                kind: mailbox_event::Kind::Appended as i32,
                uid: *uid,
                modseq: copied.modseq,
            })
            .await;
            if r.move_messages {
                self.publish(MailboxEvent {
                    account: account.clone(),
                    mailbox: copied.source_mailbox.clone(),
                    kind: mailbox_event::Kind::Expunged as i32,
                    uid: *source_uid,
                    modseq: copied.source_modseq,
                })
                .await;
            }
        }
        let (source_uids, dest_uids) = copied.pairs.into_iter().unzip();
        Ok(Response::new(CopyReply {
            uid_validity: copied.uid_validity,
            source_uids,
            dest_uids,
        }))
    }

    async fn get_quota(
        &self,
        request: Request<AccountRequest>,
    ) -> Result<Response<QuotaReply>, Status> {
        let quota = self.store.quota(&request.into_inner().account).await?;
        Ok(Response::new(QuotaReply {
            used_bytes: quota.used_bytes,
            limit_bytes: quota.limit_bytes,
            messages: quota.messages,
        }))
    }

    async fn list_messages_for_search(
        &self,
        request: Request<MailboxRequest>,
    ) -> Result<Response<MessageList>, Status> {
        let r = request.into_inner();
        let messages = self
            .store
            .list_messages_with(&r.account, &r.mailbox, true)
            .await?;
        Ok(Response::new(MessageList { messages }))
    }
}

/// Message history: written by smtp-edge and delivery, read by the admin
/// API for `mailfleet trace`.
pub struct HistoryService {
    pub store: Arc<Store>,
}

#[tonic::async_trait]
impl History for HistoryService {
    async fn record(
        &self,
        request: Request<HistoryEvent>,
    ) -> Result<Response<RecordReply>, Status> {
        let e = request.into_inner();
        self.store
            .record_history(&HistoryRecord {
                queue_id: e.queue_id,
                message_id: e.message_id,
                at_ms: e.at_ms,
                stage: e.stage,
                recipient: e.recipient,
                remote: e.remote,
                reply: e.reply,
                detail: e.detail,
            })
            .await?;
        Ok(Response::new(RecordReply {}))
    }

    async fn get(&self, request: Request<HistoryQuery>) -> Result<Response<HistoryEvents>, Status> {
        let records = self.store.history(&request.into_inner().id).await?;
        let events = records
            .into_iter()
            .map(|r| HistoryEvent {
                queue_id: r.queue_id,
                message_id: r.message_id,
                at_ms: r.at_ms,
                stage: r.stage,
                recipient: r.recipient,
                remote: r.remote,
                reply: r.reply,
                detail: r.detail,
            })
            .collect();
        Ok(Response::new(HistoryEvents { events }))
    }
}
