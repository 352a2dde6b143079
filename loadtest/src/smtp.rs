//! The SMTP client side (RFC 5321, PIPELINING RFC 2920, STARTTLS RFC 3207):
//! just what a load generator needs, replies parsed by a pure function, and
//! the `smtp` scenario's workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::message::{self, SizeMix};
use crate::net::{self, ClientError, Conn};
use crate::stats::{Errors, Latency};

/// One SMTP reply: its code and its text lines joined by `\n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    fn error(self) -> ClientError {
        ClientError::Smtp {
            code: self.code,
            text: self.text,
        }
    }

    /// Whether EHLO's reply lists `keyword` (RFC 5321 §4.1.1.1).
    pub fn has_extension(&self, keyword: &str) -> bool {
        self.text.lines().skip(1).any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }
}

/// RFC 5321 §4.2: `code SP text` ends a reply, `code - text` continues it.
/// Returns the code, whether this is the last line, and the text.
pub fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), ClientError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = || ClientError::Protocol(String::from_utf8_lossy(line).into_owned());
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let code = (u16::from(line[0] - b'0')) * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(bad());
    }
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        Some(_) => return Err(bad()),
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
    Ok((code, last, text))
}

pub async fn read_reply(conn: &mut Conn, timeout: Duration) -> Result<Reply, ClientError> {
    let mut buf = Vec::with_capacity(128);
    let mut text = String::new();
    loop {
        net::read_line(conn, &mut buf, timeout).await?;
        let (code, last, line) = parse_reply_line(&buf)?;
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
        if last {
            return Ok(Reply { code, text });
        }
    }
}

async fn expect(conn: &mut Conn, class: u16, timeout: Duration) -> Result<Reply, ClientError> {
    let reply = read_reply(conn, timeout).await?;
    if reply.class() == class {
        Ok(reply)
    } else {
        Err(reply.error())
    }
}

/// How sessions talk to the server.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub helo: String,
    pub starttls: bool,
    pub pipelining: bool,
    pub timeout: Duration,
}

/// An open SMTP session after EHLO (and STARTTLS, when asked).
pub struct Session {
    conn: Conn,
    pipelining: bool,
    timeout: Duration,
}

impl Session {
    pub async fn open(addr: SocketAddr, opts: &SessionOptions) -> Result<Session, ClientError> {
        let t = opts.timeout;
        let mut conn = net::connect(addr, t).await?;
        expect(&mut conn, 2, t).await?;
        let ehlo = format!("EHLO {}\r\n", opts.helo);
        net::write_all(&mut conn, ehlo.as_bytes(), t).await?;
        let mut caps = expect(&mut conn, 2, t).await?;
        if opts.starttls {
            if !caps.has_extension("STARTTLS") {
                return Err(ClientError::Tls("server does not offer STARTTLS".into()));
            }
            net::write_all(&mut conn, b"STARTTLS\r\n", t).await?;
            expect(&mut conn, 2, t).await?;
            conn = net::start_tls(conn, t).await?;
            net::write_all(&mut conn, ehlo.as_bytes(), t).await?;
            caps = expect(&mut conn, 2, t).await?;
        }
        Ok(Session {
            conn,
            pipelining: opts.pipelining && caps.has_extension("PIPELINING"),
            timeout: t,
        })
    }

    /// One transaction: MAIL, RCPT for each recipient, DATA, the message.
    /// With PIPELINING the envelope goes in one write and its replies are
    /// read after (RFC 2920 §3.1: DATA is the last command of a group).
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
    ) -> Result<(), ClientError> {
        let t = self.timeout;
        let mut envelope = format!("MAIL FROM:<{from}> SIZE={}\r\n", data.len());
        let mut commands = vec![envelope.len()];
        for r in rcpts {
            let before = envelope.len();
            envelope.push_str(&format!("RCPT TO:<{r}>\r\n"));
            commands.push(envelope.len() - before);
        }
        envelope.push_str("DATA\r\n");
        commands.push(6);
        let mut first_error = None;
        let mut accepted = 0;
        if self.pipelining {
            net::write_all(&mut self.conn, envelope.as_bytes(), t).await?;
        }
        let mut offset = 0;
        for (i, len) in commands.iter().enumerate() {
            if !self.pipelining {
                net::write_all(
                    &mut self.conn,
                    &envelope.as_bytes()[offset..offset + len],
                    t,
                )
                .await?;
                offset += len;
            }
            let reply = read_reply(&mut self.conn, t).await?;
            let is_data = i == commands.len() - 1;
            let ok = if is_data {
                reply.code == 354
            } else {
                reply.class() == 2
            };
            if ok && i > 0 && !is_data {
                accepted += 1;
            }
            if !ok {
                first_error.get_or_insert(reply.error());
                // Without pipelining nothing more was sent: stop here
                // (a refused MAIL makes RCPT pointless).
                if !self.pipelining && (i == 0 || is_data) {
                    break;
                }
            }
            if is_data && ok && accepted == 0 {
                // RFC 2920 §3.1 lets a server answer 354 anyway; an empty
                // message then ends the transaction.
                net::write_all(&mut self.conn, b".\r\n", t).await?;
                let _ = read_reply(&mut self.conn, t).await?;
            } else if is_data && ok {
                net::write_all(&mut self.conn, data, t).await?;
                let done = read_reply(&mut self.conn, t).await?;
                if done.class() != 2 {
                    return Err(done.error());
                }
                return match first_error {
                    // Some recipients refused, the message went to others:
                    // the refusal is what the caller counts.
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            if !self.pipelining && !ok && accepted == 0 && i == commands.len() - 2 {
                // Every RCPT refused: do not send DATA.
                break;
            }
        }
        let error = first_error.unwrap_or_else(|| ClientError::Protocol("no DATA reply".into()));
        self.reset().await?;
        Err(error)
    }

    /// RSET after a failed transaction so the session can go on.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        net::write_all(&mut self.conn, b"RSET\r\n", self.timeout).await?;
        expect(&mut self.conn, 2, self.timeout).await.map(|_| ())
    }

    pub async fn quit(mut self) {
        if net::write_all(&mut self.conn, b"QUIT\r\n", self.timeout)
            .await
            .is_ok()
        {
            let _ = read_reply(&mut self.conn, self.timeout).await;
        }
    }
}

/// What the `smtp` scenario (and the sending half of `e2e`) is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub session: SessionOptions,
    pub sessions: usize,
    pub messages: u64,
    pub sizes: SizeMix,
    pub from: String,
    pub to: Vec<String>,
    pub rcpts_per_message: usize,
    /// Messages per second for the whole run (open model), or as fast as
    /// the sessions go (closed model).
    pub rate: Option<f64>,
    /// Messages per connection before QUIT and a new connection; 0: no limit.
    pub per_connection: u64,
    pub run_id: String,
}

impl Plan {
    /// The recipients of message `index`, round robin over `to`.
    pub fn recipients(&self, index: u64) -> Vec<&str> {
        let n = self.to.len() as u64;
        let k = self.rcpts_per_message.clamp(1, self.to.len()) as u64;
        (0..k)
            .map(|j| self.to[((index * k + j) % n) as usize].as_str())
            .collect()
    }
}

/// A message the server accepted: when its send was due and when the 250
/// came back.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub index: u64,
    pub start: Instant,
    pub accepted: Instant,
}

#[derive(Default)]
pub struct Outcome {
    pub latency: Latency,
    /// Session set-up: connect, greeting, EHLO (and STARTTLS).
    pub connect: Latency,
    pub errors: Errors,
    pub bytes: u64,
    pub accepted: Vec<Accepted>,
}

/// Counters the progress line reads while a run goes on.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

/// Runs the plan: `sessions` workers take message indices in order. With a
/// rate, message `i` is due at `t0 + i / rate` and its latency counts from
/// then, even when every session was busy at that moment, so a stalled
/// server shows up in the percentiles instead of slowing the clock
/// (no coordinated omission).
pub async fn run(plan: Arc<Plan>, progress: Arc<Progress>, t0: Instant) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..plan.sessions.max(1) {
        let (plan, next, progress) = (plan.clone(), next.clone(), progress.clone());
        workers.push(tokio::spawn(worker(plan, next, progress, t0)));
    }
    let mut total = Outcome::default();
    for w in workers {
        match w.await {
            Ok(o) => {
                total.latency.merge(&o.latency);
                total.connect.merge(&o.connect);
                total.errors.merge(&o.errors);
                total.bytes += o.bytes;
                total.accepted.extend(o.accepted);
            }
            Err(_) => total.errors.add("worker-panic"),
        }
    }
    total.accepted.sort_by_key(|a| a.index);
    total
}

async fn worker(
    plan: Arc<Plan>,
    next: Arc<AtomicU64>,
    progress: Arc<Progress>,
    t0: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut session: Option<Session> = None;
    let mut sent_on_conn = 0u64;
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= plan.messages {
            break;
        }
        let start = match plan.rate {
            Some(rate) if rate > 0.0 => {
                let due = t0 + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            _ => Instant::now(),
        };
        let rcpts = plan.recipients(index);
        let size = plan.sizes.pick(index);
        let data = message::build(&plan.run_id, index, &plan.from, rcpts[0], size);
        // Closed model: a message's latency starts once its session is
        // open, and setting up a session (connect, greeting, EHLO,
        // STARTTLS) is measured on its own. Open model: from the due time,
        // whatever the message waited for.
        let mut message_start = start;
        if session.is_none() {
            let opened = Instant::now();
            match Session::open(plan.addr, &plan.session).await {
                Ok(s) => {
                    out.connect.record(opened.elapsed());
                    session = Some(s);
                    sent_on_conn = 0;
                    if plan.rate.is_none() {
                        message_start = Instant::now();
                    }
                }
                Err(e) => {
                    out.errors.add(&e.kind());
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                    // A refused connection (or a 421 greeting) must not
                    // spin the CPU the server under test needs.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else { continue };
        match s.send(&plan.from, &rcpts, &data).await {
            Ok(()) => {
                let now = Instant::now();
                out.latency.record(now - message_start);
                out.bytes += data.len() as u64;
                out.accepted.push(Accepted {
                    index,
                    start,
                    accepted: now,
                });
                progress.done.fetch_add(1, Ordering::Relaxed);
                sent_on_conn += 1;
            }
            Err(e) => {
                out.errors.add(&e.kind());
                progress.failed.fetch_add(1, Ordering::Relaxed);
                if !e.is_reply() {
                    session = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if plan.per_connection > 0
            && sent_on_conn >= plan.per_connection
            && let Some(s) = session.take()
        {
            s.quit().await;
        }
    }
    if let Some(s) = session.take() {
        s.quit().await;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-mx.example\r\n").unwrap(),
            (250, false, "mx.example".into())
        );
        assert_eq!(
            parse_reply_line(b"550 5.1.1 no such user\r\n").unwrap(),
            (550, true, "5.1.1 no such user".into())
        );
        assert_eq!(
            parse_reply_line(b"354\r\n").unwrap(),
            (354, true, String::new())
        );
        for bad in [
            &b"25\r\n"[..],
            b"abc hi\r\n",
            b"250xhi\r\n",
            b"999 x\r\n",
            b"\r\n",
        ] {
            assert!(parse_reply_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extensions_are_matched_by_keyword() {
        let r = Reply {
            code: 250,
            text: "mx.example\nPIPELINING\nSIZE 1000\nSTARTTLS".into(),
        };
        assert!(r.has_extension("pipelining"));
        assert!(r.has_extension("SIZE"));
        assert!(!r.has_extension("mx.example"));
        assert!(!r.has_extension("CHUNKING"));
    }

    fn plan(to: &[&str], k: usize) -> Plan {
        Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            session: SessionOptions {
                helo: "x".into(),
                starttls: false,
                pipelining: false,
                timeout: Duration::from_secs(1),
            },
            sessions: 1,
            messages: 1,
            sizes: "1k".parse().unwrap(),
            from: "a@b".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            rcpts_per_message: k,
            rate: None,
            per_connection: 0,
            run_id: "r".into(),
        }
    }

    #[test]
    fn recipients_round_robin() {
        let p = plan(&["a", "b", "c"], 1);
        assert_eq!(p.recipients(0), ["a"]);
        assert_eq!(p.recipients(4), ["b"]);
        let p = plan(&["a", "b", "c"], 2);
        assert_eq!(p.recipients(0), ["a", "b"]);
        assert_eq!(p.recipients(1), ["c", "a"]);
        let p = plan(&["a"], 5);
        assert_eq!(p.recipients(3), ["a"]);
    }

    /// A scripted server over an in-memory stream: the client's bytes and
    /// the transcript of what it sent.
    async fn scripted(
        replies: &'static [u8],
        pipelining: bool,
    ) -> (Result<(), ClientError>, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let conn: Conn = tokio::io::BufReader::new(Box::new(client) as Box<dyn net::Stream>);
        let mut s = Session {
            conn,
            pipelining,
            timeout: Duration::from_millis(300),
        };
        server.write_all(replies).await.unwrap();
        let r = s
            .send("a@x", &["b@y", "c@y"], b"Subject: t\r\n\r\nhi\r\n.\r\n")
            .await;
        drop(s);
        let mut sent = String::new();
        server.read_to_string(&mut sent).await.unwrap();
        (r, sent)
    }

    #[tokio::test]
    async fn transaction_sequential_and_pipelined() {
        let ok = b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n";
        for pipelining in [false, true] {
            let (r, sent) = scripted(ok, pipelining).await;
            assert!(r.is_ok(), "{r:?}");
            assert!(sent.starts_with(
                "MAIL FROM:<a@x> SIZE=21\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nSubject"
            ));
        }
    }

    #[tokio::test]
    async fn refused_recipient_is_counted_by_code() {
        // One recipient refused, the other accepted: the message goes, the
        // 550 is reported.
        let (r, _) = scripted(
            b"250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n250 queued\r\n",
            true,
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), "550");
        // Every recipient refused without pipelining: no DATA, RSET.
        let (r, sent) = scripted(b"250 ok\r\n550 no\r\n550 no\r\n250 reset\r\n", false).await;
        assert_eq!(r.unwrap_err().kind(), "550");
        assert!(
            !sent.contains("DATA") && sent.ends_with("RSET\r\n"),
            "{sent}"
        );
        // Refused MAIL: nothing else.
        let (r, sent) = scripted(b"452 full\r\n250 reset\r\n", false).await;
        assert_eq!(r.unwrap_err().kind(), "452");
        assert_eq!(sent, "MAIL FROM:<a@x> SIZE=21\r\nRSET\r\n");
        // Final reply refused.
        let (r, _) = scripted(
            b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n554 5.7.1 spam\r\n",
            true,
        )
        .await;
        assert_eq!(r.unwrap_err().kind(), "554");
        // Garbage and a closed stream are errors, not panics.
        let (r, _) = scripted(b"hello\r\n", true).await;
        assert_eq!(r.unwrap_err().kind(), "protocol");
        let (r, _) = scripted(b"250 ok\r\n", false).await;
        assert_eq!(r.unwrap_err().kind(), "timeout");
    }
}
