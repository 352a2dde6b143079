//! STUB — to be implemented.
use super::*;
#[derive(Default)]
pub struct LocalEvents;
impl LocalEvents {
    pub fn new() -> Self {
        LocalEvents
    }
}
#[async_trait]
impl Events for LocalEvents {
    async fn publish(&self, _event: &MailboxEvent) -> Result<()> {
        todo!()
    }
    async fn subscribe(&self, _account: &str) -> Result<BoxStream<'static, MailboxEvent>> {
        todo!()
    }
}
