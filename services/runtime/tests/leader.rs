//! Leader election on Kubernetes Leases (`runtime::leader`), driven through
//! the real `kube` client over HTTP.
//!
//! The API server here is a STAND-IN: no Kubernetes API server can run on
//! this machine (kube-apiserver, k3s and kind are in none of the registries
//! it can reach), so the test serves the part of the API the election uses,
//! `GET`/`POST`/`PUT` of namespaced `coordination.k8s.io/v1` Leases, with an
//! axum server that keeps the API server's rules that matter for election:
//! every write bumps `resourceVersion`, a `PUT` carrying a stale
//! `resourceVersion` is refused with `409 Conflict`, a `POST` of an existing
//! name with `409 AlreadyExists`, a missing lease is a `404` `Status`. It
//! also counts its answers, so a test can show a conflict really happened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use mailfleet_runtime::leader::{Leadership, LeaseElection, LeaseSettings};
use tokio::sync::Barrier;
use tokio::time::Instant;

const NAMESPACE: &str = "mail";
const LEASE: &str = "mailfleet-history-prune";

// ---------------------------------------------------------------------------
// The stand-in Lease API.

#[derive(Default)]
struct ApiState {
    leases: HashMap<(String, String), Lease>,
    next_version: u64,
    /// `(method, status)` of every answer.
    answers: Vec<(&'static str, u16)>,
    /// Hook: after answering the next GET of a lease, another writer
    /// takes the lease (between the client's read and its write).
    intruder_after_next_get: Option<String>,
    /// Hook: the first GETs wait here until all of them have arrived, so
    /// contenders read the same state and race their writes.
    get_gate: Option<(Arc<Barrier>, usize)>,
    /// Hook: the API server is unreachable (503 to everything).
    unavailable: bool,
}

#[derive(Clone)]
struct StandIn {
    state: Arc<Mutex<ApiState>>,
    url: String,
}

impl StandIn {
    async fn start() -> StandIn {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let lease_path = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}";
        let app = axum::Router::new()
            .route(lease_path, get(get_lease).put(put_lease))
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(create_lease),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandIn { state, url }
    }

    /// A `kube` client pointed at the stand-in, as `Client::try_default()`
    /// would be at the real API server inside a pod.
    fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.default_namespace = NAMESPACE.into();
        kube::Client::try_from(config).unwrap()
    }

    fn lease(&self) -> Option<Lease> {
        let state = self.state.lock().unwrap();
        state
            .leases
            .get(&(NAMESPACE.to_owned(), LEASE.to_owned()))
            .cloned()
    }

    fn holder(&self) -> Option<String> {
        self.lease()?.spec?.holder_identity
    }

    fn answers(&self, method: &str, status: u16) -> usize {
        let state = self.state.lock().unwrap();
        state
            .answers
            .iter()
            .filter(|(m, s)| *m == method && *s == status)
            .count()
    }

    fn with<T>(&self, f: impl FnOnce(&mut ApiState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

type Shared = Arc<Mutex<ApiState>>;

/// A `Status` object, as the API server sends with every error.
fn status(code: StatusCode, reason: &str, message: String, name: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
        "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn unavailable() -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the server is currently unable to handle the request".into(),
        "",
    )
}

fn bump(state: &mut ApiState, lease: &mut Lease) {
    state.next_version += 1;
    lease.metadata.resource_version = Some(state.next_version.to_string());
}

async fn get_lease(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let gate = {
        let mut s = state.lock().unwrap();
        if s.unavailable {
            s.answers.push(("GET", 503));
            return unavailable();
        }
        match s.get_gate.as_mut() {
            Some((barrier, left)) if *left > 0 => {
                *left -= 1;
                Some(barrier.clone())
            }
            _ => None,
        }
    };
    if let Some(barrier) = gate {
        barrier.wait().await;
    }
    let mut s = state.lock().unwrap();
    let key = (ns, name.clone());
    let Some(lease) = s.leases.get(&key).cloned() else {
        s.answers.push(("GET", 404));
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
            &name,
        );
    };
    s.answers.push(("GET", 200));
    if let Some(intruder) = s.intruder_after_next_get.take() {
        let mut taken = lease.clone();
        let spec = taken.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(intruder);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        bump(&mut s, &mut taken);
        s.leases.insert(key, taken);
    }
    Json(lease).into_response()
}

async fn create_lease(
    State(state): State<Shared>,
    Path(ns): Path<String>,
    Json(mut lease): Json<Lease>,
) -> Response {
    let mut s = state.lock().unwrap();
    if s.unavailable {
        s.answers.push(("POST", 503));
        return unavailable();
    }
    let name = lease.metadata.name.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    if s.leases.contains_key(&key) {
        s.answers.push(("POST", 409));
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{name}\" already exists"),
            &name,
        );
    }
    lease.metadata.namespace = Some(ns);
    bump(&mut s, &mut lease);
    s.leases.insert(key, lease.clone());
    s.answers.push(("POST", 201));
    (StatusCode::CREATED, Json(lease)).into_response()
}

async fn put_lease(
    State(state): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    Json(mut lease): Json<Lease>,
) -> Response {
    let mut s = state.lock().unwrap();
    if s.unavailable {
        s.answers.push(("PUT", 503));
        return unavailable();
    }
    let key = (ns, name.clone());
    let Some(current) = s.leases.get(&key) else {
        s.answers.push(("PUT", 404));
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("leases.coordination.k8s.io \"{name}\" not found"),
            &name,
        );
    };
    // Optimistic concurrency: the write must carry the version it read.
    if lease.metadata.resource_version != current.metadata.resource_version {
        s.answers.push(("PUT", 409));
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": \
                 the object has been modified; please apply your changes to the latest version and try again"
            ),
            &name,
        );
    }
    bump(&mut s, &mut lease);
    s.leases.insert(key, lease.clone());
    s.answers.push(("PUT", 200));
    Json(lease).into_response()
}

// ---------------------------------------------------------------------------
// Helpers.

fn contender(api: &StandIn, identity: &str, lease_duration: Duration) -> LeaseElection {
    LeaseElection::start(
        api.client(),
        LeaseSettings {
            namespace: NAMESPACE.into(),
            name: LEASE.into(),
            identity: identity.into(),
            lease_duration,
        },
    )
}

/// Waits until `leadership` is `leader`, or panics after `within`.
async fn until(leadership: &Leadership, leader: bool, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut watch = leadership.clone();
    let reached = tokio::time::timeout(within, async {
        while watch.is_leader() != leader {
            watch.changed().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{what}: not reached within {within:?}");
    start.elapsed()
}

// ---------------------------------------------------------------------------
// The election.

/// Two replicas start together and both find no lease: both try to create
/// it, the API server accepts one and refuses the other (409); exactly one
/// is leader and stays so while it renews. Killed (its task aborted, no
/// release, as with `kill -9`), the other takes over once the lease has
/// run out, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_contender_wins_and_the_other_takes_over_after_a_kill() {
    let api = StandIn::start().await;
    // Both first GETs are held until both arrived: a real race on create.
    api.with(|s| s.get_gate = Some((Arc::new(Barrier::new(2)), 2)));
    let duration = Duration::from_secs(3);
    let a = contender(&api, "mailfleet-0", duration);
    let b = contender(&api, "mailfleet-1", duration);
    let (la, lb) = (a.leadership(), b.leadership());

    let deadline = Instant::now() + Duration::from_secs(2);
    while !(la.is_leader() || lb.is_leader()) {
        assert!(Instant::now() < deadline, "nobody elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The loser's create may still be in flight when the winner knows.
    while api.answers("POST", 201) + api.answers("POST", 409) < 2 {
        assert!(Instant::now() < deadline, "the second create never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.answers("POST", 201), 1, "one create accepted");
    assert_eq!(
        api.answers("POST", 409),
        1,
        "the other refused as AlreadyExists"
    );
    let (winner, loser, loser_leadership, winner_name, loser_name) = if la.is_leader() {
        (a, b, lb, "mailfleet-0", "mailfleet-1")
    } else {
        (b, a, la, "mailfleet-1", "mailfleet-0")
    };
    assert_eq!(api.holder().as_deref(), Some(winner_name));
    let renewed_at = |api: &StandIn| api.lease().unwrap().spec.unwrap().renew_time.unwrap().0;
    let first_renewal = renewed_at(&api);

    // Longer than the lease duration: the winner renews, the loser waits.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(winner.leadership().is_leader(), "winner lost the lease");
        assert!(!loser_leadership.is_leader(), "two leaders at once");
    }
    assert!(
        renewed_at(&api) > first_renewal,
        "the lease was not renewed"
    );
    assert_eq!(api.holder().as_deref(), Some(winner_name));

    // kill -9: no more renewals, no release.
    drop(winner);
    let killed = Instant::now();
    until(
        &loser_leadership,
        true,
        duration * 3,
        "takeover after the leader died",
    )
    .await;
    let took = killed.elapsed();
    // The lease was renewed at most one retry period (1 s) before the
    // kill, so it was live for at least 2 s more: no takeover before that.
    assert!(
        took >= Duration::from_millis(1800),
        "took over a live lease after {took:?}"
    );
    // Expiry is measured from the last renewal the loser saw (within 1 s),
    // and it retries every second: at most duration + 2 retry periods.
    assert!(
        took <= duration + Duration::from_millis(2500),
        "takeover took {took:?}"
    );
    let lease = api.lease().unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some(loser_name));
    assert_eq!(lease.lease_transitions, Some(1));
    drop(loser);
}

/// A replica shutting down (SIGTERM drain) gives the lease up: the holder
/// is cleared before `step_down` returns and the follower takes over at its
/// next retry, long before the lease would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_releases_the_lease_at_once() {
    let api = StandIn::start().await;
    let duration = Duration::from_secs(9);
    let a = contender(&api, "mailfleet-0", duration);
    let la = a.leadership();
    until(&la, true, Duration::from_secs(2), "first contender elected").await;
    let b = contender(&api, "mailfleet-1", duration);
    let lb = b.leadership();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!lb.is_leader());

    a.step_down().await;
    assert!(!la.is_leader(), "still acting as leader after step-down");
    let released = api.lease().unwrap().spec.unwrap();
    assert_eq!(released.holder_identity, None, "lease not released");

    // Retry period is 3 s: the follower sees the released lease at its
    // next attempt, well within the 9 s it would wait for an expiry.
    let took = until(&lb, true, Duration::from_secs(4), "takeover after release").await;
    assert!(took < duration / 2, "takeover took {took:?}");
    assert_eq!(api.holder().as_deref(), Some("mailfleet-1"));
    b.step_down().await;
    assert_eq!(api.holder(), None);
}

/// Another writer takes the lease between this replica's read and its
/// renewal: the renewal carries a stale resourceVersion, the API answers
/// 409, and the replica stops acting as leader without overwriting the
/// winner. When the winner never renews, the replica takes it back after
/// the lease duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_write_means_someone_else_won() {
    let api = StandIn::start().await;
    let duration = Duration::from_secs(3);
    let a = contender(&api, "mailfleet-0", duration);
    let la = a.leadership();
    until(&la, true, Duration::from_secs(2), "elected").await;

    api.with(|s| s.intruder_after_next_get = Some("intruder".into()));
    until(
        &la,
        false,
        Duration::from_secs(3),
        "deposed by the conflict",
    )
    .await;
    assert_eq!(api.answers("PUT", 409), 1, "the renewal was refused");
    assert_eq!(
        api.holder().as_deref(),
        Some("intruder"),
        "winner overwritten"
    );

    // The intruder never renews: after a lease duration it is expired.
    let took = until(&la, true, duration * 2, "lease taken back").await;
    assert!(
        took >= Duration::from_millis(2500),
        "took back a live lease after {took:?}"
    );
    let spec = api.lease().unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("mailfleet-0"));
    assert_eq!(spec.lease_transitions, Some(1));
    a.step_down().await;
}

/// A leader that cannot reach the API server stops acting as leader before
/// its lease can expire, so it never works alongside a successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_steps_down_before_expiry() {
    let api = StandIn::start().await;
    let duration = Duration::from_secs(3);
    let a = contender(&api, "mailfleet-0", duration);
    let la = a.leadership();
    until(&la, true, Duration::from_secs(2), "elected").await;
    let last_renewal = api.lease().unwrap().spec.unwrap().renew_time.unwrap().0;

    api.with(|s| s.unavailable = true);
    until(&la, false, duration, "stepped down").await;
    let since_renewal = Timestamp::now().duration_since(last_renewal);
    assert!(
        since_renewal < jiff_secs(3),
        "still leader {since_renewal:?} after its last renewal"
    );
    assert!(api.answers("PUT", 503) + api.answers("GET", 503) >= 1);

    api.with(|s| s.unavailable = false);
    until(&la, true, Duration::from_secs(3), "re-elected").await;
    drop(a);
}

fn jiff_secs(secs: i64) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::from_secs(secs)
}

// ---------------------------------------------------------------------------
// The same election outside Kubernetes: a JetStream KV bucket on a real NATS
// server (MAILFLEET_TEST_NATS_URL; a missing variable fails, as in the
// contract tests). Each test has a bucket of its own.

fn nats_url() -> String {
    std::env::var("MAILFLEET_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "MAILFLEET_TEST_NATS_URL is not set: the NATS leader-election tests need a NATS \
             server with JetStream, e.g. MAILFLEET_TEST_NATS_URL=nats://127.0.0.1:4222"
        )
    })
}

struct NatsLeases {
    client: async_nats::Client,
    bucket: String,
    duration: Duration,
}

impl NatsLeases {
    async fn new(duration: Duration) -> NatsLeases {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let bucket = format!("leader-test-{}", uuid::Uuid::now_v7().simple());
        NatsLeases {
            client,
            bucket,
            duration,
        }
    }

    /// A contender as a process would be: its own connection and bucket handle.
    async fn contender(&self, identity: &str) -> LeaseElection {
        let client = async_nats::connect(nats_url()).await.unwrap();
        let store = mailfleet_runtime::leader::nats_bucket(client, &self.bucket, self.duration)
            .await
            .unwrap();
        LeaseElection::start_nats(
            store,
            LeaseSettings {
                namespace: String::new(),
                name: LEASE.into(),
                identity: identity.into(),
                lease_duration: self.duration,
            },
        )
    }

    async fn store(&self) -> async_nats::jetstream::kv::Store {
        async_nats::jetstream::new(self.client.clone())
            .get_key_value(&self.bucket)
            .await
            .unwrap()
    }

    async fn holder(&self) -> Option<String> {
        let value = self.store().await.get(LEASE).await.unwrap()?;
        Some(String::from_utf8(value.to_vec()).unwrap())
    }

    async fn delete(self) {
        let _ = async_nats::jetstream::new(self.client)
            .delete_key_value(&self.bucket)
            .await;
    }
}

/// Two processes contend on NATS: one wins, the other waits while it
/// renews, and takes over once the server has expired the key of a killed
/// leader (max_age = lease duration), not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_one_contender_wins_and_the_other_takes_over_after_a_kill() {
    let duration = Duration::from_secs(3);
    let nats = NatsLeases::new(duration).await;
    let a = nats.contender("node-a").await;
    let b = nats.contender("node-b").await;
    let (la, lb) = (a.leadership(), b.leadership());
    let deadline = Instant::now() + Duration::from_secs(3);
    while !(la.is_leader() || lb.is_leader()) {
        assert!(Instant::now() < deadline, "nobody elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (winner, loser, loser_leadership, winner_name, loser_name) = if la.is_leader() {
        (a, b, lb, "node-a", "node-b")
    } else {
        (b, a, la, "node-b", "node-a")
    };
    assert_eq!(nats.holder().await.as_deref(), Some(winner_name));
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(winner.leadership().is_leader(), "winner lost the key");
        assert!(!loser_leadership.is_leader(), "two leaders at once");
    }

    drop(winner);
    let killed = Instant::now();
    until(
        &loser_leadership,
        true,
        duration * 3,
        "takeover after a kill",
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "took over a live key after {took:?}"
    );
    assert!(
        took <= duration + Duration::from_millis(2500),
        "takeover took {took:?}"
    );
    assert_eq!(nats.holder().await.as_deref(), Some(loser_name));
    loser.step_down().await;
    nats.delete().await;
}

/// A clean shutdown deletes the key (with its revision): the follower
/// creates it at its next retry, long before the 9 s expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_clean_shutdown_releases_the_key_at_once() {
    let duration = Duration::from_secs(9);
    let nats = NatsLeases::new(duration).await;
    let a = nats.contender("node-a").await;
    let la = a.leadership();
    until(&la, true, Duration::from_secs(3), "first contender elected").await;
    let b = nats.contender("node-b").await;
    let lb = b.leadership();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!lb.is_leader());

    a.step_down().await;
    assert!(!la.is_leader());
    assert_eq!(nats.holder().await, None, "key not released");
    let took = until(&lb, true, Duration::from_secs(4), "takeover after release").await;
    assert!(took < duration / 2, "takeover took {took:?}");
    assert_eq!(nats.holder().await.as_deref(), Some("node-b"));
    b.step_down().await;
    nats.delete().await;
}

/// Another writer puts the key behind the leader's back: the leader's
/// renewal by revision fails, it stops acting as leader and leaves the
/// other writer's value in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_conflicting_write_means_someone_else_won() {
    let duration = Duration::from_secs(3);
    let nats = NatsLeases::new(duration).await;
    let a = nats.contender("node-a").await;
    let la = a.leadership();
    until(&la, true, Duration::from_secs(3), "elected").await;

    nats.store()
        .await
        .put(LEASE, "intruder".into())
        .await
        .unwrap();
    until(
        &la,
        false,
        Duration::from_secs(3),
        "deposed by the conflict",
    )
    .await;
    assert_eq!(nats.holder().await.as_deref(), Some("intruder"));

    // The intruder never renews: the server expires its key.
    let took = until(&la, true, duration * 3, "key taken back").await;
    assert!(
        took >= Duration::from_millis(1500),
        "took back a live key after {took:?}"
    );
    a.step_down().await;
    nats.delete().await;
}
