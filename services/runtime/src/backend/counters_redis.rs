//! STUB — to be implemented.
use super::*;
pub struct RedisCounters;
impl RedisCounters {
    pub async fn connect(_url: &str) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Counters for RedisCounters {
    async fn hit(&self, _key: &str, _window: Duration) -> Result<u64> {
        todo!()
    }
}
