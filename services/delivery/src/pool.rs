//! Outbound connections per destination domain, each holding one slot of
//! `delivery.max_connections_per_domain` ([`crate::limits`]) for as long as
//! it is open, idle or not.
//!
//! An attempt to a domain gets a [`Lane`]: an idle session to one of the
//! domain's MX hosts when this process has one (reused after RSET), else a
//! fresh slot and no connection yet. The lane carries at most one
//! connection at a time, so one slot is one open connection. After the
//! attempt the lane comes back ([`Connections::checkin`]): a session still
//! talking waits idle for the next message to the domain, keeping its slot;
//! otherwise the slot is given back.
//!
//! Idle sessions are closed (QUIT) and their slots given back after
//! [`POOL_IDLE`], when a worker anywhere is waiting for a slot of their
//! domain, and on shutdown, by the task of [`Connections::run_sweeper`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailfleet_runtime::CancellationToken;

use crate::client::Session;
use crate::limits::{Busy, Limits, Permit};

/// How long an idle session is kept (well under the 5 minutes a server
/// waits for the next command, RFC 5321 §4.5.3.2.7).
pub const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle sessions kept per domain.
const POOL_PER_DOMAIN: usize = 4;
/// How often idle sessions are checked for age and for waiting workers.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// How long a QUIT may take when an idle session is closed.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// An idle session and the slot it holds.
struct Idle {
    addr: SocketAddr,
    host: String,
    session: Session,
    permit: Permit,
    since: Instant,
}

/// A session to one MX address of the lane's domain.
pub struct Open {
    pub addr: SocketAddr,
    pub host: String,
    pub session: Session,
}

/// One connection slot to a domain for one attempt, with the session it
/// may already have open.
pub struct Lane {
    permit: Permit,
    /// The open session, if any; taken out while a transaction runs on it,
    /// so a transaction cut in the middle leaves none behind.
    pub open: Option<Open>,
}

impl Lane {
    /// The session to `addr` when the lane has one; a session to another
    /// address is closed first, since the lane's slot is for one
    /// connection at a time.
    pub async fn session_for(&mut self, addr: SocketAddr, host: &str) -> Option<Session> {
        let open = self.open.take()?;
        if open.addr == addr && open.host == host {
            return Some(open.session);
        }
        open.session.quit(QUIT_TIMEOUT).await;
        None
    }
}

/// The idle sessions of a process, shared by its workers.
#[derive(Clone)]
pub struct Connections {
    idle: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
    limits: Limits,
}

impl Connections {
    pub fn new(limits: Limits) -> Connections {
        Connections {
            idle: Arc::default(),
            limits,
        }
    }

    /// A lane to `domain`: an idle session of this process when there is
    /// one, else a free slot. [`Busy::Connections`] when the domain has no
    /// slot free; the processes holding idle sessions to it are asked to
    /// close them, so a later try finds one.
    pub async fn checkout(&self, domain: &str) -> Result<Lane, Busy> {
        while let Some(idle) = self.take_idle(domain) {
            if self.limits.renew(&idle.permit).await {
                return Ok(Lane {
                    permit: idle.permit,
                    open: Some(Open {
                        addr: idle.addr,
                        host: idle.host,
                        session: idle.session,
                    }),
                });
            }
            // Idle past its slot's lease: the slot may be someone else's.
            tracing::debug!(domain, "idle session lost its slot, closing it");
            idle.session.quit(QUIT_TIMEOUT).await;
        }
        match self.limits.try_acquire_slot(domain).await {
            Ok(permit) => Ok(Lane { permit, open: None }),
            Err(busy) => {
                self.limits.want(domain).await;
                Err(busy)
            }
        }
    }

    /// The lane after its attempt: its session waits for the next message
    /// to the domain (keeping the slot), or the slot is given back.
    pub async fn checkin(&self, domain: &str, lane: Lane) {
        let Lane { permit, open } = lane;
        let Some(open) = open else {
            self.limits.release(permit).await;
            return;
        };
        // Renewed before it is kept, so the slot outlives the idle time.
        let left = if self.limits.renew(&permit).await {
            self.put_idle(domain, open, permit)
        } else {
            Some((open, permit))
        };
        if let Some((open, permit)) = left {
            open.session.quit(QUIT_TIMEOUT).await;
            self.limits.release(permit).await;
        }
    }

    fn take_idle(&self, domain: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        let sessions = idle.get_mut(domain)?;
        // Most recently used first: the least likely to have been dropped
        // by the server.
        let session = sessions.pop();
        if sessions.is_empty() {
            idle.remove(domain);
        }
        session
    }

    /// Keeps an idle session unless the domain has enough already; gives
    /// back what it did not keep.
    fn put_idle(&self, domain: &str, open: Open, permit: Permit) -> Option<(Open, Permit)> {
        let Ok(mut idle) = self.idle.lock() else {
            return Some((open, permit));
        };
        let sessions = idle.entry(domain.to_owned()).or_default();
        if sessions.len() >= POOL_PER_DOMAIN {
            return Some((open, permit));
        }
        sessions.push(Idle {
            addr: open.addr,
            host: open.host,
            session: open.session,
            permit,
            since: Instant::now(),
        });
        None
    }

    /// Idle sessions this process holds, by domain (for tests and logs).
    pub fn idle_count(&self, domain: &str) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.get(domain).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Closes the idle sessions that are too old or whose domain a worker
    /// waits for, until `shutdown`; then closes every one.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            self.sweep().await;
        }
        let all: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => idle.drain().flat_map(|(_, v)| v).collect(),
            Err(_) => Vec::new(),
        };
        self.close(all).await;
    }

    /// One pass: see [`Connections::run_sweeper`].
    pub async fn sweep(&self) {
        let domains: Vec<String> = match self.idle.lock() {
            Ok(idle) => idle.keys().cloned().collect(),
            Err(_) => return,
        };
        let wanted = self.limits.wanted(&domains).await;
        let mut closing = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            for (domain, wanted) in domains.iter().zip(wanted) {
                let Some(sessions) = idle.get_mut(domain) else {
                    continue;
                };
                let (keep, close): (Vec<Idle>, Vec<Idle>) = sessions
                    .drain(..)
                    .partition(|s| !wanted && s.since.elapsed() < POOL_IDLE);
                if wanted && !close.is_empty() {
                    tracing::debug!(
                        domain,
                        sessions = close.len(),
                        "closing idle sessions: a worker waits for a slot"
                    );
                }
                *sessions = keep;
                closing.extend(close);
                if sessions.is_empty() {
                    idle.remove(domain);
                }
            }
        }
        self.close(closing).await;
    }

    async fn close(&self, sessions: Vec<Idle>) {
        for idle in sessions {
            idle.session.quit(QUIT_TIMEOUT).await;
            self.limits.release(idle.permit).await;
        }
    }
}
