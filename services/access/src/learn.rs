//! Bayes training from what users do: a message an IMAP user copies or
//! moves into the `\Junk` special-use mailbox (RFC 6154) is sent to the
//! filter's `Filter.Learn` as spam; one moved out of Junk into any mailbox
//! but `\Trash` as ham (deleting junk says nothing about it). This is the
//! user-feedback half of issue #6's classifier; operators train with
//! `mailfleet filter train`.
//!
//! Learning is fire-and-forget, off the command path: the COPY/MOVE reply
//! does not wait for it. Each command's batch runs in a spawned task that
//! holds one of a fixed number of permits; when all are taken the batch is
//! dropped (logged): training is an optimisation, never worth memory or a
//! slow IMAP session. The task carries the session's span, so the
//! mailstore and filter calls join the session's trace.

use std::sync::Arc;

use mailfleet_proto::filter::LearnRequest;
use mailfleet_proto::filter::filter_client::FilterClient;
use mailfleet_runtime::trace;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, warn};

use crate::store::{Copied, MailAccess, MailboxInfo};

/// Batches (one per COPY/MOVE command) learning at once; more are dropped.
pub const MAX_BATCHES: usize = 8;
/// Messages learnt from one command at most: a user emptying a 50,000
/// message Junk folder into INBOX must not replay all of it to the filter.
pub const MAX_MESSAGES_PER_BATCH: usize = 200;

/// What a copy from one mailbox to another teaches the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lesson {
    Spam,
    Ham,
}

/// The lesson of a copy from a mailbox with special-use attributes `from`
/// to one with `to`: into Junk is spam, out of Junk (except into Trash) is
/// ham, anything else teaches nothing.
pub fn lesson(from: &[String], to: &[String]) -> Option<Lesson> {
    let has = |attributes: &[String], name: &str| {
        attributes
            .iter()
            .any(|a| a.trim_start_matches('\\').eq_ignore_ascii_case(name))
    };
    match (has(from, "Junk"), has(to, "Junk")) {
        (false, true) => Some(Lesson::Spam),
        (true, false) if !has(to, "Trash") => Some(Lesson::Ham),
        _ => None,
    }
}

/// Sends what users file into and out of Junk to `Filter.Learn`.
pub struct Learner {
    filter: FilterClient<Channel>,
    permits: Arc<Semaphore>,
}

impl Learner {
    /// A learner calling the filter at `url` (`services.filter_url`),
    /// connected lazily: the filter may start after us.
    pub fn new(url: &str) -> Result<Self, tonic::transport::Error> {
        let channel = mailfleet_runtime::grpc::lazy_channel(url)?;
        let max = mailfleet_runtime::grpc::MAX_MESSAGE_BYTES;
        Ok(Learner {
            filter: FilterClient::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            permits: Arc::new(Semaphore::new(MAX_BATCHES)),
        })
    }

    /// After a successful COPY or MOVE of `copied` from `from` to `to`:
    /// learns the copies in the background when the move teaches something.
    pub fn after_copy(
        &self,
        store: Arc<dyn MailAccess>,
        account: &str,
        from: &str,
        to: &str,
        copied: &Copied,
    ) {
        if copied.pairs.is_empty() || from == to {
            return;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            warn!(
                account,
                from, to, "junk learning skipped: too many batches in flight"
            );
            return;
        };
        let batch = Batch {
            filter: self.filter.clone(),
            store,
            account: account.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            uids: copied
                .pairs
                .iter()
                .map(|&(_, new)| new)
                .take(MAX_MESSAGES_PER_BATCH)
                .collect(),
        };
        tokio::spawn(
            async move {
                batch.run().await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// The copies one command made, to be learnt.
struct Batch {
    filter: FilterClient<Channel>,
    store: Arc<dyn MailAccess>,
    account: String,
    from: String,
    /// The mailbox the copies are in now, and `uids` their UIDs there.
    to: String,
    uids: Vec<u32>,
}

impl Batch {
    async fn run(self) {
        let mailboxes = match self.store.list_mailboxes(&self.account).await {
            Ok(mailboxes) => mailboxes,
            Err(error) => {
                warn!(%error, "junk learning skipped: cannot list mailboxes");
                return;
            }
        };
        let attributes = |name: &str| -> Vec<String> {
            mailboxes
                .iter()
                .find(|m: &&MailboxInfo| m.name == name)
                .map(|m| m.attributes.clone())
                .unwrap_or_default()
        };
        let Some(lesson) = lesson(&attributes(&self.from), &attributes(&self.to)) else {
            return;
        };
        let spam = lesson == Lesson::Spam;
        let mut learnt = 0usize;
        for &uid in &self.uids {
            let message = match self.store.fetch_body(&self.account, &self.to, uid).await {
                Ok(message) => message,
                Err(error) => {
                    // Expunged meanwhile, or moved on: nothing to learn.
                    debug!(%error, uid, "junk learning: message gone");
                    continue;
                }
            };
            let request = trace::request(LearnRequest { message, spam });
            match self.filter.clone().learn(request).await {
                Ok(_) => learnt += 1,
                Err(status) => {
                    // The filter is down or has Bayes off: the rest of the
                    // batch would fail the same way.
                    warn!(code = ?status.code(), error = %status.message(), spam, "junk learning failed");
                    break;
                }
            }
        }
        info!(
            account = %self.account,
            from = %self.from,
            to = %self.to,
            spam,
            learnt,
            "learnt from a junk move"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn into_junk_is_spam_out_of_junk_is_ham_except_into_trash() {
        let junk = attrs(&["\\Junk"]);
        let trash = attrs(&["\\Trash"]);
        let plain = attrs(&[]);
        assert_eq!(lesson(&plain, &junk), Some(Lesson::Spam));
        assert_eq!(lesson(&trash, &junk), Some(Lesson::Spam));
        assert_eq!(lesson(&junk, &plain), Some(Lesson::Ham));
        assert_eq!(lesson(&junk, &attrs(&["\\Archive"])), Some(Lesson::Ham));
        assert_eq!(lesson(&junk, &trash), None);
        assert_eq!(lesson(&junk, &junk), None);
        assert_eq!(lesson(&plain, &trash), None);
        // The mailstore may keep attributes without the backslash.
        assert_eq!(lesson(&attrs(&["Junk"]), &plain), Some(Lesson::Ham));
    }
}
