//! The cluster queue: a JetStream work-queue stream of prost-encoded
//! [`QueueEntry`]s read through one durable pull consumer shared by every
//! delivery worker. It owns the stream, its subject and the consumer
//! (names in [`crate::subjects`]).
//!
//! Leases are JetStream's ack wait, a property of the consumer and not of a
//! single fetch: it is fixed once, either by [`JetStreamOptions::ack_wait`]
//! or else by the `lease` of the first [`Queue::take`] of the process (every
//! replica reads the same `delivery.lease_secs`, so they agree). A later take
//! asking for another lease gets the consumer's one, with a warning.
//!
//! The NATS server we run (2.9) has no delayed publish, so a delayed retry
//! publishes the new state with a `Mailfleet-Not-Before` header and takers
//! hand such a message back (NAK with delay) until it is due.
//!
//! Queue administration ([`Queue::list`] and the rest) cannot use a second
//! consumer: a work-queue stream refuses one on the same subject. It reads
//! the stream by sequence instead (STREAM.MSG.GET, many at a time, or "next
//! message from sequence n" where the stream is mostly holes) and removes
//! messages by sequence. See [`JetStreamQueue::list`] for what "leased"
//! means there and how far that can be trusted.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    self, DeleteMessageErrorKind, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use tokio::sync::OnceCell;
use tracing::{debug, error, warn};

use super::*;
use crate::subjects;

/// The header carrying when a retried entry is due, in unix milliseconds.
pub const NOT_BEFORE_HEADER: &str = "Mailfleet-Not-Before";
/// W3C trace context, so the delivery worker continues the SMTP session's trace.
const TRACEPARENT_HEADER: &str = "traceparent";

/// A take shorter than this asks the server once without waiting: pull
/// requests with an expiry of a few milliseconds are not worth a round trip.
const MIN_PULL_EXPIRY: Duration = Duration::from_millis(50);

/// How long a message that cannot be decoded is handed back before it is
/// tried (and logged) again. Kept, not terminated, so an operator can look.
const CORRUPT_PARK: Duration = Duration::from_secs(3600);

/// Tries at creating the stream before connect gives up.
const CREATE_ATTEMPTS: u32 = 5;

/// Requests in flight at once while the queue is read for administration.
const SCAN_PARALLEL: usize = 32;

/// Up to this many messages in the stream, [`Queue::stats`] reads every
/// entry (one request each) for the same by-status, by-domain and oldest
/// figures as SQLite; above it, totals only, so that a backlog does not
/// make each 5 s gauge refresh cost tens of thousands of requests. (Read
/// 32 at a time, 10,000 entries took about 0.9 s on a busy 2-core dev
/// machine, debug build; one at a time it was 6 s.)
pub const STATS_LIST_LIMIT: u64 = 10_000;

/// Names and lease of the queue; the defaults are the production ones.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    /// The lease of every take. `None`: the `lease` of the first take.
    pub ack_wait: Option<Duration>,
    /// Largest stream [`Queue::stats`] reads entry by entry
    /// ([`STATS_LIST_LIMIT`]); above it, totals only.
    pub stats_list_limit: u64,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            stream: subjects::QUEUE_STREAM.into(),
            subject: subjects::QUEUE_SUBJECT.into(),
            consumer: subjects::QUEUE_CONSUMER.into(),
            ack_wait: None,
            stats_list_limit: STATS_LIST_LIMIT,
        }
    }
}

pub struct JetStreamQueue {
    js: async_nats::jetstream::Context,
    stream: stream::Stream,
    options: JetStreamOptions,
    /// Created (or updated to our ack wait) on first use.
    consumer: OnceCell<(PullConsumer, Duration)>,
}

impl JetStreamQueue {
    /// Connects with the production names of [`crate::subjects`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, JetStreamOptions::default()).await
    }

    /// Connects with other names (tests use their own stream each) and
    /// optionally a fixed lease.
    pub async fn connect_with(url: &str, options: JetStreamOptions) -> Result<Self> {
        let client = async_nats::connect(url).await.map_err(nats)?;
        let js = async_nats::jetstream::new(client);
        let config = stream::Config {
            name: options.stream.clone(),
            subjects: vec![options.subject.clone()],
            // A message leaves the stream when it is acked: the stream is
            // the queue itself.
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            ..Default::default()
        };
        // Creating a stream fails now and then while the server is busy
        // (starting, electing a leader, or creating and deleting other
        // streams: NATS 2.9 answers "error creating store for stream").
        // Creation is idempotent, so a few tries are safe.
        let mut attempt = 1;
        let stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(err) if attempt < CREATE_ATTEMPTS => {
                    warn!(stream = %options.stream, attempt, error = %err, "jetstream stream creation failed, retrying");
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                }
                Err(err) => return Err(nats(err)),
            }
        };
        let queue = JetStreamQueue {
            js,
            stream,
            options,
            consumer: OnceCell::new(),
        };
        if let Some(ack_wait) = queue.options.ack_wait {
            queue.consumer(ack_wait).await?;
        }
        debug!(stream = %queue.options.stream, "jetstream queue connected");
        Ok(queue)
    }

    /// The consumer, created or updated with `ack_wait` on first call.
    async fn consumer(&self, lease: Duration) -> Result<&PullConsumer> {
        let (consumer, ack_wait) = self
            .consumer
            .get_or_try_init(|| async {
                let ack_wait = self.options.ack_wait.unwrap_or(lease);
                // The durable create of NATS 2.9 also updates an existing
                // consumer's ack wait, so a changed lease_secs takes effect.
                let consumer = self
                    .stream
                    .create_consumer(pull::Config {
                        durable_name: Some(self.options.consumer.clone()),
                        filter_subject: self.options.subject.clone(),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait,
                        // Never give up on an entry: delivery decides when
                        // it bounces.
                        max_deliver: -1,
                        // Entries waiting for their retry time stay pending
                        // (NAKed with delay); a limit would stall the queue
                        // once that many are waiting.
                        max_ack_pending: -1,
                        ..Default::default()
                    })
                    .await
                    .map_err(nats)?;
                Ok::<_, BackendError>((consumer, ack_wait))
            })
            .await?;
        if *ack_wait != lease && self.options.ack_wait.is_none() {
            warn!(
                requested_ms = lease.as_millis() as u64,
                ack_wait_ms = ack_wait.as_millis() as u64,
                "jetstream lease is the consumer ack wait, requested lease ignored"
            );
        }
        Ok(consumer)
    }

    /// Publishes `entry` and waits for the PubAck: then it is stored.
    /// Returns the stream sequence of the stored message.
    async fn publish(
        &self,
        entry: &QueueEntry,
        not_before_ms: Option<i64>,
        msg_id: bool,
    ) -> Result<u64> {
        let mut headers = HeaderMap::new();
        if !entry.traceparent.is_empty() {
            headers.insert(TRACEPARENT_HEADER, entry.traceparent.as_str());
        }
        if let Some(ms) = not_before_ms {
            headers.insert(NOT_BEFORE_HEADER, ms.to_string());
        }
        let mut publish = PublishMessage::build()
            .payload(entry.encode_to_vec().into())
            .headers(headers);
        if msg_id && !entry.id.is_empty() {
            publish = publish.message_id(&entry.id);
        }
        let ack = self
            .js
            .send_publish(self.options.subject.clone(), publish)
            .await
            .map_err(nats)?
            .await
            .map_err(nats)?;
        if ack.duplicate {
            debug!(queue_id = %entry.id, "jetstream enqueue was a duplicate");
        }
        Ok(ack.sequence)
    }

    /// Every message of the queue subject, in stream order, decoded.
    /// Messages that cannot be decoded are logged and left out.
    async fn scan(&self) -> Result<Vec<Stored>> {
        let state = self.stream.get_info().await.map_err(nats)?.state;
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let (first, last) = (state.first_sequence, state.last_sequence);
        let span = last.saturating_sub(first).saturating_add(1);
        // A work queue is mostly dense (entries are acked about in order),
        // so asking for every sequence, many requests at a time, is the
        // fast way (one round trip each, in parallel). But one old deferred
        // entry keeps the first sequence where it is while later ones are
        // acked: when most of the range is holes, ask the server for "the
        // next message from here" instead, one live message per request.
        let messages = if span <= state.messages.saturating_mul(2) + SCAN_PARALLEL as u64 {
            self.read_range(first, last).await?
        } else {
            self.read_live(first).await?
        };
        let mut copies = Vec::with_capacity(messages.len());
        for message in messages {
            if message.subject.as_str() != self.options.subject {
                continue;
            }
            let entry = match QueueEntry::decode(message.payload.clone()) {
                Ok(entry) => entry,
                Err(err) => {
                    warn!(stream_sequence = message.sequence, error = %err, "corrupt queue entry left out of the listing");
                    continue;
                }
            };
            let not_before = not_before(message.headers.get(NOT_BEFORE_HEADER));
            // No not-before: due since it was stored, like SQLite's
            // not_before_ms of an enqueued entry.
            let stored_ms =
                i64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            copies.push(Stored {
                sequence: message.sequence,
                due_at_ms: not_before.unwrap_or(stored_ms),
                entry,
            });
        }
        Ok(copies)
    }

    /// Every message from `first` to `last`, [`SCAN_PARALLEL`] requests at
    /// a time, in order; deleted (acked) sequences skipped.
    async fn read_range(&self, first: u64, last: u64) -> Result<Vec<StreamMessage>> {
        futures::stream::iter(first..=last)
            .map(|sequence| async move {
                match self.stream.get_raw_message(sequence).await {
                    Ok(message) => Ok(Some(message)),
                    Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(err) => Err(nats(err)),
                }
            })
            .buffered(SCAN_PARALLEL)
            .try_filter_map(|message| async move { Ok(message) })
            .try_collect()
            .await
    }

    /// Every message of our subject from `first` on, one request each.
    async fn read_live(&self, first: u64) -> Result<Vec<StreamMessage>> {
        let mut messages = Vec::new();
        let mut next = first;
        loop {
            match self
                .stream
                .get_first_raw_message_by_subject(&self.options.subject, next)
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    messages.push(message);
                }
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(nats(err)),
            }
        }
        Ok(messages)
    }

    /// The highest stream sequence the consumer has handed out; 0 before
    /// the consumer exists.
    async fn delivered_sequence(&self) -> Result<u64> {
        match self.stream.consumer_info(&self.options.consumer).await {
            Ok(info) => Ok(info.delivered.stream_sequence),
            Err(err) if consumer_missing(&err.kind()) => Ok(0),
            Err(err) => Err(nats(err)),
        }
    }

    /// The entries of the queue (newest copy of each id) with every older
    /// copy's sequence, oldest id first.
    async fn entries(&self) -> Result<Vec<(QueuedEntry, Copies)>> {
        let copies = self.scan().await?;
        let delivered = self.delivered_sequence().await?;
        let now = now_ms();
        let mut by_id: BTreeMap<String, (Stored, Vec<u64>)> = BTreeMap::new();
        for copy in copies {
            match by_id.get_mut(&copy.entry.id) {
                // Stream order: a later copy is a newer state.
                Some((newest, older)) => older.push(std::mem::replace(newest, copy).sequence),
                None => {
                    by_id.insert(copy.entry.id.clone(), (copy, Vec::new()));
                }
            }
        }
        // Queue ids are UUIDv7: in id order is oldest first, as SQLite lists.
        Ok(by_id
            .into_values()
            .map(|(newest, older)| {
                let leased = newest.due_at_ms <= now && newest.sequence <= delivered;
                (
                    QueuedEntry {
                        entry: newest.entry,
                        due_at_ms: newest.due_at_ms,
                        leased,
                    },
                    Copies {
                        newest: newest.sequence,
                        older,
                    },
                )
            })
            .collect())
    }

    async fn find(&self, id: &str) -> Result<Option<(QueuedEntry, Copies)>> {
        Ok(self
            .entries()
            .await?
            .into_iter()
            .find(|(queued, _)| queued.entry.id == id))
    }

    /// Deletes one message; false when it was no longer there.
    async fn delete(&self, sequence: u64) -> Result<bool> {
        match self.stream.delete_message(sequence).await {
            Ok(deleted) => Ok(deleted),
            // Servers word "already gone" differently (sequence not found,
            // or a failed delete saying no message found): ask whether it
            // is there rather than trust one error code.
            Err(err) if matches!(err.kind(), DeleteMessageErrorKind::JetStream(_)) => {
                match self.stream.get_raw_message(sequence).await {
                    Err(get) if get.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(false),
                    _ => Err(nats(err)),
                }
            }
            Err(err) => Err(nats(err)),
        }
    }

    /// Older copies are left over from a retry whose ack did not happen
    /// (yet): once a newer state replaces them they only cost a duplicate.
    async fn delete_older(&self, copies: &Copies) {
        for sequence in &copies.older {
            if let Err(error) = self.delete(*sequence).await {
                warn!(stream_sequence = sequence, %error, "cannot delete an older copy of a queue entry");
            }
        }
    }
}

/// One message of the stream, decoded.
struct Stored {
    sequence: u64,
    due_at_ms: i64,
    entry: QueueEntry,
}

/// The stream sequences holding one queue id.
struct Copies {
    newest: u64,
    older: Vec<u64>,
}

fn consumer_missing(kind: &ConsumerInfoErrorKind) -> bool {
    match kind {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(e) => e.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

fn not_before(value: Option<&async_nats::HeaderValue>) -> Option<i64> {
    let value = value?;
    match value.as_str().parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => {
            warn!(value = value.as_str(), "bad not-before header ignored");
            None
        }
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    /// The entry id is the JetStream message id, so an enqueue repeated
    /// within the stream's duplicate window is stored once.
    async fn enqueue(&self, entry: &QueueEntry) -> Result<()> {
        self.publish(entry, None, true).await.map(drop)
    }

    async fn take(&self, wait: Duration, lease: Duration) -> Result<Option<Leased>> {
        let consumer = self.consumer(lease).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut batch = if remaining < MIN_PULL_EXPIRY {
                consumer
                    .fetch()
                    .max_messages(1)
                    .messages()
                    .await
                    .map_err(nats)?
            } else {
                consumer
                    .batch()
                    .max_messages(1)
                    .expires(remaining)
                    .messages()
                    .await
                    .map_err(nats)?
            };
            let message = match batch.next().await {
                Some(message) => message.map_err(|e| BackendError::Nats(e.to_string()))?,
                None if remaining < MIN_PULL_EXPIRY => return Ok(None),
                // The pull request expired; loop to check the deadline.
                None => continue,
            };
            let not_before = not_before(
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(NOT_BEFORE_HEADER)),
            );
            if let Some(not_before) = not_before {
                let early = not_before.saturating_sub(now_ms());
                if early > 0 {
                    // Not due: hand it back; the server redelivers it to
                    // some taker once the delay is over.
                    let delay = Duration::from_millis(early as u64);
                    message
                        .ack_with(AckKind::Nak(Some(delay)))
                        .await
                        .map_err(nats)?;
                    continue;
                }
            }
            let entry = match QueueEntry::decode(message.payload.clone()) {
                Ok(entry) => entry,
                Err(err) => {
                    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                    error!(stream_sequence = sequence, error = %err, "corrupt queue entry parked");
                    message
                        .ack_with(AckKind::Nak(Some(CORRUPT_PARK)))
                        .await
                        .map_err(nats)?;
                    continue;
                }
            };
            return Ok(Some(Leased {
                entry,
                token: LeaseToken::JetStream(Box::new(message)),
            }));
        }
    }

    async fn ack(&self, leased: Leased) -> Result<()> {
        let message = jetstream_lease(leased.token)?;
        // Double ack: return only once the server has removed the entry.
        message.double_ack().await.map_err(nats)
    }

    async fn retry(&self, leased: Leased, updated: &QueueEntry, delay: Duration) -> Result<()> {
        let message = jetstream_lease(leased.token)?;
        let not_before = (!delay.is_zero())
            .then(|| now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)));
        // Publish before ack: a crash in between leaves two copies (at least
        // once), never none. No message id, or the dedup window would drop it.
        self.publish(updated, not_before, false).await?;
        if let Err(err) = message.double_ack().await {
            // The new state is stored; the old copy comes back after the
            // lease and is delivered again, which is a duplicate, not a loss.
            warn!(queue_id = %updated.id, error = %err, "ack of retried entry failed");
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64> {
        let info = self.stream.get_info().await.map_err(nats)?;
        Ok(info.state.messages)
    }

    /// Every entry (the newest copy of each queue id), oldest first.
    ///
    /// `due_at_ms` is the `Mailfleet-Not-Before` header of the newest copy,
    /// or when it was stored. JetStream does not say which messages a
    /// worker holds, so `leased` is inferred: the entry is due and its
    /// stream sequence is at or below the last one the durable consumer
    /// handed out (a work-queue stream drops acked messages, so what is
    /// still there was handed out and not acked). An entry not yet due is
    /// never leased: the consumer holds it only to hand it back at its time
    /// (nak with delay). Limits of the rule: an entry whose worker died
    /// counts as leased until another worker takes it (at most the ack wait
    /// after that death, then it is leased again for real); a retry that
    /// just became due counts as leased until the consumer redelivers it,
    /// usually within a second. Both err on the side of "a worker may hold
    /// it", so administration waits rather than racing a worker.
    async fn list(&self) -> Result<Vec<QueuedEntry>> {
        Ok(self.entries().await?.into_iter().map(|(q, _)| q).collect())
    }

    async fn get(&self, id: &str) -> Result<Option<QueuedEntry>> {
        Ok(self.find(id).await?.map(|(q, _)| q))
    }

    /// Publishes the new state (with its not-before when later than now),
    /// then deletes the old message: a crash in between leaves two copies,
    /// of which listing and workers see the newer, never none. When the
    /// old message is gone by then (a worker finished it meanwhile), the
    /// new one is deleted again and the answer is false.
    async fn update(&self, entry: &QueueEntry, due_at_ms: i64) -> Result<bool> {
        let Some((queued, copies)) = self.find(&entry.id).await? else {
            return Ok(false);
        };
        if queued.leased {
            return Ok(false);
        }
        let not_before = (due_at_ms > now_ms()).then_some(due_at_ms);
        let sequence = self.publish(entry, not_before, false).await?;
        if !self.delete(copies.newest).await? {
            // Acked or replaced by a worker between our read and now: its
            // outcome stands, ours would resurrect or duplicate the entry.
            self.delete(sequence).await?;
            return Ok(false);
        }
        self.delete_older(&copies).await;
        Ok(true)
    }

    async fn remove(&self, id: &str) -> Result<bool> {
        let Some((queued, copies)) = self.find(id).await? else {
            return Ok(false);
        };
        if queued.leased {
            return Ok(false);
        }
        let removed = self.delete(copies.newest).await?;
        self.delete_older(&copies).await;
        Ok(removed)
    }

    /// Up to `stats_list_limit` ([`STATS_LIST_LIMIT`]) messages: from [`Queue::list`], the same
    /// figures as SQLite (by status, by domain, oldest entry).
    ///
    /// Above it, totals only: `due` is what the consumer has not handed
    /// out yet (num_pending); `leased_or_deferred` is what it has handed
    /// out and not seen acked (num_ack_pending): a leased entry and one
    /// handed back with a delay (a retry not yet due, nak with delay) both
    /// count there and cannot be told apart without reading each entry.
    async fn stats(&self, now_ms: i64) -> Result<QueueStats> {
        let info = self.stream.get_info().await.map_err(nats)?;
        if info.state.messages <= self.options.stats_list_limit {
            return Ok(QueueStats::from_entries(&self.list().await?, now_ms));
        }
        let mut stats = QueueStats {
            depth: info.state.messages,
            ..QueueStats::default()
        };
        // Before the first take the consumer may not exist: all is due.
        let (pending, ack_pending) = match self.stream.consumer_info(&self.options.consumer).await {
            Ok(consumer) => (consumer.num_pending, consumer.num_ack_pending as u64),
            Err(_) => (info.state.messages, 0),
        };
        stats.by_status.insert(
            QUEUE_STATUS_DUE,
            QueueBucket {
                entries: pending,
                oldest_received_at_ms: None,
            },
        );
        stats.by_status.insert(
            "leased_or_deferred",
            QueueBucket {
                entries: ack_pending,
                oldest_received_at_ms: None,
            },
        );
        Ok(stats)
    }
}

fn jetstream_lease(token: LeaseToken) -> Result<Box<async_nats::jetstream::Message>> {
    match token {
        LeaseToken::JetStream(message) => Ok(message),
        LeaseToken::Sqlite { .. } => Err(BackendError::Other(
            "a SQLite lease given to the JetStream queue".into(),
        )),
    }
}

fn nats(err: impl std::fmt::Display) -> BackendError {
    BackendError::Nats(err.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
