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

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use futures::StreamExt as _;
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

/// Names and lease of the queue; the defaults are the production ones.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    /// The lease of every take. `None`: the `lease` of the first take.
    pub ack_wait: Option<Duration>,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            stream: subjects::QUEUE_STREAM.into(),
            subject: subjects::QUEUE_SUBJECT.into(),
            consumer: subjects::QUEUE_CONSUMER.into(),
            ack_wait: None,
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
    async fn publish(
        &self,
        entry: &QueueEntry,
        not_before_ms: Option<i64>,
        msg_id: bool,
    ) -> Result<()> {
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
        Ok(())
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    /// The entry id is the JetStream message id, so an enqueue repeated
    /// within the stream's duplicate window is stored once.
    async fn enqueue(&self, entry: &QueueEntry) -> Result<()> {
        self.publish(entry, None, true).await
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
            let not_before = message
                .headers
                .as_ref()
                .and_then(|h| h.get(NOT_BEFORE_HEADER))
                .and_then(|v| match v.as_str().parse::<i64>() {
                    Ok(ms) => Some(ms),
                    Err(_) => {
                        warn!(value = v.as_str(), "bad not-before header ignored");
                        None
                    }
                });
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

    /// Totals only: JetStream cannot look inside its messages cheaply, so
    /// there is no breakdown by domain and no oldest entry. `due` is what
    /// the consumer has not handed out yet (num_pending); `leased_or_deferred`
    /// is what it has handed out and not seen acked (num_ack_pending): a
    /// leased entry and one handed back with a delay (a retry not yet due,
    /// nak with delay) both count there and cannot be told apart.
    async fn stats(&self, _now_ms: i64) -> Result<QueueStats> {
        let info = self.stream.get_info().await.map_err(nats)?;
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
