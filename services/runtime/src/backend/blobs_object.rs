//! Content-addressed blobs in an object store (S3 or an S3-compatible
//! server), through the `object_store` crate: a blob is the object
//! `<prefix>/<sha256 hex>` in the bucket.
//!
//! A put is durable before it returns: S3 acknowledges a PUT only once the
//! object is stored, and a reader never sees part of an object. The same
//! content always lands under the same key, so a put that repeats is a
//! harmless overwrite with identical bytes.
//!
//! Only S3 is wired to configuration. The local default stays [`DirBlobs`]
//! rather than `object_store`'s `LocalFileSystem`, which renames a finished
//! file into place but never fsyncs it or its directory: a power loss could
//! lose a blob that mailstore had already acknowledged.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::*;

/// Where an S3 store lives: `backends.blob_url` and its companions.
#[derive(Debug, Clone, Default)]
pub struct S3Location {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); empty for AWS
    /// itself (or `AWS_ENDPOINT`).
    pub endpoint: String,
    /// Plain HTTP to the endpoint, for a server on the local network only.
    pub allow_http: bool,
}

impl S3Location {
    /// The bucket and key prefix of `url` (`s3://bucket/a/b` gives
    /// `("bucket", "a/b")`).
    pub fn bucket_and_prefix(&self) -> Result<(String, String)> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .or_else(|| self.url.strip_prefix("s3a://"))
            .ok_or_else(|| {
                BackendError::Other(format!(
                    "blob URL must look like s3://bucket/prefix, got {:?}",
                    self.url
                ))
            })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BackendError::Other(format!(
                "blob URL {:?} names no bucket",
                self.url
            )));
        }
        Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }

    /// A builder with everything but credentials: those, the region and the
    /// rest come from the standard `AWS_*` variables ([`ObjectStoreBlobs::s3`])
    /// or, in tests, from the caller.
    pub fn builder(&self, base: AmazonS3Builder) -> Result<(AmazonS3Builder, String)> {
        let (bucket, prefix) = self.bucket_and_prefix()?;
        let mut builder = base.with_bucket_name(bucket);
        if !self.endpoint.is_empty() {
            builder = builder.with_endpoint(&self.endpoint);
        }
        if self.allow_http {
            builder = builder.with_allow_http(true);
        }
        Ok((builder, prefix))
    }
}

/// How long a readiness check waits for the bucket.
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct ObjectStoreBlobs {
    store: Arc<dyn ObjectStore>,
    /// Key prefix without trailing slash; empty for the bucket's root.
    prefix: String,
}

impl ObjectStoreBlobs {
    /// Blobs under `prefix` of any object store.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ObjectStoreBlobs {
        ObjectStoreBlobs {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// Blobs in S3 at `location`, below `sub` (`store`, `spool`), with
    /// credentials and region from the `AWS_*` environment variables.
    pub fn s3(location: &S3Location, sub: &str) -> Result<ObjectStoreBlobs> {
        let (builder, prefix) = location.builder(AmazonS3Builder::from_env())?;
        let store = builder.build().map_err(object_error)?;
        Ok(ObjectStoreBlobs::new(Arc::new(store), &join(&prefix, sub)))
    }

    /// The key of blob `id`; an error for anything but 64 lowercase hex
    /// digits, so an id can never name another object.
    fn key(&self, id: &str) -> Result<ObjectPath> {
        let valid = id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(BackendError::Other(format!("invalid blob id {id:?}")));
        }
        ObjectPath::parse(join(&self.prefix, id)).map_err(|e| BackendError::Other(e.to_string()))
    }
}

fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}/{name}"),
    }
}

fn object_error(error: object_store::Error) -> BackendError {
    BackendError::Other(format!("object store: {error}"))
}

#[async_trait]
impl BlobStore for ObjectStoreBlobs {
    async fn put(&self, data: &[u8]) -> Result<String> {
        let id = hex::encode(Sha256::digest(data));
        let key = self.key(&id)?;
        // No existence check first: it would cost a round trip on every new
        // message to save an upload only for the rare identical one.
        self.store
            .put(&key, PutPayload::from(data.to_vec()))
            .await
            .map_err(object_error)?;
        debug!(blob = %id, bytes = data.len(), "blob stored in object store");
        Ok(id)
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>> {
        let key = self.key(id)?;
        let result = match self.store.get(&key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackendError::BlobNotFound(id.to_owned()));
            }
            Err(error) => return Err(object_error(error)),
        };
        Ok(result.bytes().await.map_err(object_error)?.to_vec())
    }

    async fn exists(&self, id: &str) -> Result<bool> {
        let key = self.key(id)?;
        // An object store puts an object atomically: a HEAD that finds it
        // means the whole blob.
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(object_error(error)),
        }
    }

    async fn delete(&self, id: &str) -> Result<()> {
        let key = self.key(id)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(object_error(error)),
        }
    }

    /// Reads the metadata of a key that never exists: "not found" proves
    /// the bucket answers with these credentials. Bounded: the client
    /// retries a refused connection for minutes, and `/readyz` must answer.
    async fn ping(&self) -> Result<()> {
        let probe = ObjectPath::parse(join(&self.prefix, ".readyz"))
            .map_err(|e| BackendError::Other(e.to_string()))?;
        match tokio::time::timeout(PING_TIMEOUT, self.store.head(&probe)).await {
            Ok(Ok(_) | Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(error)) => Err(object_error(error)),
            Err(_) => Err(BackendError::Other(format!(
                "object store did not answer within {PING_TIMEOUT:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(url: &str) -> S3Location {
        S3Location {
            url: url.to_owned(),
            ..S3Location::default()
        }
    }

    #[test]
    fn url_gives_bucket_and_prefix() {
        let parts = |url: &str| location(url).bucket_and_prefix().unwrap();
        assert_eq!(parts("s3://mail"), ("mail".into(), "".into()));
        assert_eq!(parts("s3://mail/"), ("mail".into(), "".into()));
        assert_eq!(parts("s3://mail/a/b/"), ("mail".into(), "a/b".into()));
        assert_eq!(parts("s3a://mail/x"), ("mail".into(), "x".into()));
        assert!(location("https://mail/x").bucket_and_prefix().is_err());
        assert!(location("s3:///x").bucket_and_prefix().is_err());
        assert!(location("").bucket_and_prefix().is_err());
    }

    #[test]
    fn keys_are_prefixed_and_ids_checked() {
        let store = object_store::memory::InMemory::new();
        let blobs = ObjectStoreBlobs::new(Arc::new(store), "/mail/store/");
        let id = "ab".repeat(32);
        assert_eq!(blobs.key(&id).unwrap().as_ref(), format!("mail/store/{id}"));
        assert!(blobs.key("../etc").is_err());
        assert!(blobs.key(&"AB".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn ping_of_an_unreachable_endpoint_fails_in_bounded_time() {
        // Port 9 on loopback: nothing listens, every connection is refused.
        let location = S3Location {
            url: "s3://nowhere/mail".into(),
            endpoint: "http://127.0.0.1:9".into(),
            allow_http: true,
        };
        let (builder, prefix) = location
            .builder(
                AmazonS3Builder::new()
                    .with_region("us-east-1")
                    .with_access_key_id("test")
                    .with_secret_access_key("test"),
            )
            .unwrap();
        let blobs = ObjectStoreBlobs::new(Arc::new(builder.build().unwrap()), &prefix);
        let started = std::time::Instant::now();
        assert!(blobs.ping().await.is_err());
        assert!(started.elapsed() < PING_TIMEOUT + std::time::Duration::from_secs(2));
    }
}
