//! STUB — to be implemented.
use super::*;
pub struct JetStreamQueue;
impl JetStreamQueue {
    pub async fn connect(_url: &str) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Queue for JetStreamQueue {
    async fn enqueue(&self, _entry: &QueueEntry) -> Result<()> {
        todo!()
    }
    async fn take(&self, _wait: Duration, _lease: Duration) -> Result<Option<Leased>> {
        todo!()
    }
    async fn ack(&self, _leased: Leased) -> Result<()> {
        todo!()
    }
    async fn retry(&self, _leased: Leased, _updated: &QueueEntry, _delay: Duration) -> Result<()> {
        todo!()
    }
    async fn depth(&self) -> Result<u64> {
        todo!()
    }
}
