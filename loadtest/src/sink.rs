//! The receiving end of the `outbound` scenario: a small SMTP server that
//! accepts every message, notes when each message of this run arrived (by
//! the marker in its headers, see [`crate::message::marker`]), and can
//! answer slowly.
//!
//! Postfix's `smtp-sink` counts messages but says nothing about when each
//! one arrived, so it cannot give queue-to-sink latency; this sink does the
//! same job and keeps the arrival time of every message.
//!
//! A slow sink waits `delay` before each response it sends. Commands that
//! arrive together (a PIPELINING client's MAIL, RCPT and DATA, RFC 2920)
//! are answered together after one wait: the delay is per round trip, like
//! a distant or busy server, so a client that pipelines or reuses its
//! connections gains what it would gain on the Internet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::message::find_marker;
use crate::scenario::Arrivals;

/// Longest command line accepted; RFC 5321 §4.5.3.1.4 allows 512 octets,
/// extensions a little more.
const MAX_COMMAND: usize = 4096;
/// Longest line of message content (RFC 5321 §4.5.3.1.6: 1000 octets);
/// longer lines are accepted but only this much is kept for the marker.
const MAX_DATA_LINE: usize = 64 * 1024;
/// Header bytes kept per message to find the marker in.
const MAX_HEADER: usize = 16 * 1024;

/// What the sink counted, for the report.
#[derive(Debug, Default, Serialize, Clone)]
pub struct SinkStats {
    pub connections: u64,
    /// Most connections open at the same time: how many deliveries the
    /// server under test ran in parallel.
    pub peak_connections: u64,
    /// Messages accepted (final dot answered with 250), this run's or not.
    pub messages: u64,
    /// Messages without this run's marker (retries of an earlier run).
    pub foreign: u64,
    /// Messages of this run received more than once (at-least-once
    /// delivery retried after an answer that did not get through).
    pub duplicates: u64,
    /// Sessions that ended on a protocol error or a broken connection.
    pub broken_sessions: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
    messages: AtomicU64,
    foreign: AtomicU64,
    duplicates: AtomicU64,
    broken: AtomicU64,
}

/// A running sink; dropping it stops accepting (open sessions end with the
/// process).
pub struct Sink {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Sink {
    /// Listens on `addr` and serves every connection until dropped.
    pub async fn start(
        addr: SocketAddr,
        delay: Duration,
        run_id: String,
        arrivals: Arrivals,
    ) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            delay,
            run_id,
            arrivals,
            counters: counters.clone(),
        });
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors and the like: back off, go on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let c = &shared.counters;
                    c.connections.fetch_add(1, Ordering::Relaxed);
                    let open = c.open.fetch_add(1, Ordering::Relaxed) + 1;
                    c.peak.fetch_max(open, Ordering::Relaxed);
                    if session(stream, &shared).await.is_err() {
                        c.broken.fetch_add(1, Ordering::Relaxed);
                    }
                    c.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Sink {
            addr,
            counters,
            accept,
        })
    }

    pub fn stats(&self) -> SinkStats {
        let c = &self.counters;
        SinkStats {
            connections: c.connections.load(Ordering::Relaxed),
            peak_connections: c.peak.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            foreign: c.foreign.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            broken_sessions: c.broken.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    delay: Duration,
    run_id: String,
    arrivals: Arrivals,
    counters: Arc<Counters>,
}

#[derive(Debug)]
enum SessionEnd {
    Io,
    /// The client sent something this sink will not read on (a line past
    /// the limit in command mode).
    Protocol,
}

impl From<std::io::Error> for SessionEnd {
    fn from(_: std::io::Error) -> Self {
        SessionEnd::Io
    }
}

/// Responses waiting for the next flush, and the messages whose 250 is
/// among them (they count as arrived when it is sent).
#[derive(Default)]
struct Pending {
    out: Vec<u8>,
    accepted: Vec<Option<u64>>,
}

impl Pending {
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }
}

/// Sends what is pending after the sink's delay, then counts the messages
/// whose final 250 went out.
async fn flush(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    pending: &mut Pending,
    shared: &Shared,
) -> std::io::Result<()> {
    if pending.out.is_empty() {
        return Ok(());
    }
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    w.write_all(&pending.out).await?;
    w.flush().await?;
    let now = Instant::now();
    let c = &shared.counters;
    let mut map = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
    for m in pending.accepted.drain(..) {
        c.messages.fetch_add(1, Ordering::Relaxed);
        match m {
            Some(index) => {
                if map.insert_first(index, now) {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                c.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    pending.out.clear();
    Ok(())
}

trait InsertFirst {
    /// Keeps the first arrival; true when `index` had arrived before.
    fn insert_first(&mut self, index: u64, at: Instant) -> bool;
}

impl InsertFirst for HashMap<u64, Instant> {
    fn insert_first(&mut self, index: u64, at: Instant) -> bool {
        let mut seen = true;
        self.entry(index).or_insert_with(|| {
            seen = false;
            at
        });
        seen
    }
}

/// One SMTP session (RFC 5321), as a plain loop over command lines.
async fn session(stream: TcpStream, shared: &Shared) -> Result<(), SessionEnd> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut pending = Pending::default();
    pending.reply("220 sink.loadtest.invalid ESMTP mailfleet-loadtest sink\r\n");
    flush(&mut w, &mut pending, shared).await?;
    let mut line = Vec::with_capacity(256);
    let mut rcpts = 0usize;
    let mut in_mail = false;
    loop {
        line.clear();
        if !read_line(&mut r, &mut line, MAX_COMMAND).await? {
            return Ok(()); // closed by the client
        }
        if line.len() > MAX_COMMAND {
            pending.reply("500 5.5.2 line too long\r\n");
            flush(&mut w, &mut pending, shared).await?;
            return Err(SessionEnd::Protocol);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        let verb = text
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                (in_mail, rcpts) = (false, 0);
                pending.reply(
                    "250-sink.loadtest.invalid\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250 SIZE 0\r\n",
                );
            }
            "HELO" => {
                (in_mail, rcpts) = (false, 0);
                pending.reply("250 sink.loadtest.invalid\r\n");
            }
            "MAIL" if in_mail => pending.reply("503 5.5.1 nested MAIL\r\n"),
            "MAIL" => {
                in_mail = true;
                pending.reply("250 2.1.0 ok\r\n");
            }
            "RCPT" if !in_mail => pending.reply("503 5.5.1 need MAIL\r\n"),
            "RCPT" => {
                rcpts += 1;
                pending.reply("250 2.1.5 ok\r\n");
            }
            // RFC 2920 §3.1: DATA after pipelined RCPTs that all failed gets
            // 554; here none fail, so only DATA without any RCPT is refused.
            "DATA" if rcpts == 0 => pending.reply("503 5.5.1 need RCPT\r\n"),
            "DATA" => {
                pending.reply("354 end with <CRLF>.<CRLF>\r\n");
                // The client waits for 354 before it sends the content.
                flush(&mut w, &mut pending, shared).await?;
                let index = read_content(&mut r, &shared.run_id).await?;
                pending.reply("250 2.0.0 accepted\r\n");
                pending.accepted.push(index);
                (in_mail, rcpts) = (false, 0);
            }
            "RSET" => {
                (in_mail, rcpts) = (false, 0);
                pending.reply("250 2.0.0 ok\r\n");
            }
            "NOOP" => pending.reply("250 2.0.0 ok\r\n"),
            "QUIT" => {
                pending.reply("221 2.0.0 bye\r\n");
                flush(&mut w, &mut pending, shared).await?;
                return Ok(());
            }
            _ => pending.reply("502 5.5.2 not served by this sink\r\n"),
        }
        // Answer once nothing more is waiting to be read: pipelined
        // commands get their replies together, after one delay.
        if r.buffer().is_empty() {
            flush(&mut w, &mut pending, shared).await?;
        }
    }
}

/// Reads the message content up to the lone dot; returns the index in this
/// run's marker, if the headers carry one.
async fn read_content<R: AsyncBufRead + Unpin>(
    r: &mut R,
    run_id: &str,
) -> Result<Option<u64>, SessionEnd> {
    let mut header = Vec::with_capacity(2048);
    let mut in_header = true;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if !read_line(r, &mut line, MAX_DATA_LINE).await? {
            return Err(SessionEnd::Io); // closed in the middle of a message
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(find_marker(&header, run_id));
        }
        if in_header {
            if line == b"\r\n" || line == b"\n" {
                in_header = false;
            } else if header.len() + line.len() <= MAX_HEADER {
                header.extend_from_slice(&line);
            }
        }
    }
}

/// Reads one line (up to and including LF) into `buf`, keeping at most
/// `max + 1` bytes of it and dropping the rest, so a client cannot make the
/// sink grow; a kept length over `max` tells the caller the line was too
/// long. `Ok(false)` at end of stream before any byte.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<bool> {
    let mut any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(any);
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (max + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// Waits until `sink` has seen every one of `expected` indices or `until`.
pub async fn wait_for(arrivals: &Arrivals, expected: &[u64], until: Instant) -> usize {
    loop {
        let seen = {
            let map = arrivals.lock().unwrap_or_else(|p| p.into_inner());
            expected.iter().filter(|i| map.contains_key(i)).count()
        };
        if seen >= expected.len() || Instant::now() >= until {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Arrivals` map a sink fills, fresh.
pub fn arrivals() -> Arrivals {
    Arc::new(Mutex::new(HashMap::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn reply(c: &mut BufReader<TcpStream>) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            c.read_line(&mut line).await.unwrap();
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return out;
            }
        }
    }

    /// A pipelined transaction from a real TCP client: the replies come in
    /// order, the marked message counts as arrived, a foreign one as
    /// foreign.
    #[tokio::test]
    async fn counts_marked_messages_over_a_pipelined_session() {
        let arrivals = arrivals();
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
            "run1".into(),
            arrivals.clone(),
        )
        .await
        .unwrap();
        let mut c = BufReader::new(TcpStream::connect(sink.addr).await.unwrap());
        assert!(reply(&mut c).await.starts_with("220 "));
        c.write_all(b"EHLO me\r\n").await.unwrap();
        assert!(reply(&mut c).await.contains("250-PIPELINING"));
        c.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n")
            .await
            .unwrap();
        assert!(reply(&mut c).await.starts_with("250 2.1.0"));
        assert!(reply(&mut c).await.starts_with("250 2.1.5"));
        assert!(reply(&mut c).await.starts_with("354 "));
        let body = message::build("run1", 7, "a@b", "x@remote.test", 2048);
        c.write_all(&body).await.unwrap();
        assert!(reply(&mut c).await.starts_with("250 2.0.0"));
        // Another run's message: counted, not matched.
        c.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            reply(&mut c).await;
        }
        c.write_all(&message::build("run0", 7, "a@b", "x@remote.test", 100))
            .await
            .unwrap();
        assert!(reply(&mut c).await.starts_with("250 "));
        c.write_all(b"QUIT\r\n").await.unwrap();
        assert!(reply(&mut c).await.starts_with("221 "));
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        let expected = [7];
        assert_eq!(
            wait_for(
                &arrivals,
                &expected,
                Instant::now() + Duration::from_secs(5)
            )
            .await,
            1
        );
        let s = sink.stats();
        assert_eq!((s.messages, s.foreign, s.duplicates), (2, 1, 0), "{s:?}");
        assert_eq!(s.broken_sessions, 0);
    }

    /// The slow sink waits once per round trip: three pipelined commands
    /// cost one delay, not three.
    #[tokio::test]
    async fn delay_is_per_round_trip() {
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_millis(150),
            "r".into(),
            arrivals(),
        )
        .await
        .unwrap();
        let mut c = BufReader::new(TcpStream::connect(sink.addr).await.unwrap());
        reply(&mut c).await;
        c.write_all(b"EHLO me\r\n").await.unwrap();
        reply(&mut c).await;
        let t = Instant::now();
        c.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nNOOP\r\n")
            .await
            .unwrap();
        for _ in 0..3 {
            reply(&mut c).await;
        }
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(290),
            "{took:?}"
        );
    }

    /// A client cannot make the sink buffer an endless line, and garbage
    /// gets a reply, not a panic.
    #[tokio::test]
    async fn long_lines_and_garbage_end_cleanly() {
        let sink = Sink::start(
            "127.0.0.1:0".parse().unwrap(),
            Duration::ZERO,
            "r".into(),
            arrivals(),
        )
        .await
        .unwrap();
        let mut c = BufReader::new(TcpStream::connect(sink.addr).await.unwrap());
        reply(&mut c).await;
        c.write_all(b"\xff\xfe BOGUS\r\nDATA\r\n").await.unwrap();
        assert!(reply(&mut c).await.starts_with("502 "));
        assert!(reply(&mut c).await.starts_with("503 "));
        c.write_all(&vec![b'A'; 100_000]).await.unwrap();
        c.write_all(b"\r\n").await.unwrap();
        assert!(reply(&mut c).await.starts_with("500 "));
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(sink.stats().broken_sessions, 1);
    }
}
