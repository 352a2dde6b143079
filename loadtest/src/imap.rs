//! The IMAP client side (RFC 9051 / RFC 3501, IDLE RFC 2177): tagged
//! commands, responses with literals read whole, and the `imap` scenario's
//! operation mix (SEARCH included, since Mailfleet serves it too).

use std::net::SocketAddr;
use std::time::Duration;

use crate::net::{self, ClientError, Conn};

/// Largest literal accepted from a server (a message body in FETCH).
const MAX_LITERAL: usize = 64 * 1024 * 1024;

/// `{123}` or `{123+}` at the end of a response line: the size of the
/// literal that follows (RFC 9051 §4.3).
pub fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 12 {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `* 42 EXISTS` → 42.
pub fn parse_exists(response: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(response.get(..response.len().min(64))?).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != "*" {
        return None;
    }
    let n = words.next()?.parse().ok()?;
    words.next()?.eq_ignore_ascii_case("EXISTS").then_some(n)
}

/// `* 3 FETCH (UID 17)` (or `UID` anywhere in the data items of a FETCH
/// response before any literal) → 17.
pub fn parse_fetch_uid(response: &[u8]) -> Option<u32> {
    let head = &response[..response
        .iter()
        .position(|&b| b == b'{')
        .unwrap_or(response.len())];
    let text = std::str::from_utf8(head).ok()?;
    let mut words = text.split_ascii_whitespace();
    if words.next()? != "*" {
        return None;
    }
    words.next()?.parse::<u32>().ok()?;
    if !words.next()?.eq_ignore_ascii_case("FETCH") {
        return None;
    }
    let mut items = words.map(|w| w.trim_matches(|c| c == '(' || c == ')'));
    while let Some(w) = items.next() {
        if w.eq_ignore_ascii_case("UID") {
            return items.next()?.parse().ok();
        }
    }
    None
}

/// An IMAP string argument: quoted, with `\` and `"` escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub struct Client {
    conn: Conn,
    tag: u64,
    timeout: Duration,
}

impl Client {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let conn = net::connect(addr, timeout).await?;
        let mut c = Client {
            conn,
            tag: 0,
            timeout,
        };
        let greeting = c.read_response().await?;
        if !greeting.starts_with(b"* OK") && !greeting.starts_with(b"* PREAUTH") {
            return Err(ClientError::Imap {
                status: "greeting".into(),
                text: String::from_utf8_lossy(&greeting).trim().to_owned(),
            });
        }
        Ok(c)
    }

    /// One response: a line, and when it announces a literal, the literal
    /// and the rest of the line after it, as one buffer.
    pub async fn read_response(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut line = Vec::with_capacity(256);
        loop {
            net::read_line(&mut self.conn, &mut line, self.timeout).await?;
            out.extend_from_slice(&line);
            match literal_len(&line) {
                Some(n) if n > MAX_LITERAL => {
                    return Err(ClientError::Protocol(format!("literal of {n} bytes")));
                }
                Some(n) => net::read_exact(&mut self.conn, &mut out, n, self.timeout).await?,
                None => return Ok(out),
            }
        }
    }

    fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("a{}", self.tag)
    }

    /// Sends `command` and reads until its tagged reply; returns the
    /// untagged responses. A tagged `NO` or `BAD` is an error.
    pub async fn command(&mut self, command: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let tag = self.next_tag();
        net::write_all(
            &mut self.conn,
            format!("{tag} {command}\r\n").as_bytes(),
            self.timeout,
        )
        .await?;
        self.until_tagged(&tag).await
    }

    async fn until_tagged(&mut self, tag: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut untagged = Vec::new();
        loop {
            let r = self.read_response().await?;
            if let Some(rest) = r
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            {
                let text = String::from_utf8_lossy(rest).trim().to_owned();
                let status = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
                return if status == "OK" {
                    Ok(untagged)
                } else {
                    Err(ClientError::Imap { status, text })
                };
            }
            if r.starts_with(b"* BYE") {
                return Err(ClientError::Closed);
            }
            untagged.push(r);
        }
    }

    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        self.command(&format!("LOGIN {} {}", quote(user), quote(password)))
            .await
            .map(|_| ())
    }

    /// SELECT; returns EXISTS.
    pub async fn select(&mut self, mailbox: &str) -> Result<u32, ClientError> {
        let untagged = self.command(&format!("SELECT {}", quote(mailbox))).await?;
        untagged
            .iter()
            .find_map(|r| parse_exists(r))
            .ok_or_else(|| ClientError::Protocol("SELECT without EXISTS".into()))
    }

    /// Enters IDLE and waits for the continuation (RFC 2177); returns the
    /// tag to finish it with [`Client::idle_done`].
    pub async fn idle_start(&mut self) -> Result<String, ClientError> {
        let tag = self.next_tag();
        net::write_all(
            &mut self.conn,
            format!("{tag} IDLE\r\n").as_bytes(),
            self.timeout,
        )
        .await?;
        loop {
            let r = self.read_response().await?;
            if r.starts_with(b"+") {
                return Ok(tag);
            }
            if r.starts_with(tag.as_bytes()) {
                let text = String::from_utf8_lossy(&r).trim().to_owned();
                return Err(ClientError::Imap {
                    status: "IDLE".into(),
                    text,
                });
            }
        }
    }

    /// Waits up to `wait` for an untagged response during IDLE.
    pub async fn idle_wait(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, ClientError> {
        // In IDLE the server rightly says nothing for as long as nothing
        // happens: the per-reply timeout must not end a quiet session
        // before `wait` does (10,000 sessions take minutes to set up, and
        // the first ones idle all that time).
        let per_reply = self.timeout;
        self.timeout = per_reply.max(wait + Duration::from_secs(1));
        let r = tokio::time::timeout(wait, self.read_response()).await;
        self.timeout = per_reply;
        match r {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Ends IDLE; returns the untagged responses that came before the
    /// tagged OK.
    pub async fn idle_done(&mut self, tag: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        net::write_all(&mut self.conn, b"DONE\r\n", self.timeout).await?;
        self.until_tagged(tag).await
    }

    pub async fn logout(mut self) {
        let _ = self.command("LOGOUT").await;
    }
}

/// One operation of the `imap` scenario's mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    FetchHeaders,
    FetchBody,
    Search,
    Store,
    Idle,
    Select,
    Noop,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::FetchHeaders => "fetch-headers",
            Op::FetchBody => "fetch-body",
            Op::Search => "search",
            Op::Store => "store",
            Op::Idle => "idle",
            Op::Select => "select",
            Op::Noop => "noop",
        }
    }

    fn from_name(s: &str) -> Option<Op> {
        [
            Op::FetchHeaders,
            Op::FetchBody,
            Op::Search,
            Op::Store,
            Op::Idle,
            Op::Select,
            Op::Noop,
        ]
        .into_iter()
        .find(|op| op.name() == s)
    }

    /// The command for this operation on a mailbox of `exists` messages;
    /// `r` picks the messages. `None` for IDLE (a dialogue, not a command)
    /// and for fetches in an empty mailbox.
    pub fn command(self, exists: u32, r: u64) -> Option<String> {
        let pick = |r: u64| (r % u64::from(exists.max(1))) as u32 + 1;
        match self {
            Op::FetchHeaders if exists > 0 => {
                let first = pick(r);
                let last = (first + 9).min(exists);
                Some(format!(
                    "FETCH {first}:{last} (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])"
                ))
            }
            Op::FetchBody if exists > 0 => Some(format!("FETCH {} (UID BODY.PEEK[])", pick(r))),
            Op::Store if exists > 0 => {
                let sign = if r & 1 == 0 { '+' } else { '-' };
                Some(format!("STORE {} {sign}FLAGS (\\Flagged)", pick(r >> 1)))
            }
            // What a mail client asks most: the unread messages, and a
            // subject search as a user types one (a header key, so the
            // server reads more than flags).
            Op::Search if r & 1 == 0 => Some("SEARCH UNSEEN".into()),
            Op::Search => Some(format!("SEARCH SUBJECT \"#{}\"", (r >> 1) % 100)),
            Op::Select => Some("SELECT INBOX".into()),
            Op::Noop => Some("NOOP".into()),
            Op::FetchHeaders | Op::FetchBody | Op::Store | Op::Idle => None,
        }
    }
}

/// `fetch-headers:40,fetch-body:30,store:10,select:10,noop:10`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(Op, u32)>);

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let (name, w) = part.split_once(':').unwrap_or((part, "1"));
            let op = Op::from_name(name.trim()).ok_or_else(|| {
                format!(
                    "unknown operation {name:?} (fetch-headers, fetch-body, search, store, idle, select, noop)"
                )
            })?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?;
            if w > 0 {
                out.push((op, w));
            }
        }
        if out.is_empty() {
            return Err("empty mix".into());
        }
        Ok(Mix(out))
    }
}

impl Mix {
    pub fn pick(&self, r: u64) -> Op {
        let total: u64 = self.0.iter().map(|&(_, w)| u64::from(w)).sum();
        let mut x = r % total;
        for &(op, w) in &self.0 {
            if x < u64::from(w) {
                return op;
            }
            x -= u64::from(w);
        }
        self.0[0].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A quiet IDLE outlasting the per-reply timeout is not an error; a
    /// line pushed later is still read.
    #[tokio::test]
    async fn idle_wait_outlasts_the_per_reply_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"* OK ready\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            s.write_all(b"* 3 EXISTS\r\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let mut c = Client::connect(addr, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(c.idle_wait(Duration::from_millis(250)).await.unwrap(), None);
        let line = c.idle_wait(Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(line, b"* 3 EXISTS\r\n");
        drop(c);
        server.await.unwrap();
    }

    #[test]
    fn literals() {
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {123}\r\n"), Some(123));
        assert_eq!(literal_len(b"* 1 FETCH (BODY[] {5+}\r\n"), Some(5));
        assert_eq!(literal_len(b"* 1 FETCH (FLAGS ())\r\n"), None);
        assert_eq!(literal_len(b"{}\r\n"), None);
        assert_eq!(literal_len(b"{x1}\r\n"), None);
        assert_eq!(literal_len(b"{99999999999999999}\r\n"), None);
    }

    #[test]
    fn exists_and_quoting() {
        assert_eq!(parse_exists(b"* 42 EXISTS\r\n"), Some(42));
        assert_eq!(parse_exists(b"* 42 exists\r\n"), Some(42));
        assert_eq!(parse_exists(b"* 42 RECENT\r\n"), None);
        assert_eq!(parse_exists(b"a1 OK 42 EXISTS\r\n"), None);
        assert_eq!(parse_exists(b"* x EXISTS\r\n"), None);
        assert_eq!(parse_fetch_uid(b"* 3 FETCH (UID 17)\r\n"), Some(17));
        assert_eq!(
            parse_fetch_uid(b"* 3 FETCH (FLAGS (\\Seen) UID 9 BODY[] {3}\r\nUID 5\r\n)"),
            Some(9)
        );
        assert_eq!(
            parse_fetch_uid(b"* 3 FETCH (BODY[] {9}\r\nUID 5 x\r\n)"),
            None
        );
        assert_eq!(parse_fetch_uid(b"* 3 EXISTS\r\n"), None);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn mix_and_commands() {
        let mix: Mix = "fetch-headers:3,noop:1".parse().unwrap();
        let n = (0..400).filter(|&r| mix.pick(r) == Op::Noop).count();
        assert_eq!(n, 100);
        assert!("nope:1".parse::<Mix>().is_err());
        assert!("noop:0".parse::<Mix>().is_err());
        assert_eq!(
            Op::FetchHeaders.command(5, 3).unwrap(),
            "FETCH 4:5 (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])"
        );
        assert_eq!(Op::FetchBody.command(0, 3), None);
        assert_eq!(
            Op::Store.command(10, 4).unwrap(),
            "STORE 3 +FLAGS (\\Flagged)"
        );
        assert_eq!(Op::Idle.command(10, 1), None);
    }

    #[tokio::test]
    async fn command_reads_literals_and_tagged_status() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let conn: Conn = tokio::io::BufReader::new(Box::new(client) as Box<dyn net::Stream>);
        let mut c = Client {
            conn,
            tag: 0,
            timeout: Duration::from_millis(500),
        };
        server
            .write_all(
                b"* 1 FETCH (BODY[] {7}\r\na1 OK\r\n)\r\na1 OK done\r\na2 NO [TRYCREATE] no\r\n",
            )
            .await
            .unwrap();
        let untagged = c.command("FETCH 1 BODY.PEEK[]").await.unwrap();
        assert_eq!(
            untagged,
            vec![b"* 1 FETCH (BODY[] {7}\r\na1 OK\r\n)\r\n".to_vec()]
        );
        let e = c.command("SELECT x").await.unwrap_err();
        assert_eq!(e.kind(), "NO");
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("a1 FETCH 1 BODY.PEEK[]\r\n")
        );
    }
}
