//! One delivery worker: take a queue entry, try each pending recipient,
//! then acknowledge the entry (and delete its spooled message) or put it
//! back for a retry. Nothing here is lost on a crash: the entry stays
//! leased until acked or retried, and mailstore's idempotency key makes a
//! repeated local delivery a no-op.

use std::sync::Arc;
use std::time::Duration;

use mailfleet_proto::mailstore::DeliverRequest;
use mailfleet_proto::mailstore::mailstore_client::MailstoreClient;
use mailfleet_proto::queue::{Recipient, RecipientStatus};
use mailfleet_runtime::backend::{BackendError, Leased};
use mailfleet_runtime::{CancellationToken, Context};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::route::{self, REMOTE_NOT_IMPLEMENTED, Route};

/// How long `take` waits for an entry; also the longest a worker takes to
/// notice shutdown.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// Pause after a backend error before trying again.
const BACKEND_BACKOFF: Duration = Duration::from_secs(1);
/// Deadline of one Deliver call, so that a hung mailstore cannot hold a
/// worker (and its lease) for ever.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Worker {
    pub id: usize,
    pub ctx: Arc<Context>,
    pub mailstore: MailstoreClient<Channel>,
    pub metrics: Metrics,
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
            let span =
                tracing::info_span!("delivery", queue_id = %leased.entry.id, worker = self.id);
            if let Err(error) = self.handle(leased).instrument(span.clone()).await {
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

    async fn handle(&self, leased: Leased) -> Result<(), BackendError> {
        let mut entry = leased.entry.clone();
        let spool = self.ctx.spool().await?;
        match spool.get(&entry.blob).await {
            Ok(spooled) => {
                for recipient in entry.recipients.iter_mut().filter(|r| route::is_pending(r)) {
                    self.deliver_one(
                        &entry.id,
                        &entry.mail_from,
                        entry.verdict,
                        recipient,
                        &spooled,
                    )
                    .await;
                }
            }
            Err(BackendError::BlobNotFound(blob)) => {
                // Nothing will bring it back; retrying would loop for ever.
                tracing::error!(%blob, "spooled message is missing, recipients fail");
                for recipient in entry.recipients.iter_mut().filter(|r| route::is_pending(r)) {
                    fail(recipient, "spooled message is missing".into());
                    self.metrics.recipient("failed");
                }
            }
            Err(error) => return Err(error),
        }

        let queue = self.ctx.queue().await?;
        if route::is_done(&entry) {
            queue.ack(leased).await?;
            self.metrics.entry("done");
            tracing::info!(attempts = entry.attempts + 1, "queue entry done");
            // After the ack: a crash in between leaves an orphan spool
            // file, never an entry without its message.
            if let Err(error) = spool.delete(&entry.blob).await {
                tracing::warn!(blob = %entry.blob, %error, "cannot delete spooled message");
            }
        } else {
            entry.attempts += 1;
            let delay = Duration::from_secs(self.ctx.config.delivery.retry_secs);
            queue.retry(leased, &entry, delay).await?;
            self.metrics.entry("retried");
            tracing::info!(
                attempts = entry.attempts,
                retry_in_secs = delay.as_secs(),
                "queue entry deferred"
            );
        }
        Ok(())
    }

    /// Tries one pending recipient and records the outcome on it.
    async fn deliver_one(
        &self,
        queue_id: &str,
        mail_from: &str,
        verdict: i32,
        recipient: &mut Recipient,
        spooled: &[u8],
    ) {
        let (account, mailbox) = match route::route(recipient, verdict) {
            Route::Local { account, mailbox } => (account.to_owned(), mailbox),
            Route::Remote => {
                tracing::warn!(recipient = %recipient.address, "remote recipient failed: {REMOTE_NOT_IMPLEMENTED}");
                fail(recipient, REMOTE_NOT_IMPLEMENTED.into());
                self.metrics.recipient("failed");
                return;
            }
        };
        let mut request = tonic::Request::new(DeliverRequest {
            account: account.clone(),
            mailbox: mailbox.to_owned(),
            message: route::local_message(mail_from, &recipient.address, spooled),
            idempotency_key: route::idempotency_key(queue_id, &recipient.address),
            flags: Vec::new(),
            internal_date_ms: 0,
        });
        request.set_timeout(DELIVER_TIMEOUT);
        match self.mailstore.clone().deliver(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                recipient.status = RecipientStatus::Delivered as i32;
                recipient.last_error.clear();
                self.metrics.recipient("delivered");
                tracing::info!(recipient = %recipient.address, %account, mailbox, uid = reply.uid, duplicate = reply.duplicate, "delivered locally");
            }
            Err(status) if route::is_permanent(status.code()) => {
                let error = format!("mailstore: {:?}: {}", status.code(), status.message());
                tracing::warn!(recipient = %recipient.address, %account, %error, "local delivery failed");
                fail(recipient, error);
                self.metrics.recipient("failed");
            }
            Err(status) => {
                let error = format!("mailstore: {:?}: {}", status.code(), status.message());
                tracing::warn!(recipient = %recipient.address, %account, %error, "local delivery deferred");
                recipient.last_error = error;
                self.metrics.recipient("deferred");
            }
        }
    }
}

fn fail(recipient: &mut Recipient, error: String) {
    recipient.status = RecipientStatus::Failed as i32;
    recipient.last_error = error;
}
