//! STUB — to be implemented.
use super::*;
pub struct NatsEvents;
impl NatsEvents {
    pub async fn connect(_url: &str) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Events for NatsEvents {
    async fn publish(&self, _event: &MailboxEvent) -> Result<()> {
        todo!()
    }
    async fn subscribe(&self, _account: &str) -> Result<BoxStream<'static, MailboxEvent>> {
        todo!()
    }
}
