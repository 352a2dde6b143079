//! One POP3 session (RFC 1939) over the account's INBOX: AUTHORIZATION with
//! USER/PASS, TRANSACTION over a snapshot of the maildrop taken at login,
//! and UPDATE at QUIT, the only moment deletions reach the mailstore
//! (RFC 1939 §6). Handlers return the bytes of their reply; only the loop
//! writes.

use std::sync::Arc;

use mailfleet_runtime::CancellationToken;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tracing::{debug, info, warn};

use super::parser::{self, Command, MAX_LINE_BYTES, ParseError};
use crate::io::{Line, read_line};
use crate::store::{AccessError, FlagMode};
use crate::{Connection, Shared};

/// The mailbox POP3 reads.
pub const MAILBOX: &str = "INBOX";

/// RFC 2449 §5 capabilities (USER, SASL and STLS are added when they
/// apply).
const CAPABILITIES: &[&str] = &[
    "TOP",
    "UIDL",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "PIPELINING",
    "IMPLEMENTATION Mailfleet",
];

/// Serves one POP3 connection until QUIT, disconnect, idle timeout or
/// shutdown, as if from loopback without TLS (session tests).
pub async fn serve<S>(stream: S, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    serve_connection(stream, shared, shutdown, Connection::local()).await
}

/// Serves one POP3 connection; after STLS (RFC 2595 §4) the session goes
/// on over TLS in the AUTHORIZATION state, pipelined plain text dropped.
pub async fn serve_connection<S>(
    stream: S,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    connection: Connection,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let _guard = shared.metrics.session("pop3");
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut writer = BufWriter::new(writer);
    let mut session = Session {
        shared: shared.clone(),
        state: State::Authorization { user: None },
        connection,
        greeted: false,
    };
    debug!("pop3 session started");
    match session.run(&mut reader, &mut writer, &shutdown).await {
        Ok(Outcome::Closed) => debug!("pop3 session ended"),
        Ok(Outcome::StartTls) => {
            let stream = reader.into_inner().unsplit(writer.into_inner());
            let Some(tls) = shared.tls.as_ref() else {
                return;
            };
            let stream = match crate::tls_handshake(tls, stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    info!(%error, "pop3 stls handshake failed");
                    return;
                }
            };
            session.connection.tls = true;
            let (reader, writer) = tokio::io::split(stream);
            let mut reader = BufReader::new(reader);
            let mut writer = BufWriter::new(writer);
            if let Err(error) = session.run(&mut reader, &mut writer, &shutdown).await {
                debug!(%error, "pop3 session ended by i/o error");
            }
            let _ = writer.shutdown().await;
            return;
        }
        Err(error) => debug!(%error, "pop3 session ended by i/o error"),
    }
    let _ = writer.shutdown().await;
}

/// How [`Session::run`] ended.
enum Outcome {
    Closed,
    StartTls,
}

/// RFC 1939 §3: the session states.
enum State {
    Authorization { user: Option<String> },
    Transaction(Maildrop),
    Update,
}

/// The INBOX as it was at login: message `n` is `messages[n - 1]` for the
/// whole session (RFC 1939 §5).
struct Maildrop {
    account: String,
    uid_validity: u32,
    messages: Vec<Message>,
}

struct Message {
    uid: u32,
    size: u64,
    deleted: bool,
}

impl Maildrop {
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| (i + 1, m))
            .filter(|(_, m)| !m.deleted)
    }

    /// The message numbered `n`, unless absent or marked deleted.
    fn get(&self, n: u32) -> Result<&Message, Reply> {
        match self.messages.get((n as usize).wrapping_sub(1)) {
            None => Err(Reply::err("no such message")),
            Some(m) if m.deleted => Err(Reply::err(format!("message {n} already deleted"))),
            Some(m) => Ok(m),
        }
    }

    fn summary(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(count, size), (_, m)| (count + 1, size + m.size))
    }
}

/// The bytes of one reply, and whether the session ends after it.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

impl Reply {
    fn ok(text: impl AsRef<str>) -> Self {
        Reply {
            bytes: format!("+OK {}\r\n", text.as_ref()).into_bytes(),
            close: false,
        }
    }

    fn err(text: impl AsRef<str>) -> Self {
        Reply {
            bytes: format!("-ERR {}\r\n", text.as_ref()).into_bytes(),
            close: false,
        }
    }

    /// `+OK text`, then `body` (already dot-stuffed, CRLF-terminated
    /// lines), then the terminating `.` (RFC 1939 §3 multi-line responses).
    fn multi_line(text: impl AsRef<str>, body: &[u8]) -> Self {
        let mut bytes = format!("+OK {}\r\n", text.as_ref()).into_bytes();
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b".\r\n");
        Reply {
            bytes,
            close: false,
        }
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

struct Session {
    shared: Arc<Shared>,
    state: State,
    connection: Connection,
    greeted: bool,
}

enum Wake {
    Line(std::io::Result<Line>),
    Shutdown,
    Timeout,
}

impl Session {
    async fn run<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Outcome>
    where
        R: tokio::io::AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if !self.greeted {
            let greeting = format!(
                "+OK {} Mailfleet POP3 ready\r\n",
                self.shared.limits.hostname
            );
            send(writer, greeting.as_bytes()).await?;
            self.greeted = true;
        }
        let closed = Ok(Outcome::Closed);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let timeout = self.shared.limits.pop3_idle_timeout;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = tokio::time::sleep(timeout) => Wake::Timeout,
                line = read_line(reader, &mut buf, MAX_LINE_BYTES) => Wake::Line(line),
            };
            let line = match wake {
                Wake::Shutdown => {
                    // Not QUIT: no UPDATE state, deletions are forgotten.
                    send(writer, b"-ERR server shutting down\r\n").await?;
                    return closed;
                }
                Wake::Timeout => {
                    // RFC 1939 §3: an autologout timer closes the
                    // connection without entering the UPDATE state.
                    info!("pop3 autologout after idle timeout");
                    send(writer, b"-ERR autologout; idle for too long\r\n").await?;
                    return closed;
                }
                Wake::Line(line) => line?,
            };
            let reply = match line {
                Line::Eof => return closed,
                Line::TooLong => {
                    self.shared.metrics.command("pop3", "invalid");
                    Reply::err("line too long")
                }
                Line::Complete => match parser::parse(&buf) {
                    Ok(Command::Stls) => {
                        self.shared.metrics.command("pop3", "STLS");
                        let reply = self.stls();
                        send(writer, &reply.bytes).await?;
                        if reply.bytes.starts_with(b"+OK") {
                            return Ok(Outcome::StartTls);
                        }
                        continue;
                    }
                    Ok(Command::Auth { mechanism, initial }) => {
                        self.shared.metrics.command("pop3", "AUTH");
                        self.auth(reader, writer, &mechanism, initial).await?
                    }
                    Ok(command) => {
                        self.shared.metrics.command("pop3", command.name());
                        debug!(command = command.name(), "pop3 command");
                        self.handle(command).await
                    }
                    Err(error) => {
                        self.shared.metrics.command("pop3", "invalid");
                        match error {
                            ParseError::Unknown => Reply::err("unknown command"),
                            ParseError::Syntax(message) => Reply::err(message),
                        }
                    }
                },
            };
            send(writer, &reply.bytes).await?;
            if reply.close {
                return closed;
            }
        }
    }

    async fn handle(&mut self, command: Command) -> Reply {
        match command {
            Command::Capa => self.capa(),
            Command::Noop => match self.state {
                State::Transaction(_) => Reply::ok(""),
                _ => Reply::err("not in TRANSACTION state"),
            },
            Command::Quit => self.quit().await,
            Command::User(user) => self.user(user),
            Command::Pass(password) => self.pass(&password).await,
            // Handled by the loop, which owns the stream.
            Command::Stls | Command::Auth { .. } => Reply::err("unexpected"),
            command => {
                let State::Transaction(maildrop) = &mut self.state else {
                    return Reply::err("not in TRANSACTION state; log in first");
                };
                transaction(&self.shared, maildrop, command).await
            }
        }
    }

    /// RFC 2449 §5 CAPA, with RFC 2595 STLS and RFC 5034 SASL.
    fn capa(&self) -> Reply {
        let mut body = Vec::new();
        let mut lines: Vec<&str> = CAPABILITIES.to_vec();
        if self.shared.plaintext_auth_allowed(&self.connection) {
            lines.push("USER");
            lines.push("SASL PLAIN");
        }
        if self.shared.tls.is_some() && !self.connection.tls {
            lines.push("STLS");
        }
        for capability in lines {
            body.extend_from_slice(capability.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
        Reply::multi_line("capability list follows", &body)
    }

    /// RFC 2595 §4 STLS: only in AUTHORIZATION, only once.
    fn stls(&self) -> Reply {
        if self.connection.tls {
            return Reply::err("TLS is already active");
        }
        if !matches!(self.state, State::Authorization { .. }) {
            return Reply::err("STLS only before authentication");
        }
        if self.shared.tls.is_none() {
            return Reply::err("TLS is not available");
        }
        Reply::ok("begin TLS negotiation")
    }

    /// RFC 5034 AUTH PLAIN (RFC 4616), the initial response inline or after
    /// a `+ ` continuation; `*` cancels.
    async fn auth<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        mechanism: &str,
        initial: Option<String>,
    ) -> std::io::Result<Reply>
    where
        R: tokio::io::AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if !matches!(self.state, State::Authorization { .. }) {
            return Ok(Reply::err("already authenticated"));
        }
        if mechanism != "PLAIN" {
            return Ok(Reply::err("unsupported mechanism"));
        }
        if !self.shared.plaintext_auth_allowed(&self.connection) {
            return Ok(Reply::err("use STLS first"));
        }
        let response = match initial {
            Some(initial) => initial.into_bytes(),
            None => {
                send(writer, b"+ \r\n").await?;
                let mut line = Vec::new();
                match read_line(reader, &mut line, 4096).await? {
                    Line::Complete => line,
                    Line::TooLong => return Ok(Reply::err("response too long")),
                    Line::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        if response == b"*" {
            return Ok(Reply::err("authentication cancelled"));
        }
        let decoded = if response == b"=" {
            Some(Vec::new())
        } else {
            mailfleet_runtime::base64::decode(&response)
        };
        let Some(decoded) = decoded else {
            return Ok(Reply::err("invalid base64"));
        };
        let fields: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [authzid, user, password] = fields.as_slice() else {
            return Ok(Reply::err("malformed PLAIN response"));
        };
        let (Ok(authzid), Ok(user), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(user),
            std::str::from_utf8(password),
        ) else {
            return Ok(Reply::err("PLAIN response is not UTF-8"));
        };
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
            return Ok(Reply::err("[AUTH] cannot act as another user"));
        }
        Ok(self.login(user, password).await)
    }

    /// RFC 1939 §7 USER
    fn user(&mut self, name: String) -> Reply {
        let State::Authorization { user } = &mut self.state else {
            return Reply::err("already authenticated");
        };
        if !self.shared.plaintext_auth_allowed(&self.connection) {
            return Reply::err("use STLS first");
        }
        *user = Some(name);
        Reply::ok("send PASS")
    }

    /// RFC 1939 §7 PASS; the maildrop is listed once here and numbers stay
    /// fixed for the session.
    async fn pass(&mut self, password: &str) -> Reply {
        let State::Authorization { user } = &mut self.state else {
            return Reply::err("already authenticated");
        };
        let Some(name) = user.take() else {
            return Reply::err("send USER first");
        };
        self.login(&name, password).await
    }

    /// Checks the credentials and, when right, lists the maildrop and enters
    /// the TRANSACTION state.
    async fn login(&mut self, name: &str, password: &str) -> Reply {
        let store = &self.shared.store;
        let account = match store.authenticate(name, password).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                self.shared.metrics.login("pop3", false);
                info!(user = name, "pop3 login failed");
                // RFC 3206 §4: AUTH means the credentials were wrong.
                return Reply::err("[AUTH] invalid credentials");
            }
            Err(error) => return failure(error),
        };
        self.shared.metrics.login("pop3", true);
        let status = match store.select(&account, MAILBOX).await {
            Ok(status) => status,
            Err(error) => return failure(error),
        };
        let listed = match store.list_messages(&account, MAILBOX).await {
            Ok(messages) => messages,
            Err(error) => return failure(error),
        };
        info!(%account, messages = listed.len(), "pop3 login");
        let maildrop = Maildrop {
            account,
            uid_validity: status.uid_validity,
            messages: listed
                .into_iter()
                .map(|m| Message {
                    uid: m.uid,
                    size: m.size,
                    deleted: false,
                })
                .collect(),
        };
        let (count, size) = maildrop.summary();
        self.state = State::Transaction(maildrop);
        Reply::ok(format!("maildrop has {count} messages ({size} octets)"))
    }

    /// RFC 1939 §6 QUIT: in TRANSACTION, enters UPDATE and removes the
    /// messages marked deleted.
    async fn quit(&mut self) -> Reply {
        let state = std::mem::replace(&mut self.state, State::Update);
        let State::Transaction(maildrop) = state else {
            return Reply::ok("bye").closing();
        };
        let doomed: Vec<u32> = maildrop
            .messages
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.uid)
            .collect();
        if doomed.is_empty() {
            return Reply::ok("bye").closing();
        }
        match expunge(&self.shared, &maildrop.account, &doomed).await {
            Ok(removed) => {
                info!(account = maildrop.account, removed, "pop3 update");
                Reply::ok(format!("bye ({removed} messages deleted)")).closing()
            }
            Err(error) => {
                warn!(%error, "pop3 update failed");
                Reply::err("[SYS/TEMP] some deleted messages not removed").closing()
            }
        }
    }
}

/// The commands of the TRANSACTION state (RFC 1939 §5, §7).
async fn transaction(shared: &Shared, maildrop: &mut Maildrop, command: Command) -> Reply {
    match command {
        Command::Stat => {
            let (count, size) = maildrop.summary();
            Reply::ok(format!("{count} {size}"))
        }
        Command::List(Some(n)) => match maildrop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}", m.size)),
            Err(reply) => reply,
        },
        Command::List(None) => {
            let (count, size) = maildrop.summary();
            let body: String = maildrop
                .live()
                .map(|(n, m)| format!("{n} {}\r\n", m.size))
                .collect();
            Reply::multi_line(format!("{count} messages ({size} octets)"), body.as_bytes())
        }
        // RFC 1939 §7 UIDL: unique and stable across sessions, hence the
        // UIDVALIDITY in front of the UID.
        Command::Uidl(Some(n)) => match maildrop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}.{}", maildrop.uid_validity, m.uid)),
            Err(reply) => reply,
        },
        Command::Uidl(None) => {
            let body: String = maildrop
                .live()
                .map(|(n, m)| format!("{n} {}.{}\r\n", maildrop.uid_validity, m.uid))
                .collect();
            Reply::multi_line("unique-id listing follows", body.as_bytes())
        }
        Command::Retr(n) => {
            let (uid, size) = match maildrop.get(n) {
                Ok(m) => (m.uid, m.size),
                Err(reply) => return reply,
            };
            match shared
                .store
                .fetch_body(&maildrop.account, MAILBOX, uid)
                .await
            {
                Ok(body) => Reply::multi_line(format!("{size} octets"), &dot_stuff(&body, None)),
                Err(error) => failure(error),
            }
        }
        Command::Top(n, lines) => {
            let uid = match maildrop.get(n) {
                Ok(m) => m.uid,
                Err(reply) => return reply,
            };
            match shared
                .store
                .fetch_body(&maildrop.account, MAILBOX, uid)
                .await
            {
                Ok(body) => {
                    Reply::multi_line("top of message follows", &dot_stuff(&body, Some(lines)))
                }
                Err(error) => failure(error),
            }
        }
        Command::Dele(n) => {
            let index = n as usize - 1;
            if let Err(reply) = maildrop.get(n) {
                return reply;
            }
            maildrop.messages[index].deleted = true;
            Reply::ok(format!("message {n} deleted"))
        }
        Command::Rset => {
            for message in &mut maildrop.messages {
                message.deleted = false;
            }
            let (count, size) = maildrop.summary();
            Reply::ok(format!("maildrop has {count} messages ({size} octets)"))
        }
        Command::Capa
        | Command::User(_)
        | Command::Pass(_)
        | Command::Noop
        | Command::Quit
        | Command::Stls
        | Command::Auth { .. } => Reply::err("unexpected command"),
    }
}

/// Marks the messages `\Deleted`, then expunges exactly those UIDs, so the
/// result is the same whether the mailstore expunges listed UIDs outright
/// or only the `\Deleted` ones among them.
async fn expunge(shared: &Shared, account: &str, uids: &[u32]) -> Result<usize, AccessError> {
    let deleted = ["\\Deleted".to_owned()];
    for &uid in uids {
        match shared
            .store
            .store_flags(account, MAILBOX, uid, FlagMode::Add, &deleted)
            .await
        {
            Ok(_) | Err(AccessError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(shared.store.expunge(account, MAILBOX, uids).await?.len())
}

/// The message as POP3 sends it (RFC 1939 §3): CRLF line endings, lines
/// starting with `.` get one more. With `body_lines`, only the header, the
/// blank line and that many lines of the body (TOP, RFC 1939 §7).
fn dot_stuff(message: &[u8], body_lines: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut lines: Vec<&[u8]> = message.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut in_body = false;
    let mut body_sent = 0u32;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(limit) = body_lines
            && in_body
        {
            if body_sent >= limit {
                break;
            }
            body_sent += 1;
        }
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if line.is_empty() {
            in_body = true;
        }
    }
    out
}

fn failure(error: AccessError) -> Reply {
    match error {
        AccessError::NotFound(_) => Reply::err("no such message"),
        AccessError::Refused(message)
        | AccessError::AlreadyExists(message)
        | AccessError::OverQuota(message) => Reply::err(format!("refused: {message}")),
        AccessError::Unavailable(_) => {
            warn!(%error, "pop3: mailstore unavailable");
            // RFC 3206 §4: SYS/TEMP, a transient system problem.
            Reply::err("[SYS/TEMP] mailstore temporarily unavailable")
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_line_endings() {
        assert_eq!(
            dot_stuff(b"A: 1\n\n.hidden\r\n..two\r\nend", None),
            b"A: 1\r\n\r\n..hidden\r\n...two\r\nend\r\n"
        );
    }

    #[test]
    fn top_stops_after_body_lines() {
        let message = b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\nthree\r\n";
        assert_eq!(dot_stuff(message, Some(0)), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(
            dot_stuff(message, Some(2)),
            b"A: 1\r\nB: 2\r\n\r\none\r\ntwo\r\n"
        );
        assert_eq!(dot_stuff(message, Some(99)), message);
    }
}
