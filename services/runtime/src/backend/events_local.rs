//! The single-node event bus: one in-process broadcast channel carrying every
//! account's [`MailboxEvent`]s; each subscriber keeps its own account's.
//! Works only because target `all` shares one [`crate::Context`].

use futures::StreamExt as _;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tracing::warn;

use super::*;

/// Events a slow subscriber may fall behind by before it misses some. An
/// IDLE session that misses events re-syncs on its next command anyway.
const CAPACITY: usize = 1024;

pub struct LocalEvents {
    sender: broadcast::Sender<MailboxEvent>,
}

impl Default for LocalEvents {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalEvents {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        LocalEvents { sender }
    }
}

#[async_trait]
impl Events for LocalEvents {
    async fn publish(&self, event: &MailboxEvent) -> Result<()> {
        // An error only means nobody is subscribed, which is fine.
        let _ = self.sender.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self, account: &str) -> Result<BoxStream<'static, MailboxEvent>> {
        let account = account.to_owned();
        let stream = BroadcastStream::new(self.sender.subscribe()).filter_map(move |item| {
            let keep = match item {
                Ok(event) if event.account == account => Some(event),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    warn!(account = %account, missed, "event subscriber lagged");
                    None
                }
            };
            futures::future::ready(keep)
        });
        Ok(Box::pin(stream))
    }
}
