//! In-test implementations of the session's traits: a directory with a
//! fixed set of users, an acceptor that records messages (and fails on
//! marker words), and plain counters.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mailfleet_runtime::backend::{Counters, Result as BackendResult};
use mailfleet_smtp_edge::{
    AcceptError, Acceptor, AuthError, AuthOutcome, Authenticator, Envelope, Lookup, LookupError,
    RecipientLookup, Services,
};

/// `example.org` is local with users alice, bob and postmaster,
/// `ali@example.org` an alias of alice, `team@example.org` of alice and bob; `down@example.org` makes the
/// directory fail; other domains are remote. Passwords: alice `secret`,
/// bob `hunter2`; user `down@example.org` makes AUTH fail.
pub struct TestDirectory;

#[async_trait]
impl RecipientLookup for TestDirectory {
    async fn lookup(&self, address: &str) -> Result<Lookup, LookupError> {
        let address = address.to_ascii_lowercase();
        if address == "postmaster" {
            return Ok(Lookup::Local {
                accounts: vec!["postmaster@example.org".into()],
            });
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Ok(Lookup::Remote);
        };
        if domain != "example.org" {
            return Ok(Lookup::Remote);
        }
        match local {
            "alice" | "bob" | "postmaster" => Ok(Lookup::Local {
                accounts: vec![format!("{local}@example.org")],
            }),
            "ali" => Ok(Lookup::Local {
                accounts: vec!["alice@example.org".into()],
            }),
            "team" => Ok(Lookup::Local {
                accounts: vec!["alice@example.org".into(), "bob@example.org".into()],
            }),
            "down" => Err(LookupError("directory unreachable".into())),
            _ => Ok(Lookup::UnknownUser),
        }
    }
}

#[async_trait]
impl Authenticator for TestDirectory {
    async fn authenticate(&self, user: &str, password: &str) -> Result<AuthOutcome, AuthError> {
        match (user.to_ascii_lowercase().as_str(), password) {
            ("alice@example.org", "secret") | ("bob@example.org", "hunter2") => {
                Ok(AuthOutcome::Ok {
                    account: user.to_ascii_lowercase(),
                })
            }
            ("down@example.org", _) => Err(AuthError("directory unreachable".into())),
            _ => Ok(AuthOutcome::Invalid),
        }
    }
}

/// Records accepted messages; queue ids are `Q1`, `Q2`, ... A message
/// containing REJECTME, TEMPFAILME, FILTERDOWN or DISKFULL fails that way.
#[derive(Default)]
pub struct TestAcceptor {
    pub accepted: Mutex<Vec<(Envelope, Vec<u8>)>>,
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[async_trait]
impl Acceptor for TestAcceptor {
    async fn accept(&self, envelope: &Envelope, message: Vec<u8>) -> Result<String, AcceptError> {
        if contains(&message, "REJECTME") {
            return Err(AcceptError::Rejected {
                code: 554,
                enhanced: "5.7.1".into(),
                reason: "message refused by rule TEST".into(),
            });
        }
        if contains(&message, "TEMPFAILME") {
            return Err(AcceptError::Deferred {
                reason: "greylisted".into(),
            });
        }
        if contains(&message, "FILTERDOWN") {
            return Err(AcceptError::FilterUnavailable("connection refused".into()));
        }
        if contains(&message, "DISKFULL") {
            return Err(AcceptError::Storage("no space left".into()));
        }
        let mut accepted = self.accepted.lock().unwrap();
        accepted.push((envelope.clone(), message));
        Ok(format!("Q{}", accepted.len()))
    }
}

/// Counts hits per key, ignoring the window.
#[derive(Default)]
pub struct TestCounters(Mutex<HashMap<String, u64>>);

#[async_trait]
impl Counters for TestCounters {
    async fn hit(&self, key: &str, _window: Duration) -> BackendResult<u64> {
        let mut map = self.0.lock().unwrap();
        let count = map.entry(key.to_owned()).or_default();
        *count += 1;
        Ok(*count)
    }
}

pub fn services(acceptor: Arc<TestAcceptor>) -> Services {
    Services {
        lookup: Arc::new(TestDirectory),
        auth: Arc::new(TestDirectory),
        acceptor,
        counters: Some(Arc::new(TestCounters::default())),
        tls: None,
        auth_blocklist: Arc::default(),
        connections: Arc::default(),
        session_permits: None,
    }
}

pub const HOSTNAME: &str = "mx.test.example";

pub fn config() -> mailfleet_smtp_edge::SessionConfig {
    mailfleet_smtp_edge::SessionConfig {
        hostname: HOSTNAME.into(),
        ..Default::default()
    }
}
