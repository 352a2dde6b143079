//! The scenarios beyond plain SMTP sending: `e2e` (send, then watch the
//! mailboxes over IMAP until every accepted message is readable), `imap`
//! (a mix of mailbox operations) and `idle` (many held IDLE sessions and
//! the server memory they cost).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::imap::{self, Client, Mix, Op};
use crate::message::{find_marker, splitmix64};
use crate::net::ClientError;
use crate::rss::{self, Memory};
use crate::smtp::Accepted;
use crate::stats::{Errors, Latency, LatencySummary, rate};

/// When each message of this run became visible, by index.
pub type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// How many recent messages are re-listed (UIDs only) each time the mailbox
/// grows, to catch messages that became visible at a lower position than
/// ones already seen (see [`WatchStats::reordered`]).
const RELIST_WINDOW: u32 = 256;

/// What the watchers noticed about the server beside arrival times.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct WatchStats {
    /// Times a periodic SELECT found messages IDLE or NOOP had not reported.
    pub noop_misses: u64,
    /// Messages that appeared with a UID below one already seen in the same
    /// session (RFC 9051 §2.3.1.1 wants UIDs assigned in ascending order of
    /// appearance; a watcher reading only new sequence numbers would miss
    /// them).
    pub reordered: u64,
}

/// Watches one mailbox: in IDLE (`use_idle`, up to `poll` at a time) or
/// with a NOOP every `poll` (which makes the server report new EXISTS), and
/// whenever it grows, lists the UIDs of the recent
/// messages and fetches the headers of those not seen yet, noting when each
/// message of this run showed up. Counts itself in `ready` once the
/// mailbox is selected (sending must not start before). Ends when `stop`
/// is set.
#[allow(clippy::too_many_arguments)]
pub async fn watch(
    addr: SocketAddr,
    user: String,
    password: String,
    run_id: String,
    poll: Duration,
    use_idle: bool,
    timeout: Duration,
    arrivals: Arrivals,
    ready: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<WatchStats, ClientError> {
    let mut c = Client::connect(addr, timeout).await?;
    c.login(&user, &password).await?;
    let mut seen = c.select("INBOX").await?;
    let mut stats = WatchStats::default();
    // Messages already there are not this run's (its run id is new): only
    // their UIDs are noted.
    let mut known: HashSet<u32> = HashSet::new();
    let mut max_uid = 0;
    if seen > 0 {
        let lo = seen.saturating_sub(RELIST_WINDOW).max(1);
        for r in c.command(&format!("FETCH {lo}:{seen} (UID)")).await? {
            if let Some(uid) = imap::parse_fetch_uid(&r) {
                known.insert(uid);
                max_uid = max_uid.max(uid);
            }
        }
    }
    let mut scanned = seen;
    let mut last_select = Instant::now();
    ready.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if seen > scanned {
            let listed = seen;
            let lo = scanned.saturating_sub(RELIST_WINDOW).max(1);
            let mut fresh = Vec::new();
            for r in c.command(&format!("FETCH {lo}:{listed} (UID)")).await? {
                if let Some(uid) = imap::parse_fetch_uid(&r) {
                    if known.insert(uid) {
                        fresh.push(uid);
                    }
                } else if let Some(n) = imap::parse_exists(&r) {
                    // The server may report new messages with any response
                    // (RFC 9051 §7.4.1), and does not report them twice.
                    seen = n;
                }
            }
            if !fresh.is_empty() {
                stats.reordered += fresh.iter().filter(|&&u| u < max_uid).count() as u64;
                max_uid = fresh.iter().copied().fold(max_uid, u32::max);
                let set: Vec<String> = fresh.iter().map(u32::to_string).collect();
                let untagged = c
                    .command(&format!("UID FETCH {} (BODY.PEEK[HEADER])", set.join(",")))
                    .await?;
                let now = Instant::now();
                let mut map = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                for r in &untagged {
                    if let Some(i) = find_marker(r, &run_id) {
                        map.entry(i).or_insert(now);
                    } else if let Some(n) = imap::parse_exists(r) {
                        seen = n;
                    }
                }
            }
            scanned = listed;
            continue;
        }
        if use_idle {
            // RFC 2177: the server pushes EXISTS as soon as a message is
            // there; leave IDLE on the first one, or after `poll` anyway so
            // `stop` and the SELECT below are looked at.
            let tag = c.idle_start().await?;
            let until = Instant::now() + poll;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match c.idle_wait(left).await? {
                    Some(r) => {
                        if let Some(n) = imap::parse_exists(&r) {
                            seen = n;
                            break;
                        }
                    }
                    None => break,
                }
            }
            for r in c.idle_done(&tag).await? {
                if let Some(n) = imap::parse_exists(&r) {
                    seen = n;
                }
            }
        } else {
            tokio::time::sleep(poll).await;
            for r in c.command("NOOP").await? {
                if let Some(n) = imap::parse_exists(&r) {
                    seen = n;
                }
            }
        }
        // Once a second, SELECT again: a server that failed to report a new
        // message in IDLE or on NOOP must not stall the run, but it is
        // counted.
        if last_select.elapsed() >= Duration::from_secs(1) {
            last_select = Instant::now();
            let n = c.select("INBOX").await?;
            if n > seen {
                stats.noop_misses += 1;
                seen = n;
            }
        }
    }
    c.logout().await;
    Ok(stats)
}

#[derive(Debug, Serialize)]
pub struct Delivery {
    pub delivered: u64,
    pub missing: u64,
    /// The first missing message indices (Subject `loadtest RUN #INDEX`).
    pub missing_sample: Vec<u64>,
    /// Accepted by SMTP → visible over IMAP.
    pub delivery_latency: LatencySummary,
    /// Send due (scheduled or started) → visible over IMAP.
    pub end_to_end_latency: LatencySummary,
    /// Delivered messages per second from the first send to the last arrival.
    pub end_to_end_per_s: f64,
    pub elapsed_s: f64,
}

/// Matches what SMTP accepted with what IMAP saw.
pub fn delivery(accepted: &[Accepted], arrivals: &HashMap<u64, Instant>, t0: Instant) -> Delivery {
    let mut dl = Latency::new();
    let mut e2e = Latency::new();
    let mut last = t0;
    let mut missing = 0;
    let mut missing_sample = Vec::new();
    for a in accepted {
        match arrivals.get(&a.index) {
            Some(&at) => {
                dl.record(at.saturating_duration_since(a.accepted));
                e2e.record(at.saturating_duration_since(a.start));
                last = last.max(at);
            }
            None => {
                missing += 1;
                if missing_sample.len() < 20 {
                    missing_sample.push(a.index);
                }
            }
        }
    }
    let delivered = dl.count();
    let elapsed = last - t0;
    Delivery {
        delivered,
        missing,
        missing_sample,
        delivery_latency: dl.summary(),
        end_to_end_latency: e2e.summary(),
        end_to_end_per_s: rate(delivered, elapsed),
        elapsed_s: elapsed.as_secs_f64(),
    }
}

#[derive(Debug, Clone)]
pub struct ImapPlan {
    pub addr: SocketAddr,
    pub sessions: usize,
    pub users: Vec<String>,
    pub password: String,
    pub mix: Mix,
    pub duration: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct ImapReport {
    pub sessions: usize,
    pub ops: u64,
    pub ops_per_s: f64,
    pub elapsed_s: f64,
    pub login: LatencySummary,
    pub latency: LatencySummary,
    pub by_op: BTreeMap<String, LatencySummary>,
    pub errors: Errors,
}

struct ImapOutcome {
    login: Latency,
    all: Latency,
    by_op: BTreeMap<Op, Latency>,
    errors: Errors,
}

/// Runs the IMAP mix: each session logs in (user `i % users`), selects
/// INBOX, then runs operations picked from the mix back to back until the
/// duration is over; a broken connection is reopened.
pub async fn imap(plan: Arc<ImapPlan>, done: Arc<AtomicU64>, failed: Arc<AtomicU64>) -> ImapReport {
    let t0 = Instant::now();
    let deadline = t0 + plan.duration;
    let mut tasks = Vec::new();
    for s in 0..plan.sessions.max(1) {
        let (plan, done, failed) = (plan.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = ImapOutcome {
                login: Latency::new(),
                all: Latency::new(),
                by_op: BTreeMap::new(),
                errors: Errors::default(),
            };
            let user = plan.users[s % plan.users.len()].clone();
            let mut k = 0u64;
            while Instant::now() < deadline {
                if let Err(e) =
                    imap_session(&plan, &user, s as u64, &mut k, deadline, &mut out, &done).await
                {
                    out.errors.add(&e.kind());
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            out
        }));
    }
    let mut login = Latency::new();
    let mut all = Latency::new();
    let mut by_op: BTreeMap<Op, Latency> = BTreeMap::new();
    let mut errors = Errors::default();
    for t in tasks {
        match t.await {
            Ok(o) => {
                login.merge(&o.login);
                all.merge(&o.all);
                errors.merge(&o.errors);
                for (op, l) in o.by_op {
                    by_op.entry(op).or_default().merge(&l);
                }
            }
            Err(_) => errors.add("worker-panic"),
        }
    }
    let elapsed = t0.elapsed();
    ImapReport {
        sessions: plan.sessions,
        ops: all.count(),
        ops_per_s: rate(all.count(), elapsed),
        elapsed_s: elapsed.as_secs_f64(),
        login: login.summary(),
        latency: all.summary(),
        by_op: by_op
            .into_iter()
            .map(|(op, l)| (op.name().to_owned(), l.summary()))
            .collect(),
        errors,
    }
}

async fn imap_session(
    plan: &ImapPlan,
    user: &str,
    session: u64,
    k: &mut u64,
    deadline: Instant,
    out: &mut ImapOutcome,
    done: &AtomicU64,
) -> Result<(), ClientError> {
    let start = Instant::now();
    let mut c = Client::connect(plan.addr, plan.timeout).await?;
    c.login(user, &plan.password).await?;
    let mut exists = c.select("INBOX").await?;
    out.login.record(start.elapsed());
    while Instant::now() < deadline {
        *k += 1;
        let r = splitmix64(session << 32 ^ *k);
        let op = plan.mix.pick(r);
        let start = Instant::now();
        let result = match op.command(exists, splitmix64(r)) {
            Some(cmd) => c.command(&cmd).await.map(|untagged| {
                if let Some(n) = untagged.iter().find_map(|u| imap::parse_exists(u)) {
                    exists = n;
                }
            }),
            None if op == Op::Idle => {
                async {
                    let tag = c.idle_start().await?;
                    c.idle_done(&tag).await.map(|_| ())
                }
                .await
            }
            // A fetch in an empty mailbox: nothing to measure.
            None => continue,
        };
        match result {
            Ok(()) => {
                let d = start.elapsed();
                out.all.record(d);
                out.by_op.entry(op).or_default().record(d);
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_reply() => out.errors.add(&format!("{}:{}", op.name(), e.kind())),
            Err(e) => return Err(e),
        }
    }
    c.logout().await;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct IdlePlan {
    pub addr: SocketAddr,
    pub connections: usize,
    pub users: Vec<String>,
    pub password: String,
    pub connect_concurrency: usize,
    pub hold: Duration,
    pub timeout: Duration,
    pub pids: Vec<u32>,
    pub children: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub requested: usize,
    pub established: u64,
    pub setup_s: f64,
    /// Sessions still idling (no error, no BYE) at the end of the hold.
    pub alive_after_hold: u64,
    pub memory_before: Memory,
    pub memory_held: Memory,
    /// One second after every session was closed.
    pub memory_after_close: Memory,
    pub rss_per_connection_kb: f64,
    pub pss_per_connection_kb: f64,
    pub errors: Errors,
}

/// Opens `connections` sessions (LOGIN, SELECT INBOX, IDLE), at most
/// `connect_concurrency` being set up at once, holds them for `hold`, and
/// measures the server's memory before and while they are held.
pub async fn idle(
    plan: Arc<IdlePlan>,
    established: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> IdleReport {
    let before = rss::measure(&plan.pids, plan.children);
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(plan.connect_concurrency.max(1)));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let alive = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..plan.connections {
        let (plan, gate, est, failed, alive) = (
            plan.clone(),
            gate.clone(),
            established.clone(),
            failed.clone(),
            alive.clone(),
        );
        let mut release = release_rx.clone();
        tasks.push(tokio::spawn(async move {
            let user = &plan.users[i % plan.users.len()];
            let setup = async {
                let _permit = gate.acquire().await;
                let mut c = Client::connect(plan.addr, plan.timeout).await?;
                c.login(user, &plan.password).await?;
                c.select("INBOX").await?;
                let tag = c.idle_start().await?;
                Ok::<_, ClientError>((c, tag))
            };
            let (mut c, tag) = match setup.await {
                Ok(x) => x,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Some(e.kind());
                }
            };
            est.fetch_add(1, Ordering::Relaxed);
            alive.fetch_add(1, Ordering::Relaxed);
            // Hold: read whatever the server pushes until released. A BYE
            // or a closed stream ends the session early, and counts.
            let mut error = None;
            loop {
                tokio::select! {
                    _ = release.changed() => break,
                    r = c.idle_wait(Duration::from_secs(3600)) => match r {
                        Ok(Some(line)) if line.starts_with(b"* BYE") => { error = Some("bye".to_owned()); break }
                        Ok(_) => {}
                        Err(e) => { error = Some(e.kind()); break }
                    },
                }
            }
            alive.fetch_sub(1, Ordering::Relaxed);
            if error.is_none() {
                let _ = c.idle_done(&tag).await;
                c.logout().await;
            }
            error
        }));
    }
    // Setup is over when every session is idling or has failed.
    while established.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
        < plan.connections as u64
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let setup = t0.elapsed();
    tokio::time::sleep(plan.hold).await;
    let held = rss::measure(&plan.pids, plan.children);
    let alive_after_hold = alive.load(Ordering::Relaxed);
    let _ = release_tx.send(true);
    let mut errors = Errors::default();
    for t in tasks {
        match t.await {
            Ok(Some(kind)) => errors.add(&kind),
            Ok(None) => {}
            Err(_) => errors.add("worker-panic"),
        }
    }
    // Memory once every session is gone: what the server keeps after a
    // burst of sessions (allocator caches, per-login buffers) shows here,
    // apart from what the held sessions themselves cost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_close = rss::measure(&plan.pids, plan.children);
    let n = established.load(Ordering::Relaxed);
    let per = |after: u64, before: u64| {
        if n == 0 {
            0.0
        } else {
            (after as f64 - before as f64) / n as f64
        }
    };
    IdleReport {
        requested: plan.connections,
        established: n,
        setup_s: setup.as_secs_f64(),
        alive_after_hold,
        memory_before: before,
        memory_held: held,
        memory_after_close: after_close,
        rss_per_connection_kb: per(held.rss_kb, before.rss_kb),
        pss_per_connection_kb: per(held.pss_kb, before.pss_kb),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivery_matches_accepted_with_arrivals() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let accepted: Vec<Accepted> = (0..4)
            .map(|i| Accepted {
                index: i,
                start: t0 + ms(i * 10),
                accepted: t0 + ms(i * 10 + 5),
            })
            .collect();
        let mut arrivals = HashMap::new();
        arrivals.insert(0, t0 + ms(25));
        arrivals.insert(1, t0 + ms(35));
        arrivals.insert(2, t0 + ms(1000));
        arrivals.insert(99, t0 + ms(5000)); // not accepted by this run: ignored
        let d = delivery(&accepted, &arrivals, t0);
        assert_eq!((d.delivered, d.missing), (3, 1));
        assert!((d.delivery_latency.p50_ms - 20.0).abs() < 0.1, "{d:?}");
        assert!((d.end_to_end_latency.max_ms - 980.0).abs() < 1.0, "{d:?}");
        assert!((d.end_to_end_per_s - 3.0).abs() < 0.01, "{d:?}");
    }
}
