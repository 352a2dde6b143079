//! STUB — to be implemented.
use super::*;
use std::path::Path;
pub struct DirBlobs;
impl DirBlobs {
    pub fn open(_dir: &Path) -> Result<DirBlobs> {
        todo!()
    }
}
#[async_trait]
impl BlobStore for DirBlobs {
    async fn put(&self, _data: &[u8]) -> Result<String> {
        todo!()
    }
    async fn get(&self, _id: &str) -> Result<Vec<u8>> {
        todo!()
    }
    async fn delete(&self, _id: &str) -> Result<()> {
        todo!()
    }
}
