//! Leader election for cluster-wide housekeeping: with N replicas, one
//! process does each singleton job (pruning the message history, reading the
//! whole queue for the `mailfleet_queue_*` gauges) instead of all N.
//!
//! A job asks for a [`Leadership`] and checks [`Leadership::is_leader`]
//! before each round of work. Where it comes from is configuration
//! (`[cluster] leader_election`):
//!
//! - `kubernetes`: a `coordination.k8s.io/v1` Lease per job in the pod's
//!   namespace ([`LeaseElection`]), with the semantics of client-go's
//!   leader election: acquire when absent or expired, renew every third of
//!   the lease duration, optimistic concurrency through `resourceVersion`
//!   (a `409 Conflict` means another contender wrote first and won), give
//!   the lease up on shutdown so a successor takes over at once.
//! - `nats`: outside Kubernetes, a key per job in a JetStream KV bucket on
//!   `backends.queue_url` whose `max_age` is the lease duration: `create`
//!   when the key is absent, `update` by revision to renew (a wrong revision
//!   means another process won), delete by revision to release. Expiry is
//!   the NATS server's, one clock for everyone.
//! - `off`: every process is leader ([`Leadership::always`]). That is right
//!   for a single node and for a local cluster of a few processes, where the
//!   jobs are idempotent and cheap enough to run more than once.
//! - `auto` (default): `kubernetes` when `KUBERNETES_SERVICE_HOST` is set
//!   (every pod has it), else `off`.
//!
//! On Kubernetes, expiry is judged on this process's own clock from when it
//! last saw the lease change, never by comparing the holder's `renewTime` with local
//! time: replicas' clocks may disagree, their rates do not (much). A newly
//! started contender therefore waits one full lease duration before taking
//! over a lease it finds held, even if the holder died long ago.

use std::time::Duration;

use async_nats::jetstream::kv;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The singleton jobs; each is elected on its own lease, so the work spreads
/// over replicas instead of piling onto one.
pub mod jobs {
    /// Deleting message history older than `mailstore.history_retention_days`.
    pub const HISTORY_PRUNE: &str = "history-prune";
    /// Reading the queue for the `mailfleet_queue_*` gauges.
    pub const QUEUE_METRICS: &str = "queue-metrics";
}

/// Whether this process currently does a singleton job. Cheap to clone;
/// every clone follows the same election.
#[derive(Clone, Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
}

impl Leadership {
    /// Leader for ever: no election (single node, or `leader_election = "off"`).
    pub fn always() -> Leadership {
        let (_tx, rx) = watch::channel(true);
        Leadership { rx }
    }

    /// Never leader: what a process that stepped down hands out.
    pub fn never() -> Leadership {
        let (_tx, rx) = watch::channel(false);
        Leadership { rx }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until this process is leader (at once if it is).
    pub async fn wait_until_leader(&mut self) {
        // An error means the election ended (step-down): it will never be
        // leader again, so wait for ever rather than spin.
        if self.rx.wait_for(|leader| *leader).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits for the next change of leadership and returns the new state.
    /// Never returns once the election has ended.
    pub async fn changed(&mut self) -> bool {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.is_leader()
    }
}

/// `mailfleet_leader{job}`: 1 where this process does the job, 0 where it
/// does not, so an SRE finds the replica doing the housekeeping.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    leader: Family<JobLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: &'static str,
}

impl LeaderMetrics {
    pub fn register(registry: &mut Registry) -> LeaderMetrics {
        let metrics = LeaderMetrics::default();
        registry.register(
            "leader",
            "1 if this process does the singleton job (history pruning, queue gauges), else 0",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Keeps the job's gauge equal to `leadership` for as long as it runs.
    pub fn follow(&self, job: &'static str, mut leadership: Leadership) {
        let gauge = self.leader.get_or_create(&JobLabels { job }).clone();
        gauge.set(i64::from(leadership.is_leader()));
        tokio::spawn(async move {
            loop {
                let leader = leadership.changed().await;
                gauge.set(i64::from(leader));
            }
        });
    }
}

/// What `[cluster] leader_election` resolves to in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every process is leader.
    Off,
    /// A Kubernetes Lease per job.
    Kubernetes,
    /// A key per job in a JetStream KV bucket (clusters outside Kubernetes).
    Nats,
}

impl Mode {
    /// Resolves the configured value; `on_kubernetes` is whether
    /// `KUBERNETES_SERVICE_HOST` is set (passed in so tests set no env).
    /// `None` for an unknown value (config validation rejects those first).
    pub fn resolve(configured: &str, on_kubernetes: bool) -> Option<Mode> {
        match configured {
            "off" => Some(Mode::Off),
            "kubernetes" => Some(Mode::Kubernetes),
            "nats" => Some(Mode::Nats),
            "auto" if on_kubernetes => Some(Mode::Kubernetes),
            "auto" => Some(Mode::Off),
            _ => None,
        }
    }

    /// From the configured value and the process environment.
    pub fn from_env(configured: &str) -> Option<Mode> {
        Mode::resolve(
            configured,
            std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        )
    }
}

/// The name this process holds leases under: `POD_NAME` (the chart sets it
/// from the downward API), else the hostname (a pod's is its name).
pub fn holder_identity() -> String {
    let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    from_env("POD_NAME")
        .or_else(|| from_env("HOSTNAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("mailfleet-{}", std::process::id()))
}

/// One Lease contended for.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    /// The Lease object's name, e.g. `mailfleet-history-prune`.
    pub name: String,
    /// Written as `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a lease lives without renewal (`leaseDurationSeconds`,
    /// whole seconds, at least 1). Renewals happen every third of it.
    pub lease_duration: Duration,
}

impl LeaseSettings {
    fn duration_secs(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// Renew (and, for followers, retry) every third of the duration, as
    /// the task asks, so two renewals can fail before the lease runs out.
    fn retry_period(&self) -> Duration {
        Duration::from_secs(u64::from(self.duration_secs().unsigned_abs())) / 3
    }

    /// A leader that could not renew for this long stops acting as leader,
    /// safely before any follower (waiting a whole duration) takes over.
    fn renew_deadline(&self) -> Duration {
        self.retry_period() * 2
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("nats: {0}")]
    Nats(String),
    #[error("lease request timed out after {0:?}")]
    Timeout(Duration),
}

/// A running election for one Lease. [`LeaseElection::step_down`] on
/// shutdown releases the lease; dropping the handle instead stops renewing
/// without releasing, as a killed process would, and the lease expires.
pub struct LeaseElection {
    leadership: Leadership,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseElection {
    /// Starts contending for the Kubernetes Lease `settings.name` with `client`.
    pub fn start(client: kube::Client, settings: LeaseSettings) -> LeaseElection {
        let store = KubeLease {
            api: Api::namespaced(client, &settings.namespace),
            settings: settings.clone(),
            observed: None,
        };
        LeaseElection::spawn(store, &settings)
    }

    /// Starts contending for key `settings.name` of a JetStream KV bucket
    /// opened with [`nats_bucket`] (`settings.namespace` is unused).
    pub fn start_nats(bucket: kv::Store, settings: LeaseSettings) -> LeaseElection {
        let store = NatsLease {
            bucket,
            key: settings.name.clone(),
            identity: settings.identity.clone(),
            revision: None,
        };
        LeaseElection::spawn(store, &settings)
    }

    fn spawn(store: impl LeaseStore, settings: &LeaseSettings) -> LeaseElection {
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let elector = Elector {
            store,
            name: settings.name.clone(),
            identity: settings.identity.clone(),
            retry: settings.retry_period(),
            renew_deadline: settings.renew_deadline(),
            tx,
            last_renewed: None,
        };
        let task = tokio::spawn(elector.run(stop.clone()));
        LeaseElection {
            leadership: Leadership { rx },
            stop,
            task: Some(task),
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stops acting as leader, then gives the lease up (holder cleared) so
    /// another replica takes over at its next retry instead of waiting for
    /// expiry. Returns when the release was written or failed.
    pub async fn step_down(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseElection {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Where a lease lives: one round of acquire-or-renew, and the release.
trait LeaseStore: Send + 'static {
    /// `Ok(true)` when this process holds the lease afterwards.
    fn try_acquire_or_renew(&mut self) -> impl Future<Output = Result<bool, LeaderError>> + Send;
    /// Gives the lease up if this process still holds it.
    fn release(&mut self) -> impl Future<Output = Result<(), LeaderError>> + Send;
}

/// The election loop, the same whichever store holds the lease.
struct Elector<S> {
    store: S,
    name: String,
    identity: String,
    retry: Duration,
    renew_deadline: Duration,
    tx: watch::Sender<bool>,
    /// When the request of the last successful acquire or renew was sent.
    last_renewed: Option<Instant>,
}

impl<S: LeaseStore> Elector<S> {
    async fn run(mut self, stop: CancellationToken) {
        let retry = self.retry;
        loop {
            let started = Instant::now();
            let attempt = tokio::time::timeout(retry, self.store.try_acquire_or_renew()).await;
            match attempt.unwrap_or(Err(LeaderError::Timeout(retry))) {
                Ok(true) => {
                    self.last_renewed = Some(started);
                    self.set_leader(true);
                }
                Ok(false) => self.set_leader(false),
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "lease request failed");
                    let overdue = self
                        .last_renewed
                        .is_none_or(|at| at.elapsed() >= self.renew_deadline);
                    if overdue {
                        self.set_leader(false);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        // Stop the work before anyone else can start it.
        let was_leader = *self.tx.borrow();
        self.set_leader(false);
        if was_leader {
            match tokio::time::timeout(retry, self.store.release()).await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "lease released"),
                Ok(Err(error)) => {
                    tracing::warn!(lease = %self.name, %error, "lease not released; it expires")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, "lease release timed out; it expires")
                }
            }
        }
    }

    fn set_leader(&self, leader: bool) {
        let changed = self.tx.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
        if changed {
            tracing::info!(
                lease = %self.name,
                identity = %self.identity,
                leader,
                "leadership changed"
            );
        }
    }
}

/// The lease as last seen, and when (on this process's clock).
struct Observed {
    resource_version: Option<String>,
    at: Instant,
}

/// A `coordination.k8s.io/v1` Lease.
struct KubeLease {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

impl LeaseStore for KubeLease {
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        KubeLease::try_acquire_or_renew(self).await
    }

    async fn release(&mut self) -> Result<(), LeaderError> {
        KubeLease::release(self).await
    }
}

impl KubeLease {
    /// One round: `Ok(true)` when this process holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let name = self.settings.name.clone();
        let Some(mut lease) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(self.settings.duration_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return won_unless_conflict(self.api.create(&PostParams::default(), &lease).await);
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(self.settings.identity.as_str());
        if !held_by_me && !self.expired(&lease, holder.is_none()) {
            return Ok(false);
        }

        // Renew our own lease, or take over an expired or released one.
        // The resourceVersion read above goes back with the write: if
        // anyone wrote in between, the API answers 409 and they won.
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration_secs()),
            acquire_time: if held_by_me {
                spec.acquire_time.or_else(|| Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if held_by_me {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        let written = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await;
        won_unless_conflict(written)
    }

    /// Whether a lease held by someone else may be taken over: released
    /// (no holder), or unchanged for its whole duration since this process
    /// first saw it that way.
    fn expired(&mut self, lease: &Lease, released: bool) -> bool {
        let version = lease.metadata.resource_version.clone();
        let seen_before = self
            .observed
            .as_ref()
            .is_some_and(|o| o.resource_version == version);
        if !seen_before {
            self.observed = Some(Observed {
                resource_version: version,
                at: Instant::now(),
            });
        }
        if released {
            return true;
        }
        let duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(u64::from(s.max(1).unsigned_abs())))
            .unwrap_or(self.settings.lease_duration);
        self.observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration)
    }

    /// Clears the holder (client-go does the same), if we still hold it.
    async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            // Someone wrote first: the lease is no longer ours to release.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(error.into()),
            Ok(_) => Ok(()),
        }
    }
}

/// Opens (creating it if needed) the JetStream KV bucket holding the
/// leases of clusters outside Kubernetes. Its `max_age` is the lease
/// duration: the server drops a key its holder stopped renewing, so expiry
/// is judged by one clock, the server's.
pub async fn nats_bucket(
    client: async_nats::Client,
    bucket: &str,
    lease_duration: Duration,
) -> Result<kv::Store, LeaderError> {
    use async_nats::jetstream::stream;
    let jetstream = async_nats::jetstream::new(client);
    // The stream a KV bucket is, as `create_key_value` would define it;
    // created directly because `create_key_value` first asks for the
    // account info, whose reply from NATS 2.9 (Debian's) async-nats 0.51
    // cannot parse.
    jetstream
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Mailfleet leader election: one key per singleton job".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: lease_duration,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| LeaderError::Nats(e.to_string()))?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|e| LeaderError::Nats(e.to_string()))
}

/// A key in a JetStream KV bucket whose `max_age` is the lease duration:
/// `create` succeeds only when the key is absent (never held, expired, or
/// released), `update` only with the revision this process last wrote —
/// the same optimistic concurrency as a Lease's resourceVersion.
struct NatsLease {
    bucket: kv::Store,
    key: String,
    identity: String,
    /// The revision of our last write, while we believe we hold the key.
    revision: Option<u64>,
}

impl LeaseStore for NatsLease {
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let value = bytes::Bytes::from(self.identity.clone());
        if let Some(revision) = self.revision {
            match self.bucket.update(&self.key, value.clone(), revision).await {
                Ok(revision) => {
                    self.revision = Some(revision);
                    return Ok(true);
                }
                // Someone else wrote the key since: they hold it now.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.revision = None;
                    return Ok(false);
                }
                Err(e) => return Err(LeaderError::Nats(e.to_string())),
            }
        }
        match self.bucket.create(&self.key, value).await {
            Ok(revision) => {
                self.revision = Some(revision);
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(LeaderError::Nats(e.to_string())),
        }
    }

    async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(revision) = self.revision.take() else {
            return Ok(());
        };
        // With our revision only: if someone else holds the key, it stays.
        match self
            .bucket
            .delete_expect_revision(&self.key, Some(revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(LeaderError::Nats(e.to_string())),
        }
    }
}

/// A create or replace: written means won; 409 (AlreadyExists on create,
/// Conflict on a stale resourceVersion) means another contender won.
fn won_unless_conflict(written: Result<Lease, kube::Error>) -> Result<bool, LeaderError> {
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_means_kubernetes_only_on_kubernetes() {
        assert_eq!(Mode::resolve("auto", true), Some(Mode::Kubernetes));
        assert_eq!(Mode::resolve("auto", false), Some(Mode::Off));
        assert_eq!(Mode::resolve("kubernetes", false), Some(Mode::Kubernetes));
        assert_eq!(Mode::resolve("off", true), Some(Mode::Off));
        assert_eq!(Mode::resolve("nats", true), Some(Mode::Nats));
        assert_eq!(Mode::resolve("on", true), None);
    }

    #[test]
    fn renewals_every_third_and_step_down_before_expiry() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
        };
        assert_eq!(settings.retry_period(), Duration::from_secs(5));
        assert_eq!(settings.renew_deadline(), Duration::from_secs(10));
        assert!(settings.renew_deadline() < settings.lease_duration);
    }

    #[test]
    fn always_is_leader() {
        assert!(Leadership::always().is_leader());
    }
}
