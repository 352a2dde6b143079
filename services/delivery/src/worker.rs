//! One delivery worker: take a queue entry, try its due destination
//! groups (local recipients through mailstore, then one remote domain),
//! record each recipient's outcome in the entry, enqueue a DSN for the
//! recipients that failed for good, then acknowledge the entry (and delete
//! its spooled message) or put it back until its next due group.
//!
//! Nothing is lost on a crash: the entry stays leased until acked or put
//! back, mailstore's idempotency key makes a repeated local delivery a
//! no-op, and the entry is written back after every remote domain, so a
//! remote `250` is recorded before anything else is tried. A DSN has an id
//! derived from the entry and its failed recipients, so enqueueing it again
//! after a crash is a no-op (both queue backends deduplicate by id).
//!
//! Each outcome (delivered, deferred, bounced or failed, and each DSN) is
//! also recorded in the message history for `mailfleet trace`, in the
//! background: history never holds up an entry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailfleet_proto::filter::Action;
use mailfleet_proto::history::HistoryEvent;
use mailfleet_proto::mailstore::directory_client::DirectoryClient;
use mailfleet_proto::mailstore::lookup_reply::Kind;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::mailstore::{DeliverRequest, DkimKeyRequest, LookupRequest};
use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
use mailfleet_runtime::backend::{BackendError, BlobStore, Leased};
use mailfleet_runtime::history::Recorder;
use mailfleet_runtime::{CancellationToken, Context};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::error::{DeliveryError, Diagnostic};
use crate::limits::{Busy, Limits};
use crate::metrics::Metrics;
use crate::pool::Lane;
use crate::remote::{RcptResult, Remote};
use crate::schedule::{self, Destination};
use crate::tls::TlsOutcome;
use crate::{dkim, dsn, route, wire};

/// How long `take` waits for an entry; also the longest a worker takes to
/// notice shutdown.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// Pause after a backend error before trying again.
const BACKEND_BACKOFF: Duration = Duration::from_secs(1);
/// Deadline of one mailstore call, so that a hung mailstore cannot hold a
/// worker (and its lease) for ever.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// When a DSN could not be enqueued, try again this soon.
const DSN_RETRY: Duration = Duration::from_secs(60);
/// How long a destination at its connection limit waits before trying again.
const BUSY_CONNECTIONS_WAIT: Duration = Duration::from_secs(2);
/// How long a destination over its rate waits (windows are a minute long).
const BUSY_RATE_WAIT: Duration = Duration::from_secs(15);

pub struct Worker {
    pub id: usize,
    pub ctx: Arc<Context>,
    pub mailstore: MailstoreClient<Channel>,
    pub directory: DirectoryClient<Channel>,
    pub remote: Remote,
    pub limits: Limits,
    pub history: Recorder,
    pub metrics: Metrics,
}

/// The `destination` label of a recipient's attempts.
fn destination_kind(recipient: &Recipient) -> &'static str {
    match schedule::destination(recipient) {
        Destination::Local => "local",
        Destination::Remote(_) => "remote",
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Worker {
    /// Takes and handles entries until `shutdown`; the entry in hand is
    /// always finished first. Backend errors never end the loop.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::debug!(worker = self.id, "delivery worker started");
        while !shutdown.is_cancelled() {
            let taken = match self.take().await {
                Ok(taken) => taken,
                Err(error) => {
                    self.metrics.queue_errors.inc();
                    tracing::warn!(worker = self.id, %error, "cannot take from queue");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(BACKEND_BACKOFF) => {}
                    }
                    continue;
                }
            };
            let Some(leased) = taken else { continue };
            // The lease started when the entry was handed out: every
            // deadline of this turn counts from here.
            let taken_at = tokio::time::Instant::now();
            let span = tracing::info_span!(
                "delivery.attempt",
                queue_id = %leased.entry.id,
                mail.queue_id = %leased.entry.id,
                mail.message_id = %leased.entry.message_id,
                mail.rcpt_count = leased.entry.recipients.len(),
                worker = self.id,
            );
            // One message is one trace: this attempt, however late and on
            // whichever worker, continues the SMTP session's trace.
            mailfleet_runtime::trace::set_parent(&span, &leased.entry.traceparent);
            if let Err(error) = self.handle(leased, taken_at).instrument(span.clone()).await {
                self.metrics.queue_errors.inc();
                // The lease runs out and the entry comes back: nothing lost.
                span.in_scope(|| tracing::warn!(%error, "cannot finish queue entry, it returns after its lease"));
            }
        }
        tracing::debug!(worker = self.id, "delivery worker stopped");
    }

    /// `take` is not raced against shutdown: dropping it half way could
    /// leave an entry leased by nobody until its lease runs out.
    async fn take(&self) -> Result<Option<Leased>, BackendError> {
        let lease = Duration::from_secs(self.ctx.config.delivery.lease_secs);
        self.ctx.queue().await?.take(TAKE_WAIT, lease).await
    }

    async fn handle(
        &self,
        leased: Leased,
        taken_at: tokio::time::Instant,
    ) -> Result<(), BackendError> {
        let mut entry = leased.entry.clone();
        let attempts_before: Vec<u32> = entry.recipients.iter().map(|r| r.attempts).collect();
        let now = now_ms();
        if entry.received_at_ms == 0 {
            // Expiry needs an anchor; an entry without one starts now.
            entry.received_at_ms = now;
        }
        let spool = self.ctx.spool().await?;
        let spooled = match spool.get(&entry.blob).await {
            Ok(spooled) => Some(spooled),
            Err(BackendError::BlobNotFound(blob)) => {
                // Nothing will bring it back; retrying would loop for ever.
                tracing::error!(%blob, "spooled message is missing, recipients fail");
                let lost = DeliveryError::Permanent(Diagnostic::local(
                    "5.3.0",
                    "the queued message was lost",
                ));
                for recipient in entry.recipients.iter_mut().filter(|r| route::is_pending(r)) {
                    self.record(recipient, Err(lost.clone()), now, i64::MAX);
                }
                None
            }
            Err(error) => return Err(error),
        };

        if let Some(spooled) = &spooled {
            self.deliver_local(&mut entry, spooled, now).await;
            // One remote domain per turn: the entry is written back after
            // it, so its 250s are recorded before another domain is tried.
            if let Some(domain) = schedule::due_remote_domains(&entry, now).into_iter().next() {
                self.deliver_remote(&mut entry, &domain, spooled, taken_at)
                    .await;
            }
        }

        self.record_outcomes(&entry, &attempts_before);
        self.send_dsn(&mut entry, spooled.as_deref(), &*spool).await;
        self.warn_delay(&mut entry, spooled.as_deref(), &*spool)
            .await;
        self.finish(leased, entry, &*spool).await
    }

    /// Acknowledges a done entry or writes it back, due at its next group.
    async fn finish(
        &self,
        leased: Leased,
        entry: QueueEntry,
        spool: &dyn BlobStore,
    ) -> Result<(), BackendError> {
        let queue = self.ctx.queue().await?;
        if schedule::is_done(&entry) {
            queue.ack(leased).await?;
            self.metrics.entry("done");
            tracing::info!("queue entry done");
            // After the ack: a crash in between leaves an orphan spool
            // file, never an entry without its message.
            if let Err(error) = spool.delete(&entry.blob).await {
                tracing::warn!(blob = %entry.blob, %error, "cannot delete spooled message");
            }
            return Ok(());
        }
        let mut delay = schedule::delay_until_due(&entry, now_ms());
        if route::is_done(&entry) {
            // Only a DSN is owed: try it again soon.
            delay = DSN_RETRY;
        }
        let mut updated = entry;
        updated.attempts += 1;
        queue.retry(leased, &updated, delay).await?;
        self.metrics.entry("retried");
        tracing::info!(
            attempts = updated.attempts,
            retry_in_secs = delay.as_secs(),
            "queue entry written back"
        );
        Ok(())
    }

    /// Records one outcome on a recipient, with metrics.
    fn record(
        &self,
        recipient: &mut Recipient,
        result: Result<(&str, &str, &str), DeliveryError>,
        now: i64,
        expires_at_ms: i64,
    ) {
        let kind = destination_kind(recipient);
        match result {
            Ok((mx, reply, tls)) => {
                schedule::delivered(recipient, now, mx, reply, tls);
                self.metrics.attempt(kind, "delivered");
            }
            Err(error) => {
                let schedule = self.ctx.config.delivery.retry_schedule();
                schedule::failed(recipient, &error, now, &schedule, expires_at_ms);
                if route::is_pending(recipient) {
                    self.metrics.attempt(kind, "deferred");
                    tracing::info!(recipient = %recipient.address, %error, next_attempt_at_ms = recipient.next_attempt_at_ms, "delivery deferred");
                } else {
                    // A permanent answer bounces; a transient one that ran
                    // out of queue lifetime fails: SREs read them apart.
                    let result = if error.is_permanent() {
                        "bounced"
                    } else {
                        "failed"
                    };
                    self.metrics.attempt(kind, result);
                    tracing::warn!(recipient = %recipient.address, error = %recipient.last_error, "delivery failed");
                }
            }
        }
    }

    /// Acceptance-to-delivery time of a recipient just delivered.
    fn observe_end_to_end(&self, kind: &'static str, received_at_ms: i64) {
        let waited_ms = now_ms().saturating_sub(received_at_ms).max(0);
        self.metrics.end_to_end(kind, waited_ms as f64 / 1000.0);
    }

    /// One history event per recipient tried in this turn (its attempts
    /// went up), from the outcome `record` left on it. A local delivery is
    /// recorded in `deliver_one_local`, where its UID is known.
    fn record_outcomes(&self, entry: &QueueEntry, attempts_before: &[u32]) {
        let events = entry
            .recipients
            .iter()
            .zip(attempts_before)
            .filter(|(r, before)| r.attempts > **before)
            .filter_map(|(r, _)| outcome_event(entry, r))
            .collect();
        self.history.record_all(events);
    }

    fn expiry(&self, entry: &QueueEntry) -> i64 {
        schedule::expires_at_ms(entry, self.ctx.config.delivery.queue_lifetime())
    }

    /// Every due local recipient, through mailstore.
    async fn deliver_local(&self, entry: &mut QueueEntry, spooled: &[u8], now: i64) {
        let expiry = self.expiry(entry);
        let (queue_id, mail_from, verdict) =
            (entry.id.clone(), entry.mail_from.clone(), entry.verdict);
        let message_id = entry.message_id.clone();
        let received_at_ms = entry.received_at_ms;
        for recipient in entry
            .recipients
            .iter_mut()
            .filter(|r| schedule::is_due(r, now) && schedule::destination(r) == Destination::Local)
        {
            let started = std::time::Instant::now();
            let result = self
                .deliver_one_local(
                    &queue_id,
                    &message_id,
                    &mail_from,
                    verdict,
                    recipient,
                    spooled,
                )
                .await;
            self.metrics
                .attempt_duration("local", started.elapsed().as_secs_f64());
            if result.is_ok() {
                self.observe_end_to_end("local", received_at_ms);
            }
            let result = result.as_ref().map(|_| ("", "", "")).map_err(Clone::clone);
            self.record(recipient, result, now, expiry);
        }
    }

    async fn deliver_one_local(
        &self,
        queue_id: &str,
        message_id: &str,
        mail_from: &str,
        verdict: i32,
        recipient: &Recipient,
        spooled: &[u8],
    ) -> Result<(), DeliveryError> {
        let mailbox = route::mailbox_for(verdict);
        let mut request = mailfleet_runtime::trace::request(DeliverRequest {
            account: recipient.account.clone(),
            mailbox: mailbox.to_owned(),
            message: route::local_message(mail_from, &recipient.address, spooled),
            idempotency_key: route::idempotency_key(queue_id, &recipient.account),
            flags: Vec::new(),
            internal_date_ms: 0,
        });
        request.set_timeout(DELIVER_TIMEOUT);
        match self.mailstore.clone().deliver(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                tracing::info!(recipient = %recipient.address, account = %recipient.account, mailbox, uid = reply.uid, duplicate = reply.duplicate, "delivered locally");
                self.history.record(HistoryEvent {
                    queue_id: queue_id.to_owned(),
                    message_id: message_id.to_owned(),
                    stage: "delivered".into(),
                    recipient: recipient.address.clone(),
                    remote: "mailstore".into(),
                    detail: format!(
                        "account {} mailbox {mailbox} uid {}{}",
                        recipient.account,
                        reply.uid,
                        if reply.duplicate {
                            " (delivered before)"
                        } else {
                            ""
                        }
                    ),
                    ..HistoryEvent::default()
                });
                Ok(())
            }
            Err(status) => {
                let text = format!("mailstore: {:?}: {}", status.code(), status.message());
                // Over quota: RESOURCE_EXHAUSTED, or FAILED_PRECONDITION
                // "quota exceeded" with mailstore.over_quota_permanent
                // (RFC 3463 X.2.2, mailbox full).
                let over_quota = status.code() == tonic::Code::ResourceExhausted
                    || status.message().starts_with("quota exceeded");
                if route::is_permanent(status.code()) {
                    let code = if over_quota { "5.2.2" } else { "5.1.1" };
                    Err(DeliveryError::Permanent(Diagnostic::local(code, text)))
                } else {
                    let code = if over_quota { "4.2.2" } else { "4.3.0" };
                    Err(DeliveryError::Transient(Diagnostic::local(code, text)))
                }
            }
        }
    }

    /// The due recipients of one remote domain, in one attempt.
    async fn deliver_remote(
        &self,
        entry: &mut QueueEntry,
        domain: &str,
        spooled: &[u8],
        taken_at: tokio::time::Instant,
    ) {
        let now = now_ms();
        let expiry = self.expiry(entry);
        let indices: Vec<usize> = (0..entry.recipients.len())
            .filter(|i| {
                let r = &entry.recipients[*i];
                schedule::is_due(r, now)
                    && schedule::destination(r) == Destination::Remote(domain.to_owned())
            })
            .collect();
        // Back-pressure: a destination at its limit waits, without using
        // up an attempt. The slot is a connection: an idle one of this
        // process to the domain, or a new one within the limit.
        let lane = match self.limits.check_rate(domain).await {
            Ok(()) => self.remote.connections.checkout(domain).await,
            Err(busy) => Err(busy),
        };
        let mut lane = match lane {
            Ok(lane) => lane,
            Err(busy) => {
                let wait = match busy {
                    Busy::Connections => BUSY_CONNECTIONS_WAIT,
                    Busy::Rate => BUSY_RATE_WAIT,
                };
                let later = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                for i in indices {
                    entry.recipients[i].next_attempt_at_ms = later;
                }
                self.metrics.throttled.inc();
                tracing::info!(
                    domain,
                    ?busy,
                    wait_secs = wait.as_secs(),
                    "destination at its limit, waiting"
                );
                return;
            }
        };
        let deadline = taken_at + self.attempt_budget();
        self.deliver_remote_with(
            entry, domain, spooled, indices, now, expiry, &mut lane, deadline,
        )
        .await;
        self.remote.connections.checkin(domain, lane).await;
    }

    /// How long after the take a remote attempt must be over: 3/4 of the
    /// lease, so the entry is written back (or acked) before the lease runs
    /// out and another worker takes it while this one still delivers.
    fn attempt_budget(&self) -> Duration {
        Duration::from_millis(self.ctx.config.delivery.lease_secs * 750)
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver_remote_with(
        &self,
        entry: &mut QueueEntry,
        domain: &str,
        spooled: &[u8],
        indices: Vec<usize>,
        now: i64,
        expiry: i64,
        lane: &mut Lane,
        deadline: tokio::time::Instant,
    ) {
        let addresses: Vec<String> = indices
            .iter()
            .map(|i| entry.recipients[*i].address.clone())
            .collect();
        let message = match self.dkim_sign(wire::canonical(spooled)).await {
            Ok(message) => message,
            Err(error) => {
                for i in indices {
                    self.record(&mut entry.recipients[i], Err(error.clone()), now, expiry);
                }
                return;
            }
        };
        // An attempt (MX lookup, connections, SMTP sessions) must end
        // before the lease does, or another worker would take the entry
        // and deliver it a second time. Cut at the deadline, it is a
        // transient failure: the connection is dropped mid-dialogue (no
        // final dot was answered, or its answer is lost and the message
        // may arrive twice, the usual SMTP risk) and the entry is retried.
        let span = tracing::info_span!("delivery.remote", domain, otel.kind = "client");
        let started = std::time::Instant::now();
        let results = tokio::time::timeout_at(
            deadline,
            self.remote
                .deliver(domain, lane, &entry.mail_from, &addresses, &message)
                .instrument(span),
        )
        .await
        .unwrap_or_else(|_| {
            let budget = self.attempt_budget();
            tracing::warn!(
                domain,
                budget_ms = budget.as_millis() as u64,
                "remote attempt cut before the lease runs out"
            );
            vec![
                // RFC 3463 4.4.7: delivery time expired (for this attempt).
                RcptResult::Failed(DeliveryError::Transient(Diagnostic::local(
                    "4.4.7",
                    format!(
                        "delivery to {domain} did not finish within {} ms of the lease of {} s",
                        budget.as_millis(),
                        self.ctx.config.delivery.lease_secs
                    ),
                )));
                addresses.len()
            ]
        });
        self.metrics
            .attempt_duration("remote", started.elapsed().as_secs_f64());
        for (i, result) in indices.into_iter().zip(results) {
            let recipient = &mut entry.recipients[i];
            match result {
                RcptResult::Delivered { mx, reply, tls } => {
                    let tls = match &tls {
                        None => "plaintext",
                        Some(TlsOutcome::Verified) => "tls-verified",
                        Some(TlsOutcome::Unverified(_)) => "tls-unverified",
                    };
                    tracing::info!(recipient = %recipient.address, domain, mx, tls, "delivered remotely");
                    self.observe_end_to_end("remote", entry.received_at_ms);
                    self.record(recipient, Ok((&mx, &reply, tls)), now, expiry);
                }
                RcptResult::Failed(error) => self.record(recipient, Err(error), now, expiry),
            }
        }
    }

    /// Prepends a DKIM signature when the directory has a key for the
    /// `From:` domain. A directory that cannot answer defers the attempt
    /// (mail of a signing domain must not leave unsigned because of an
    /// outage); a key that cannot sign is an operator's error, logged, and
    /// the message goes out unsigned.
    async fn dkim_sign(&self, message: Vec<u8>) -> Result<Vec<u8>, DeliveryError> {
        let Some(domain) = dkim::from_domain(&message) else {
            return Ok(message);
        };
        let mut request = mailfleet_runtime::trace::request(DkimKeyRequest {
            domain: domain.clone(),
        });
        request.set_timeout(DELIVER_TIMEOUT);
        let key = match self.directory.clone().get_dkim_key(request).await {
            Ok(key) => key.into_inner(),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                return Ok(message);
            }
            Err(status) => {
                return Err(DeliveryError::Transient(Diagnostic::local(
                    "4.3.0",
                    format!(
                        "directory: cannot read the DKIM key of {domain}: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                )));
            }
        };
        let signed = tokio::task::spawn_blocking(move || {
            dkim::sign(&key, &message)
                .map(|header| [header.as_bytes(), &message].concat())
                .map_err(|error| (error, message))
        })
        .await;
        match signed {
            Ok(Ok(signed)) => {
                tracing::debug!(%domain, "dkim signed");
                Ok(signed)
            }
            Ok(Err((error, message))) => {
                tracing::error!(%domain, %error, "cannot dkim-sign, sending unsigned");
                Ok(message)
            }
            Err(error) => Err(DeliveryError::Transient(Diagnostic::local(
                "4.3.0",
                format!("dkim signing task failed: {error}"),
            ))),
        }
    }

    /// One delay warning (RFC 3464 `Action: delayed`) for the recipients
    /// still pending `delivery.delay_warning_after` after arrival, once
    /// per recipient; never to `<>`, never about a DSN.
    async fn warn_delay(
        &self,
        entry: &mut QueueEntry,
        spooled: Option<&[u8]>,
        spool: &dyn BlobStore,
    ) {
        let Some(after) = self.ctx.config.delivery.delay_warning() else {
            return;
        };
        let now = now_ms();
        let due = entry
            .received_at_ms
            .saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
        if now < due {
            return;
        }
        let owed: Vec<usize> = (0..entry.recipients.len())
            .filter(|i| {
                let r = &entry.recipients[*i];
                route::is_pending(r) && r.attempts > 0 && !r.delay_warned
            })
            .collect();
        if owed.is_empty() {
            return;
        }
        let reportable: Vec<usize> = if entry.mail_from.is_empty() || entry.is_dsn {
            Vec::new()
        } else {
            owed.iter()
                .copied()
                .filter(|i| dsn::wants_delay_report(&entry.recipients[*i]))
                .collect()
        };
        if !reportable.is_empty() {
            let until = self.expiry(entry);
            match self
                .enqueue_dsn(entry, &reportable, spooled, spool, Some(until))
                .await
            {
                Ok(id) => {
                    tracing::info!(dsn_queue_id = %id, recipients = reportable.len(), "delay warning enqueued")
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot enqueue delay warning, will retry");
                    return;
                }
            }
        }
        for i in owed {
            entry.recipients[i].delay_warned = true;
        }
    }

    /// One DSN for every recipient that failed for good and was not yet
    /// reported, to the envelope sender — never to `<>`, never about a DSN.
    async fn send_dsn(
        &self,
        entry: &mut QueueEntry,
        spooled: Option<&[u8]>,
        spool: &dyn BlobStore,
    ) {
        let owed: Vec<usize> = (0..entry.recipients.len())
            .filter(|i| schedule::needs_dsn(&entry.recipients[*i]))
            .collect();
        if owed.is_empty() {
            return;
        }
        let reportable: Vec<usize> = if entry.mail_from.is_empty() || entry.is_dsn {
            Vec::new()
        } else {
            owed.iter()
                .copied()
                .filter(|i| dsn::wants_failure_report(&entry.recipients[*i]))
                .collect()
        };
        if !reportable.is_empty() {
            match self
                .enqueue_dsn(entry, &reportable, spooled, spool, None)
                .await
            {
                Ok(id) => {
                    tracing::info!(dsn_queue_id = %id, recipients = reportable.len(), "bounce enqueued")
                }
                Err(error) => {
                    // Left owed: the entry is written back and tries again.
                    tracing::warn!(%error, "cannot enqueue bounce, will retry");
                    return;
                }
            }
        }
        for i in owed {
            entry.recipients[i].dsn_sent = true;
        }
    }

    async fn enqueue_dsn(
        &self,
        entry: &QueueEntry,
        reportable: &[usize],
        spooled: Option<&[u8]>,
        spool: &dyn BlobStore,
        delayed_until_ms: Option<i64>,
    ) -> Result<String, String> {
        let failed: Vec<&Recipient> = reportable.iter().map(|i| &entry.recipients[*i]).collect();
        let kind = if delayed_until_ms.is_some() {
            "delayed"
        } else {
            "failed"
        };
        let id = dsn_queue_id(&entry.id, kind, &failed);
        // The sender gets it like any mail: local account or remote MX.
        let account = match self.lookup(&entry.mail_from).await? {
            Lookup::Local(account) => account,
            Lookup::Remote => String::new(),
            Lookup::Unknown => {
                // A local address that does not exist: nobody to tell.
                tracing::warn!(sender = %entry.mail_from, "bounce dropped: the sender is an unknown local address");
                return Ok(String::new());
            }
        };
        let now = now_ms();
        let message = dsn::build(&dsn::Report {
            hostname: &self.ctx.config.hostname,
            entry,
            failed,
            original: spooled,
            now_ms: now,
            unique: &id,
            delayed_until_ms,
        });
        let blob = spool.put(&message).await.map_err(|e| e.to_string())?;
        let bounce = QueueEntry {
            id: id.clone(),
            mail_from: String::new(),
            recipients: vec![Recipient {
                address: entry.mail_from.clone(),
                account,
                ..Recipient::default()
            }],
            blob,
            size: message.len() as u64,
            received_at_ms: now,
            verdict: Action::Accept as i32,
            message_id: format!("<{id}.dsn@{}>", self.ctx.config.hostname),
            traceparent: entry.traceparent.clone(),
            is_dsn: true,
            ..QueueEntry::default()
        };
        let queue = self.ctx.queue().await.map_err(|e| e.to_string())?;
        queue.enqueue(&bounce).await.map_err(|e| e.to_string())?;
        let about: Vec<&str> = bounce_about(entry, reportable);
        self.history.record(HistoryEvent {
            queue_id: entry.id.clone(),
            message_id: entry.message_id.clone(),
            stage: "dsn".into(),
            recipient: about.join(", "),
            detail: format!("{kind} notice to <{}> queued as {id}", entry.mail_from),
            ..HistoryEvent::default()
        });
        Ok(id)
    }

    async fn lookup(&self, address: &str) -> Result<Lookup, String> {
        let mut request = mailfleet_runtime::trace::request(LookupRequest {
            address: address.to_owned(),
        });
        request.set_timeout(DELIVER_TIMEOUT);
        let reply = self
            .directory
            .clone()
            .lookup_recipient(request)
            .await
            .map_err(|s| format!("directory: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(match reply.kind() {
            Kind::Local => Lookup::Local(reply.account),
            Kind::UnknownUser => Lookup::Unknown,
            Kind::Remote => Lookup::Remote,
        })
    }
}

/// The addresses a DSN reports on.
fn bounce_about<'a>(entry: &'a QueueEntry, reportable: &[usize]) -> Vec<&'a str> {
    reportable
        .iter()
        .filter_map(|i| entry.recipients.get(*i))
        .map(|r| r.address.as_str())
        .collect()
}

/// The history event of a recipient's last outcome; `None` for a local
/// delivery (recorded with its UID where it happens).
fn outcome_event(entry: &QueueEntry, r: &Recipient) -> Option<HistoryEvent> {
    let local = schedule::destination(r) == Destination::Local;
    let remote = if local {
        "mailstore".to_owned()
    } else {
        r.remote_mta.clone()
    };
    let reply = if r.remote_reply.is_empty() {
        r.last_error.clone()
    } else {
        r.remote_reply.clone()
    };
    let (stage, detail) = if r.status == RecipientStatus::Delivered as i32 {
        if local {
            return None;
        }
        ("delivered", r.tls.clone())
    } else if route::is_pending(r) {
        (
            "deferred",
            format!(
                "status {}, attempt {}, next retry {}",
                r.status_code,
                r.attempts,
                mailfleet_runtime::history::rfc3339(r.next_attempt_at_ms)
            ),
        )
    } else {
        // A permanent (5.x.x) answer bounces; a transient one that ran out
        // of queue lifetime fails.
        let stage = if r.status_code.starts_with('5') {
            "bounced"
        } else {
            "failed"
        };
        let mut detail = format!("status {}", r.status_code);
        if !r.remote_reply.is_empty() && !r.last_error.is_empty() && r.last_error != reply {
            detail.push_str(&format!(", {}", r.last_error));
        }
        (stage, detail)
    };
    Some(HistoryEvent {
        queue_id: entry.id.clone(),
        message_id: entry.message_id.clone(),
        stage: stage.into(),
        recipient: r.address.clone(),
        remote,
        reply,
        detail,
        ..HistoryEvent::default()
    })
}

enum Lookup {
    Local(String),
    Remote,
    Unknown,
}

/// The same failed recipients of the same entry always give the same DSN
/// id, so a DSN enqueued twice (crash before the entry was written back)
/// is stored once. A UUID (version 8, RFC 9562) from a SHA-256.
pub fn dsn_queue_id(queue_id: &str, kind: &str, failed: &[&Recipient]) -> String {
    let mut addresses: Vec<&str> = failed.iter().map(|r| r.address.as_str()).collect();
    addresses.sort_unstable();
    let mut hash = Sha256::new();
    hash.update(b"mailfleet-dsn\0");
    hash.update(kind.as_bytes());
    hash.update(b"\0");
    hash.update(queue_id.as_bytes());
    for address in addresses {
        hash.update(b"\0");
        hash.update(address.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_ids_are_stable() {
        let a = Recipient {
            address: "a@x".into(),
            ..Recipient::default()
        };
        let b = Recipient {
            address: "b@x".into(),
            ..Recipient::default()
        };
        let id = |q, kind, r: &[&Recipient]| dsn_queue_id(q, kind, r);
        assert_eq!(id("q", "failed", &[&a, &b]), id("q", "failed", &[&b, &a]));
        assert_ne!(id("q", "failed", &[&a]), id("q", "failed", &[&a, &b]));
        assert_ne!(id("q", "failed", &[&a]), id("r", "failed", &[&a]));
        assert_ne!(id("q", "failed", &[&a]), id("q", "delayed", &[&a]));
        assert_eq!(id("q", "failed", &[&a]).len(), 36);
    }
}
