//! STUB — to be implemented.
use super::*;
#[derive(Default)]
pub struct MemoryCounters;
impl MemoryCounters {
    pub fn new() -> Self {
        MemoryCounters
    }
}
#[async_trait]
impl Counters for MemoryCounters {
    async fn hit(&self, _key: &str, _window: Duration) -> Result<u64> {
        todo!()
    }
}
