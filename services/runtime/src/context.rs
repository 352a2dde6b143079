//! The context a target runs with: config, metrics registry, readiness, and
//! backends opened on first use (a process running only `access` never
//! connects to the queue).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::sync::OnceCell;

use hickory_resolver::TokioResolver;

use crate::Config;
use crate::backend::{
    BlobStore, Counters, DirBlobs, Events, JetStreamQueue, LocalEvents, MemoryCounters, NatsEvents,
    ObjectStoreBlobs, Queue, RedisCounters, Result, S3Location, SqliteQueue,
};
use crate::dns::DnsError;
use crate::queue_metrics::{self, QueueMetrics};
use crate::tls::{TlsError, TlsProvider};

pub struct Context {
    pub config: Config,
    /// Every metric of the process; served on `/metrics`.
    pub metrics: Mutex<Registry>,
    pub readiness: Readiness,
    queue: OnceCell<Arc<dyn Queue>>,
    events: OnceCell<Arc<dyn Events>>,
    counters: OnceCell<Arc<dyn Counters>>,
    spool: OnceCell<Arc<dyn BlobStore>>,
    store_blobs: OnceCell<Arc<dyn BlobStore>>,
    tls: OnceCell<Arc<TlsProvider>>,
    dns: Mutex<Option<TokioResolver>>,
}

impl Context {
    pub fn new(config: Config) -> Arc<Context> {
        Arc::new(Context {
            config,
            metrics: Mutex::new(Registry::with_prefix("mailfleet")),
            readiness: Readiness::default(),
            queue: OnceCell::new(),
            events: OnceCell::new(),
            counters: OnceCell::new(),
            spool: OnceCell::new(),
            store_blobs: OnceCell::new(),
            tls: OnceCell::new(),
            dns: Mutex::new(None),
        })
    }

    /// The queue: SQLite in `<data_dir>/queue.db`, or JetStream at `backends.queue_url`.
    pub async fn queue(&self) -> Result<Arc<dyn Queue>> {
        self.queue
            .get_or_try_init(|| async {
                let url = &self.config.backends.queue_url;
                let queue: Arc<dyn Queue> = if url.is_empty() {
                    std::fs::create_dir_all(&self.config.data_dir)?;
                    Arc::new(SqliteQueue::open(&self.config.data_dir.join("queue.db")).await?)
                } else {
                    Arc::new(JetStreamQueue::connect(url).await?)
                };
                // Every process that opens the queue (smtp-edge, delivery)
                // reports it, once: the OnceCell runs this a single time.
                let metrics =
                    QueueMetrics::register(&mut self.metrics.lock().expect("metrics lock"));
                queue_metrics::spawn_refresh(Arc::downgrade(&queue), metrics);
                Ok(queue)
            })
            .await
            .cloned()
    }

    /// Mailbox change events: in-process, or NATS at `backends.events_url`.
    pub async fn events(&self) -> Result<Arc<dyn Events>> {
        self.events
            .get_or_try_init(|| async {
                let url = &self.config.backends.events_url;
                let events: Arc<dyn Events> = if url.is_empty() {
                    Arc::new(LocalEvents::new())
                } else {
                    Arc::new(NatsEvents::connect(url).await?)
                };
                Ok(events)
            })
            .await
            .cloned()
    }

    /// Rate-limit counters: in memory, or Redis at `backends.counters_url`.
    pub async fn counters(&self) -> Result<Arc<dyn Counters>> {
        self.counters
            .get_or_try_init(|| async {
                let url = &self.config.backends.counters_url;
                let counters: Arc<dyn Counters> = if url.is_empty() {
                    Arc::new(MemoryCounters::new())
                } else {
                    Arc::new(RedisCounters::connect(url).await?)
                };
                Ok(counters)
            })
            .await
            .cloned()
    }

    /// The spool: messages accepted by smtp-edge and waiting in the queue,
    /// in `<blob_dir>/spool` or, with `backends.blob_url`, under `spool/` in
    /// the bucket. Deleted by delivery once the entry is done. It follows
    /// the mailbox blobs to S3 because smtp-edge and delivery run in
    /// different pods: with the spool in the bucket a cluster needs no
    /// shared volume at all, and an acknowledged S3 PUT is as durable as
    /// the fsync that `250 queued` relies on.
    pub async fn spool(&self) -> Result<Arc<dyn BlobStore>> {
        self.spool
            .get_or_try_init(|| self.open_blobs("spool"))
            .await
            .cloned()
    }

    /// Mailbox message bodies owned by mailstore, in `<blob_dir>/store` or
    /// under `store/` in the `backends.blob_url` bucket (reference-counted
    /// in the metadata database).
    pub async fn store_blobs(&self) -> Result<Arc<dyn BlobStore>> {
        self.store_blobs
            .get_or_try_init(|| self.open_blobs("store"))
            .await
            .cloned()
    }

    async fn open_blobs(&self, sub: &str) -> Result<Arc<dyn BlobStore>> {
        let backends = &self.config.backends;
        if backends.blob_url.is_empty() {
            return Ok(Arc::new(DirBlobs::open(&self.config.blob_dir().join(sub))?));
        }
        let location = S3Location {
            url: backends.blob_url.clone(),
            endpoint: backends.blob_s3_endpoint.clone(),
            allow_http: backends.blob_s3_allow_http,
        };
        Ok(Arc::new(ObjectStoreBlobs::s3(&location, sub)?))
    }
}

impl Context {
    /// Checks every backend this process has opened (never opens one):
    /// `(name, error)` for each that fails, for `/readyz`.
    pub async fn check_backends(&self) -> Vec<(&'static str, String)> {
        let mut failures = Vec::new();
        if let Some(queue) = self.queue.get()
            && let Err(e) = queue.depth().await
        {
            failures.push(("queue", e.to_string()));
        }
        if let Some(events) = self.events.get()
            && let Err(e) = events.ping().await
        {
            failures.push(("events", e.to_string()));
        }
        if let Some(counters) = self.counters.get()
            && let Err(e) = counters.ping().await
        {
            failures.push(("counters", e.to_string()));
        }
        if let Some(blobs) = self.store_blobs.get().or(self.spool.get())
            && let Err(e) = blobs.ping().await
        {
            failures.push(("blobs", e.to_string()));
        }
        failures
    }

    /// The TLS certificate of every listener of this process (loaded, or
    /// generated for a single node, on first use). Call
    /// [`TlsProvider::watch`] once to reload it when the files change.
    pub async fn tls(&self) -> Result<Arc<TlsProvider>, TlsError> {
        self.tls
            .get_or_try_init(|| async { TlsProvider::from_config(&self.config).map(Arc::new) })
            .await
            .cloned()
    }

    /// The process's one caching DNS resolver (`[dns]`); clones share the cache.
    pub fn dns(&self) -> Result<TokioResolver, DnsError> {
        let mut slot = self.dns.lock().expect("dns lock");
        if let Some(resolver) = slot.as_ref() {
            return Ok(resolver.clone());
        }
        let resolver = crate::dns::resolver(&self.config.dns)?;
        *slot = Some(resolver.clone());
        Ok(resolver)
    }
}

/// Which started components are ready; `/readyz` answers 200 only when all are.
#[derive(Default)]
pub struct Readiness {
    components: Mutex<BTreeMap<String, bool>>,
}

impl Readiness {
    /// Registers a component as not ready yet.
    pub fn register(&self, name: &str) {
        self.components
            .lock()
            .expect("readiness lock")
            .insert(name.to_owned(), false);
    }

    pub fn set(&self, name: &str, ready: bool) {
        self.components
            .lock()
            .expect("readiness lock")
            .insert(name.to_owned(), ready);
    }

    /// `(all ready, each component and its state)`.
    pub fn report(&self) -> (bool, Vec<(String, bool)>) {
        let map = self.components.lock().expect("readiness lock");
        let all = !map.is_empty() && map.values().all(|r| *r);
        (all, map.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }
}
