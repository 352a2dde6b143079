//! The cluster event bus: NATS core subjects, one per account
//! ([`crate::subjects::mailbox_events`]), carrying prost-encoded
//! [`MailboxEvent`]s. At most once, like the in-process bus: an access
//! session that misses an event re-syncs on its next command.

use futures::StreamExt as _;
use prost::Message as _;
use tracing::{debug, warn};

use super::*;
use crate::subjects;

pub struct NatsEvents {
    client: async_nats::Client,
}

impl NatsEvents {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| BackendError::Nats(e.to_string()))?;
        debug!("nats events connected");
        Ok(NatsEvents { client })
    }
}

#[async_trait]
impl Events for NatsEvents {
    async fn ping(&self) -> Result<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BackendError::Nats(format!("not connected: {state:?}"))),
        }
    }

    async fn publish(&self, event: &MailboxEvent) -> Result<()> {
        self.client
            .publish(
                subjects::mailbox_events(&event.account),
                event.encode_to_vec().into(),
            )
            .await
            .map_err(|e| BackendError::Nats(e.to_string()))
    }

    async fn subscribe(&self, account: &str) -> Result<BoxStream<'static, MailboxEvent>> {
        let subject = subjects::mailbox_events(account);
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| BackendError::Nats(e.to_string()))?;
        // Round trip to the server, so that the subscription is in place
        // when this returns and events published from now on are seen.
        self.client
            .flush()
            .await
            .map_err(|e| BackendError::Nats(e.to_string()))?;
        let stream = subscriber.filter_map(move |message| {
            let event = match MailboxEvent::decode(message.payload) {
                Ok(event) => Some(event),
                Err(err) => {
                    warn!(subject = %subject, error = %err, "undecodable mailbox event skipped");
                    None
                }
            };
            futures::future::ready(event)
        });
        Ok(Box::pin(stream))
    }
}
