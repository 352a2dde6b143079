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
use crate::leader::{self, Leadership, LeaseElection, LeaseSettings, Mode};
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
    /// One Leadership per singleton job, and the Lease elections behind them.
    leaders: tokio::sync::Mutex<Leaders>,
}

#[derive(Default)]
struct Leaders {
    by_job: BTreeMap<&'static str, Leadership>,
    elections: Vec<LeaseElection>,
    metrics: Option<leader::LeaderMetrics>,
    nats: Option<async_nats::jetstream::kv::Store>,
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
            leaders: tokio::sync::Mutex::new(Leaders::default()),
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
                // registers the gauges, once (the OnceCell runs this a single
                // time); only the elected one reads the queue to fill them.
                let leadership = self
                    .leadership(leader::jobs::QUEUE_METRICS)
                    .await
                    .map_err(|e| crate::backend::BackendError::Other(e.to_string()))?;
                let metrics =
                    QueueMetrics::register(&mut self.metrics.lock().expect("metrics lock"));
                queue_metrics::spawn_refresh(Arc::downgrade(&queue), metrics, leadership);
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

impl Context {
    /// Whether this process does the singleton `job` (see [`leader::jobs`]):
    /// an election on a Kubernetes Lease named `<lease_name_prefix>-<job>`,
    /// or always leader when `[cluster] leader_election` resolves to off.
    /// Started once per job; later calls share it.
    pub async fn leadership(&self, job: &'static str) -> Result<Leadership, leader::LeaderError> {
        let mut leaders = self.leaders.lock().await;
        if let Some(leadership) = leaders.by_job.get(job) {
            return Ok(leadership.clone());
        }
        let cluster = &self.config.cluster;
        let mode = Mode::from_env(&cluster.leader_election).unwrap_or(Mode::Off);
        let lease_duration = std::time::Duration::from_secs(cluster.lease_duration_secs);
        let leadership = match mode {
            Mode::Off => {
                tracing::info!(job, "leader election off: this process does the job");
                Leadership::always()
            }
            Mode::Kubernetes => match kube::Client::try_default().await {
                Ok(client) => {
                    let settings = LeaseSettings {
                        namespace: client.default_namespace().to_owned(),
                        name: format!("{}-{job}", cluster.lease_name_prefix),
                        identity: leader::holder_identity(),
                        lease_duration,
                    };
                    tracing::info!(
                        job,
                        lease = %settings.name,
                        namespace = %settings.namespace,
                        identity = %settings.identity,
                        "contending for the job's lease"
                    );
                    let election = LeaseElection::start(client, settings);
                    let leadership = election.leadership();
                    leaders.elections.push(election);
                    leadership
                }
                // Asked for explicitly: a pod that cannot elect fails loudly.
                Err(error) if cluster.leader_election == "kubernetes" => {
                    return Err(error.into());
                }
                // `auto` on a cluster without a usable service account: doing
                // an idempotent job on every replica beats not doing it.
                Err(error) => {
                    tracing::warn!(job, %error, "no kubernetes client; every replica does the job");
                    Leadership::always()
                }
            },
            Mode::Nats => {
                let bucket = match &leaders.nats {
                    Some(bucket) => bucket.clone(),
                    None => {
                        let client = async_nats::connect(&self.config.backends.queue_url)
                            .await
                            .map_err(|e| leader::LeaderError::Nats(e.to_string()))?;
                        // Bucket names allow [A-Za-z0-9_-] only.
                        let name: String = format!("{}-leases", cluster.lease_name_prefix)
                            .chars()
                            .map(|c| {
                                if c.is_ascii_alphanumeric() || c == '-' {
                                    c
                                } else {
                                    '_'
                                }
                            })
                            .collect();
                        let bucket = leader::nats_bucket(client, &name, lease_duration).await?;
                        leaders.nats = Some(bucket.clone());
                        bucket
                    }
                };
                let settings = LeaseSettings {
                    namespace: String::new(),
                    name: format!("{}-{job}", cluster.lease_name_prefix),
                    identity: leader::holder_identity(),
                    lease_duration,
                };
                tracing::info!(job, lease = %settings.name, identity = %settings.identity, "contending for the job's lease on nats");
                let election = LeaseElection::start_nats(bucket, settings);
                let leadership = election.leadership();
                leaders.elections.push(election);
                leadership
            }
        };
        let metrics = leaders.metrics.get_or_insert_with(|| {
            leader::LeaderMetrics::register(&mut self.metrics.lock().expect("metrics lock"))
        });
        metrics.follow(job, leadership.clone());
        leaders.by_job.insert(job, leadership.clone());
        Ok(leadership)
    }

    /// On shutdown: stops every singleton job of this process and releases
    /// its Leases, so other replicas take over at once rather than after the
    /// lease duration. Later `leadership` calls are never leader.
    pub async fn step_down(&self) {
        let elections = {
            let mut leaders = self.leaders.lock().await;
            for leadership in leaders.by_job.values_mut() {
                *leadership = Leadership::never();
            }
            std::mem::take(&mut leaders.elections)
        };
        futures::future::join_all(elections.into_iter().map(LeaseElection::step_down)).await;
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
