//! One IMAP session (RFC 9051, compatible with RFC 3501 clients): a loop
//! that reads a complete command (answering `+` to synchronising literals),
//! parses it, calls the handler of its verb and writes the reply. Handlers
//! return [`Reply`] values; only the loop (and IDLE, which is a loop of its
//! own) writes to the stream.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::BoxStream;
use mailfleet_proto::queue::MailboxEvent;
use mailfleet_runtime::CancellationToken;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf,
};
use tracing::{debug, info, warn};

use super::parser::{
    self, CommandBody, FetchItem, MAX_COMMAND_BYTES, MAX_LITERAL_BYTES, Section, SeqNumber,
    SequenceSet, StoreMode,
};
use super::response::{self, Reply, Status, flag_list, internal_date, untagged};
use crate::Shared;
use crate::io::{Line, read_line};
use crate::store::{AccessError, FlagMode, MessageInfo};

/// RFC 9051 §7.2.2 capabilities. No `LOGINDISABLED`: TLS comes later.
// IMAP4rev2 is not advertised until every command RFC 9051 requires is here
// (SEARCH, STATUS, APPEND, ENABLE, ...): a rev2 client would rely on them.
pub const CAPABILITIES: &str = "IMAP4rev1 LITERAL+ IDLE UNSELECT SPECIAL-USE";

/// The hierarchy delimiter of every mailbox name.
pub const DELIMITER: char = '/';

/// The system flags (RFC 9051 §2.3.2) every mailbox accepts.
const SYSTEM_FLAGS: &str = r"\Answered \Flagged \Deleted \Seen \Draft";

/// Serves one IMAP connection until LOGOUT, disconnect, idle timeout or
/// shutdown.
pub async fn serve<S>(stream: S, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let _guard = shared.metrics.session("imap");
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io {
        reader: BufReader::new(reader),
        writer: BufWriter::new(writer),
    };
    let mut session = Session::new(shared);
    debug!("imap session started");
    match session.run(&mut io, &shutdown).await {
        Ok(()) => debug!("imap session ended"),
        Err(error) => debug!(%error, "imap session ended by i/o error"),
    }
    let _ = io.writer.shutdown().await;
}

struct Io<S> {
    reader: BufReader<ReadHalf<S>>,
    writer: BufWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }
}

/// RFC 9051 §3: the connection states.
enum State {
    NotAuthenticated,
    Authenticated { account: String },
    Selected { account: String, mailbox: Mailbox },
    Logout,
}

/// The selected mailbox as this session knows it: message sequence number
/// `n` is the message with UID `uids[n - 1]` (RFC 9051 §2.3.1.2).
struct Mailbox {
    name: String,
    read_only: bool,
    uids: Vec<u32>,
}

/// What reading one command produced.
enum Input {
    Command(Vec<u8>),
    TooLong(Option<String>),
    /// A literal too large to accept; `close` when the client is already
    /// sending it (LITERAL+) and the stream cannot be resynchronised.
    LiteralRefused {
        tag: Option<String>,
        close: bool,
    },
    Eof,
}

enum Wake {
    Input(std::io::Result<Input>),
    Shutdown,
    Timeout,
}

struct Session {
    shared: Arc<Shared>,
    state: State,
    events: Option<BoxStream<'static, MailboxEvent>>,
    /// An event said the selected mailbox changed since the last sync.
    dirty: bool,
}

impl Session {
    fn new(shared: Arc<Shared>) -> Self {
        Session {
            shared,
            state: State::NotAuthenticated,
            events: None,
            dirty: false,
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<()> {
        // RFC 9051 §7.1.1: the greeting may carry the capabilities.
        let greeting = format!(
            "* OK [CAPABILITY {CAPABILITIES}] {} Mailfleet IMAP ready\r\n",
            self.shared.limits.hostname
        );
        io.send(greeting.as_bytes()).await?;
        let mut buf = Vec::new();
        loop {
            if matches!(self.state, State::Logout) {
                return Ok(());
            }
            let timeout = self.shared.limits.imap_idle_timeout;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = tokio::time::sleep(timeout) => Wake::Timeout,
                input = read_command(io, &mut buf) => Wake::Input(input),
            };
            let input = match wake {
                Wake::Shutdown => {
                    return io.send(b"* BYE server shutting down\r\n").await;
                }
                Wake::Timeout => {
                    // RFC 9051 §5.4: autologout timer.
                    info!("imap autologout after idle timeout");
                    return io.send(b"* BYE autologout; idle for too long\r\n").await;
                }
                Wake::Input(input) => input?,
            };
            let command = match input {
                Input::Eof => return Ok(()),
                Input::TooLong(tag) => {
                    self.shared.metrics.command("imap", "invalid");
                    let tag = tag.unwrap_or_else(|| "*".into());
                    let line = response::tagged(&tag, Status::Bad, None, "command line too long");
                    io.send(&line).await?;
                    continue;
                }
                Input::LiteralRefused { tag, close } => {
                    self.shared.metrics.command("imap", "invalid");
                    let tag = tag.unwrap_or_else(|| "*".into());
                    let line =
                        response::tagged(&tag, Status::Bad, Some("TOOBIG"), "literal too large");
                    io.send(&line).await?;
                    if close {
                        return io.send(b"* BYE literal too large\r\n").await;
                    }
                    continue;
                }
                Input::Command(bytes) => bytes,
            };
            let command = match parser::parse_command(&command) {
                Ok(command) => command,
                Err(error) => {
                    self.shared.metrics.command("imap", "invalid");
                    debug!(error = %error.message, "imap bad command");
                    let tag = error.tag.unwrap_or_else(|| "*".into());
                    io.send(&response::tagged(&tag, Status::Bad, None, &error.message))
                        .await?;
                    continue;
                }
            };
            self.shared.metrics.command("imap", command.body.name());
            debug!(command = command.body.name(), "imap command");
            if command.body == CommandBody::Idle {
                if !self.idle(io, &command.tag, shutdown).await? {
                    return Ok(());
                }
                continue;
            }
            let reply = self.handle(command.body.clone()).await;
            let reply = self.with_pending_changes(&command.body, reply).await;
            for line in &reply.untagged {
                io.writer.write_all(line).await?;
            }
            io.send(&reply.tagged_line(&command.tag)).await?;
            if reply.close {
                return Ok(());
            }
        }
    }

    /// Dispatches to the handler of the verb, after checking that the verb
    /// is allowed in the current state (RFC 9051 §6).
    async fn handle(&mut self, body: CommandBody) -> Reply {
        match body {
            CommandBody::Capability => self.capability(),
            CommandBody::Noop => self.noop("NOOP").await,
            // RFC 3501 §6.4.1 (gone from IMAP4rev2): a NOOP of the selected state.
            CommandBody::Check if !matches!(self.state, State::Selected { .. }) => {
                Reply::bad("no mailbox selected")
            }
            CommandBody::Check => self.noop("CHECK").await,
            CommandBody::Logout => self.logout(),
            CommandBody::Login { user, password } => self.login(&user, &password).await,
            CommandBody::List { reference, pattern } => self.list(&reference, &pattern).await,
            CommandBody::Select { mailbox } => self.select(mailbox, false).await,
            CommandBody::Examine { mailbox } => self.select(mailbox, true).await,
            CommandBody::Fetch { uid, set, items } => self.fetch(uid, &set, &items).await,
            CommandBody::Store {
                uid,
                set,
                mode,
                silent,
                flags,
            } => self.store(uid, &set, mode, silent, &flags).await,
            CommandBody::Expunge => self.expunge().await,
            CommandBody::Close => self.close(true).await,
            CommandBody::Unselect => self.close(false).await,
            // Handled by the loop itself; never reaches here.
            CommandBody::Idle => Reply::bad("unexpected IDLE"),
        }
    }

    /// RFC 9051 §6.1.1
    fn capability(&self) -> Reply {
        Reply::ok("CAPABILITY completed")
            .untagged(vec![untagged(&format!("CAPABILITY {CAPABILITIES}"))])
    }

    /// RFC 9051 §6.1.2: NOOP (and CHECK) report mailbox changes, including
    /// expunges by other sessions.
    async fn noop(&mut self, verb: &str) -> Reply {
        let lines = self.sync(true).await;
        Reply::ok(format!("{verb} completed")).untagged(lines)
    }

    /// RFC 9051 §6.1.3
    fn logout(&mut self) -> Reply {
        self.state = State::Logout;
        let mut reply = Reply::ok("LOGOUT completed").untagged(vec![untagged("BYE logging out")]);
        reply.close = true;
        reply
    }

    /// RFC 9051 §6.2.3
    async fn login(&mut self, user: &str, password: &str) -> Reply {
        if !matches!(self.state, State::NotAuthenticated) {
            return Reply::bad("already authenticated");
        }
        match self.shared.store.authenticate(user, password).await {
            Ok(Some(account)) => {
                self.shared.metrics.login("imap", true);
                info!(%account, "imap login");
                self.subscribe(&account).await;
                self.state = State::Authenticated { account };
                Reply::ok("LOGIN completed").code(format!("CAPABILITY {CAPABILITIES}"))
            }
            Ok(None) => {
                self.shared.metrics.login("imap", false);
                info!(user, "imap login failed");
                Reply::no("invalid credentials").code("AUTHENTICATIONFAILED")
            }
            Err(error) => {
                warn!(%error, "imap login: directory unavailable");
                Reply::no("authentication temporarily unavailable").code("UNAVAILABLE")
            }
        }
    }

    async fn subscribe(&mut self, account: &str) {
        match self.shared.events.subscribe(account).await {
            Ok(stream) => self.events = Some(stream),
            Err(error) => {
                warn!(%error, "imap: no change events; new mail shows at NOOP only");
            }
        }
    }

    /// RFC 9051 §6.3.9 (basic form): reference and pattern, `*` matching
    /// everything and `%` everything but the delimiter.
    async fn list(&mut self, reference: &str, pattern: &str) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        if pattern.is_empty() {
            // The hierarchy delimiter and root of the reference.
            return Reply::ok("LIST completed").untagged(vec![untagged(&format!(
                "LIST (\\Noselect) \"{DELIMITER}\" \"\""
            ))]);
        }
        let mailboxes = match self.shared.store.list_mailboxes(&account).await {
            Ok(mailboxes) => mailboxes,
            Err(error) => return store_failure(error),
        };
        let full_pattern = format!("{reference}{pattern}");
        let names: Vec<&str> = mailboxes.iter().map(|m| m.name.as_str()).collect();
        let mut lines = Vec::new();
        for mailbox in &mailboxes {
            if !list_matches(&full_pattern, &mailbox.name) {
                continue;
            }
            let mut attributes: Vec<String> = mailbox
                .attributes
                .iter()
                .map(|a| {
                    if a.starts_with('\\') {
                        a.clone()
                    } else {
                        format!("\\{a}")
                    }
                })
                .collect();
            let prefix = format!("{}{DELIMITER}", mailbox.name);
            let has_children = names.iter().any(|n| n.starts_with(&prefix));
            attributes.push(if has_children {
                "\\HasChildren".into()
            } else {
                "\\HasNoChildren".into()
            });
            let mut line =
                format!("* LIST ({}) \"{DELIMITER}\" ", attributes.join(" ")).into_bytes();
            response::string(&mut line, &mailbox.name);
            line.extend_from_slice(b"\r\n");
            lines.push(line);
        }
        Reply::ok("LIST completed").untagged(lines)
    }

    /// RFC 9051 §6.3.2 SELECT and §6.3.3 EXAMINE.
    async fn select(&mut self, name: String, read_only: bool) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let mut lines = Vec::new();
        if matches!(self.state, State::Selected { .. }) {
            // RFC 9051 §6.3.2: the current mailbox is closed first; the
            // CLOSED code tells the client where the old responses end.
            lines.push(untagged("OK [CLOSED] previous mailbox is now closed"));
        }
        self.state = State::Authenticated {
            account: account.clone(),
        };
        self.dirty = false;
        let status = match self.shared.store.select(&account, &name).await {
            Ok(status) => status,
            Err(error) => return store_failure(error).untagged(lines),
        };
        let messages = match self.shared.store.list_messages(&account, &name).await {
            Ok(messages) => messages,
            Err(error) => return store_failure(error).untagged(lines),
        };
        let uids: Vec<u32> = messages.iter().map(|m| m.uid).collect();
        let uid_next = status
            .uid_next
            .max(uids.last().map_or(1, |u| u.saturating_add(1)));
        lines.push(untagged(&format!("FLAGS ({SYSTEM_FLAGS})")));
        lines.push(untagged(&format!("{} EXISTS", uids.len())));
        // RFC 3501 §7.3.2; IMAP4rev2 dropped \Recent but rev1 clients expect it.
        lines.push(untagged("0 RECENT"));
        if let Some(first) = messages
            .iter()
            .position(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
        {
            // RFC 3501 §6.3.1: the first unseen message (rev1 clients).
            lines.push(untagged(&format!(
                "OK [UNSEEN {}] first unseen message",
                first + 1
            )));
        }
        lines.push(untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            status.uid_validity
        )));
        lines.push(untagged(&format!(
            "OK [UIDNEXT {uid_next}] predicted next UID"
        )));
        let permanent = if read_only {
            "()".to_owned()
        } else {
            format!("({SYSTEM_FLAGS} \\*)")
        };
        lines.push(untagged(&format!(
            "OK [PERMANENTFLAGS {permanent}] flags permitted"
        )));
        self.state = State::Selected {
            account,
            mailbox: Mailbox {
                name,
                read_only,
                uids,
            },
        };
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Reply::ok(format!("{verb} completed"))
            .code(code)
            .untagged(lines)
    }

    /// RFC 9051 §6.4.5 FETCH and §6.4.9 UID FETCH.
    async fn fetch(&mut self, uid: bool, set: &SequenceSet, items: &[FetchItem]) -> Reply {
        let State::Selected { account, mailbox } = &self.state else {
            return Reply::bad("no mailbox selected");
        };
        let targets = match resolve(set, uid, &mailbox.uids) {
            Ok(targets) => targets,
            Err(reply) => return reply,
        };
        let current = match self
            .shared
            .store
            .list_messages(account, &mailbox.name)
            .await
        {
            Ok(messages) => by_uid(messages),
            Err(error) => return store_failure(error),
        };
        let sets_seen = !mailbox.read_only && items.iter().any(FetchItem::sets_seen);
        let needs_body = items.iter().any(FetchItem::needs_body);
        let mut lines = Vec::new();
        for (seq, message_uid) in targets {
            // Expunged by another session since our last sync: RFC 9051
            // §7.5.2 forbids an EXPUNGE here, so the message is skipped.
            let Some(info) = current.get(&message_uid) else {
                continue;
            };
            let mut info = info.clone();
            let body = if needs_body {
                match self
                    .shared
                    .store
                    .fetch_body(account, &mailbox.name, message_uid)
                    .await
                {
                    Ok(body) => Some(body),
                    Err(AccessError::NotFound(_)) => continue,
                    Err(error) => return store_failure(error),
                }
            } else {
                None
            };
            let mut flags_changed = false;
            if sets_seen && !has_flag(&info.flags, "\\Seen") {
                match self
                    .shared
                    .store
                    .store_flags(
                        account,
                        &mailbox.name,
                        message_uid,
                        FlagMode::Add,
                        &["\\Seen".to_owned()],
                    )
                    .await
                {
                    Ok(updated) => {
                        info.flags = updated.flags;
                        flags_changed = true;
                    }
                    Err(error) => return store_failure(error),
                }
            }
            lines.push(fetch_line(
                seq,
                uid,
                items,
                &info,
                body.as_deref(),
                flags_changed,
            ));
        }
        Reply::ok(format!("{}FETCH completed", if uid { "UID " } else { "" })).untagged(lines)
    }

    /// RFC 9051 §6.4.6 STORE and §6.4.9 UID STORE.
    async fn store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
    ) -> Reply {
        let State::Selected { account, mailbox } = &self.state else {
            return Reply::bad("no mailbox selected");
        };
        if mailbox.read_only {
            return Reply::no("mailbox is read-only").code("READ-ONLY");
        }
        let targets = match resolve(set, uid, &mailbox.uids) {
            Ok(targets) => targets,
            Err(reply) => return reply,
        };
        let mode = match mode {
            StoreMode::Replace => FlagMode::Replace,
            StoreMode::Add => FlagMode::Add,
            StoreMode::Remove => FlagMode::Remove,
        };
        let mut lines = Vec::new();
        for (seq, message_uid) in targets {
            let info = match self
                .shared
                .store
                .store_flags(account, &mailbox.name, message_uid, mode, flags)
                .await
            {
                Ok(info) => info,
                // Gone meanwhile: nothing to report for it.
                Err(AccessError::NotFound(_)) => continue,
                Err(error) => return store_failure(error),
            };
            if silent {
                continue;
            }
            let uid_part = if uid {
                format!("UID {message_uid} ")
            } else {
                String::new()
            };
            lines.push(untagged(&format!(
                "{seq} FETCH ({uid_part}FLAGS {})",
                flag_list(&info.flags)
            )));
        }
        Reply::ok(format!("{}STORE completed", if uid { "UID " } else { "" })).untagged(lines)
    }

    /// RFC 9051 §6.4.3: removes every `\Deleted` message and reports each
    /// with `* n EXPUNGE`, numbers shifting as it goes.
    async fn expunge(&mut self) -> Reply {
        let State::Selected { account, mailbox } = &mut self.state else {
            return Reply::bad("no mailbox selected");
        };
        if mailbox.read_only {
            return Reply::no("mailbox is read-only").code("READ-ONLY");
        }
        let expunged = match self.shared.store.expunge(account, &mailbox.name, &[]).await {
            Ok(expunged) => expunged,
            Err(error) => return store_failure(error),
        };
        let mut lines = Vec::new();
        for uid in expunged {
            if let Some(index) = mailbox.uids.iter().position(|&u| u == uid) {
                mailbox.uids.remove(index);
                lines.push(untagged(&format!("{} EXPUNGE", index + 1)));
            }
        }
        Reply::ok("EXPUNGE completed").untagged(lines)
    }

    /// RFC 9051 §6.4.1 CLOSE (expunges silently unless read-only) and
    /// RFC 3691 UNSELECT (does not).
    async fn close(&mut self, expunge: bool) -> Reply {
        let State::Selected { account, mailbox } = &self.state else {
            return Reply::bad("no mailbox selected");
        };
        if expunge
            && !mailbox.read_only
            && let Err(error) = self.shared.store.expunge(account, &mailbox.name, &[]).await
        {
            return store_failure(error);
        }
        self.state = State::Authenticated {
            account: account.clone(),
        };
        self.dirty = false;
        Reply::ok(if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        })
    }

    /// RFC 2177 IDLE: `+ idling`, then changes as they happen until `DONE`.
    /// Returns `false` when the session must end.
    async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        tag: &str,
        shutdown: &CancellationToken,
    ) -> std::io::Result<bool> {
        if self.account().is_none() {
            io.send(&response::tagged(tag, Status::Bad, None, "LOGIN first"))
                .await?;
            return Ok(true);
        }
        io.send(b"+ idling\r\n").await?;
        self.drain_events();
        if self.dirty {
            for line in self.sync(true).await {
                io.writer.write_all(&line).await?;
            }
            io.writer.flush().await?;
        }
        enum IdleWake {
            Line(std::io::Result<Line>),
            Event(Option<MailboxEvent>),
            Shutdown,
            Timeout,
        }
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + self.shared.limits.imap_idle_timeout;
        loop {
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => IdleWake::Shutdown,
                _ = tokio::time::sleep_until(deadline) => IdleWake::Timeout,
                event = next_event(&mut self.events) => IdleWake::Event(event),
                line = read_line(&mut io.reader, &mut buf, 64) => IdleWake::Line(line),
            };
            match wake {
                IdleWake::Shutdown => {
                    io.send(b"* BYE server shutting down\r\n").await?;
                    return Ok(false);
                }
                IdleWake::Timeout => {
                    io.send(b"* BYE autologout; idle for too long\r\n").await?;
                    return Ok(false);
                }
                IdleWake::Event(None) => {
                    self.events = None;
                }
                IdleWake::Event(Some(event)) => {
                    if !self.concerns_selected(&event) {
                        continue;
                    }
                    for line in self.sync(true).await {
                        io.writer.write_all(&line).await?;
                    }
                    io.writer.flush().await?;
                }
                IdleWake::Line(line) => {
                    let done = match line? {
                        Line::Eof => return Ok(false),
                        Line::TooLong => false,
                        Line::Complete => buf.eq_ignore_ascii_case(b"DONE"),
                    };
                    let reply = if done {
                        response::tagged(tag, Status::Ok, None, "IDLE terminated")
                    } else {
                        response::tagged(tag, Status::Bad, None, "expected DONE")
                    };
                    io.send(&reply).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Adds changes of the selected mailbox seen through events since the
    /// last command (new mail as `* n EXISTS`). EXPUNGE responses are only
    /// sent by NOOP/CHECK/IDLE: RFC 9051 §7.5.2 forbids them during FETCH,
    /// STORE and SEARCH, where they would shift the numbers being used.
    async fn with_pending_changes(&mut self, body: &CommandBody, mut reply: Reply) -> Reply {
        self.drain_events();
        if !self.dirty || matches!(body, CommandBody::Noop | CommandBody::Check) {
            return reply;
        }
        let lines = self.sync(false).await;
        let mut untagged = lines;
        untagged.append(&mut reply.untagged);
        reply.untagged = untagged;
        reply
    }

    /// Takes every event already waiting, without blocking.
    fn drain_events(&mut self) {
        loop {
            let Some(events) = self.events.as_mut() else {
                return;
            };
            match events.next().now_or_never() {
                Some(Some(event)) => {
                    if self.concerns_selected(&event) {
                        self.dirty = true;
                    }
                }
                Some(None) => {
                    self.events = None;
                    return;
                }
                None => return,
            }
        }
    }

    fn concerns_selected(&self, event: &MailboxEvent) -> bool {
        match &self.state {
            State::Selected { mailbox, .. } => {
                event.mailbox == mailbox.name
                    || (mailbox.name == "INBOX" && event.mailbox.eq_ignore_ascii_case("INBOX"))
            }
            _ => false,
        }
    }

    /// Brings the session's view of the selected mailbox up to date with the
    /// mailstore and returns the untagged responses that say so.
    async fn sync(&mut self, allow_expunge: bool) -> Vec<Vec<u8>> {
        let State::Selected { account, mailbox } = &mut self.state else {
            return Vec::new();
        };
        self.dirty = false;
        let messages = match self
            .shared
            .store
            .list_messages(account, &mailbox.name)
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, "imap: cannot refresh mailbox");
                return Vec::new();
            }
        };
        let current: HashSet<u32> = messages.iter().map(|m| m.uid).collect();
        let mut lines = Vec::new();
        if allow_expunge {
            let mut index = 0;
            while index < mailbox.uids.len() {
                if current.contains(&mailbox.uids[index]) {
                    index += 1;
                } else {
                    mailbox.uids.remove(index);
                    lines.push(untagged(&format!("{} EXPUNGE", index + 1)));
                }
            }
        }
        let known_max = mailbox.uids.last().copied().unwrap_or(0);
        let before = mailbox.uids.len();
        mailbox
            .uids
            .extend(messages.iter().map(|m| m.uid).filter(|&u| u > known_max));
        if mailbox.uids.len() != before {
            lines.push(untagged(&format!("{} EXISTS", mailbox.uids.len())));
        }
        lines
    }

    fn account(&self) -> Option<String> {
        match &self.state {
            State::Authenticated { account } | State::Selected { account, .. } => {
                Some(account.clone())
            }
            _ => None,
        }
    }
}

/// Reads one complete command: a line, and for each literal it announces,
/// the literal's bytes and the line after. Synchronising literals are
/// invited with `+` (RFC 9051 §7.5).
async fn read_command<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Input> {
    buf.clear();
    loop {
        let line_start = buf.len();
        let room = MAX_COMMAND_BYTES.saturating_sub(line_start);
        match read_line(&mut io.reader, buf, room).await? {
            Line::Eof => return Ok(Input::Eof),
            Line::TooLong => return Ok(Input::TooLong(parser::leading_tag(buf))),
            Line::Complete => {}
        }
        let Some(literal) = parser::trailing_literal(&buf[line_start..]) else {
            return Ok(Input::Command(std::mem::take(buf)));
        };
        let room = MAX_COMMAND_BYTES.saturating_sub(buf.len() + 2);
        let too_big = literal.length > MAX_LITERAL_BYTES as u64 || literal.length > room as u64;
        if too_big {
            return Ok(Input::LiteralRefused {
                tag: parser::leading_tag(buf),
                close: !literal.synchronizing,
            });
        }
        if literal.synchronizing {
            io.send(b"+ Ready for literal data\r\n").await?;
        }
        buf.extend_from_slice(b"\r\n");
        let start = buf.len();
        buf.resize(start + literal.length as usize, 0);
        io.reader.read_exact(&mut buf[start..]).await?;
    }
}

async fn next_event(events: &mut Option<BoxStream<'static, MailboxEvent>>) -> Option<MailboxEvent> {
    match events {
        Some(stream) => stream.next().await,
        None => futures::future::pending().await,
    }
}

/// The (sequence number, UID) pairs a set names. For message sequence
/// numbers, a number beyond the mailbox is an error (RFC 9051 §9
/// `seq-number`); for UIDs, absent ones are ignored (§6.4.9).
fn resolve(set: &SequenceSet, uid: bool, uids: &[u32]) -> Result<Vec<(u32, u32)>, Reply> {
    if uid {
        let largest = uids.last().copied().unwrap_or(0);
        return Ok(uids
            .iter()
            .enumerate()
            .filter(|&(_, &u)| set.contains(u, largest))
            .map(|(i, &u)| (i as u32 + 1, u))
            .collect());
    }
    let count = uids.len() as u32;
    let out_of_range = set.0.iter().any(|&(a, b)| {
        [a, b].into_iter().any(|n| match n {
            SeqNumber::Value(v) => v > count,
            SeqNumber::Star => count == 0,
        })
    });
    if out_of_range {
        return Err(Reply::bad("invalid message sequence number"));
    }
    Ok((1..=count)
        .filter(|&seq| set.contains(seq, count))
        .map(|seq| (seq, uids[seq as usize - 1]))
        .collect())
}

fn by_uid(messages: Vec<MessageInfo>) -> BTreeMap<u32, MessageInfo> {
    messages.into_iter().map(|m| (m.uid, m)).collect()
}

fn has_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// One `* n FETCH (...)` response. UID FETCH always includes UID, and FLAGS
/// are included when fetching just set `\Seen` (RFC 9051 §6.4.5, §6.4.9).
fn fetch_line(
    seq: u32,
    uid_command: bool,
    items: &[FetchItem],
    info: &MessageInfo,
    body: Option<&[u8]>,
    flags_changed: bool,
) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    if uid_command && !items.contains(&FetchItem::Uid) {
        parts.push(format!("UID {}", info.uid).into_bytes());
    }
    for item in items {
        let mut part = Vec::new();
        match *item {
            FetchItem::Flags => part.extend(format!("FLAGS {}", flag_list(&info.flags)).bytes()),
            FetchItem::Uid => part.extend(format!("UID {}", info.uid).bytes()),
            FetchItem::Rfc822Size => part.extend(format!("RFC822.SIZE {}", info.size).bytes()),
            FetchItem::InternalDate => part
                .extend(format!("INTERNALDATE {}", internal_date(info.internal_date_ms)).bytes()),
            FetchItem::Rfc822 => {
                part.extend_from_slice(b"RFC822 ");
                response::literal(&mut part, body.unwrap_or_default());
            }
            FetchItem::Rfc822Header => {
                part.extend_from_slice(b"RFC822.HEADER ");
                response::literal(&mut part, split_header(body.unwrap_or_default()).0);
            }
            FetchItem::Rfc822Text => {
                part.extend_from_slice(b"RFC822.TEXT ");
                response::literal(&mut part, split_header(body.unwrap_or_default()).1);
            }
            FetchItem::Body {
                section, partial, ..
            } => {
                let whole = body.unwrap_or_default();
                let (name, data) = match section {
                    Section::Full => ("", whole),
                    Section::Header => ("HEADER", split_header(whole).0),
                    Section::Text => ("TEXT", split_header(whole).1),
                };
                part.extend(format!("BODY[{name}]").bytes());
                let data = match partial {
                    // RFC 9051 §6.4.5: `<origin>` in the answer; beyond the
                    // end is an empty string.
                    Some((offset, length)) => {
                        part.extend(format!("<{offset}>").bytes());
                        let start = (offset as usize).min(data.len());
                        let end = start.saturating_add(length as usize).min(data.len());
                        &data[start..end]
                    }
                    None => data,
                };
                part.push(b' ');
                response::literal(&mut part, data);
            }
        }
        parts.push(part);
    }
    if flags_changed && !items.contains(&FetchItem::Flags) {
        parts.push(format!("FLAGS {}", flag_list(&info.flags)).into_bytes());
    }
    let mut line = format!("* {seq} FETCH (").into_bytes();
    line.extend_from_slice(&parts.join(&b' '));
    line.extend_from_slice(b")\r\n");
    line
}

/// Splits a message into header (blank line included) and text
/// (RFC 9051 §6.4.5 `HEADER`, `TEXT`). A message without a blank line is
/// all header.
fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let crlf = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = message.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(message.len()),
    };
    message.split_at(end)
}

/// RFC 9051 §6.3.9: `*` matches any characters, `%` any but the hierarchy
/// delimiter. INBOX matches case-insensitively (§5.1).
pub fn list_matches(pattern: &str, name: &str) -> bool {
    fn matches(pattern: &[char], name: &[char]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some(('*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
            Some(('%', rest)) => (0..=name.len())
                .take_while(|&i| i == 0 || name[i - 1] != DELIMITER)
                .any(|i| matches(rest, &name[i..])),
            Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
        }
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name_chars: Vec<char> = name.chars().collect();
    if matches(&pattern, &name_chars) {
        return true;
    }
    if name == "INBOX" || name.starts_with("INBOX/") {
        let upper: Vec<char> = pattern
            .iter()
            .enumerate()
            .map(|(i, c)| if i < 5 { c.to_ascii_uppercase() } else { *c })
            .collect();
        return matches(&upper, &name_chars);
    }
    false
}

/// Maps a mailstore failure to a tagged NO with a response code
/// (RFC 5530).
fn store_failure(error: AccessError) -> Reply {
    match error {
        AccessError::NotFound(_) => Reply::no("no such mailbox or message").code("NONEXISTENT"),
        AccessError::Refused(message) => Reply::no(format!("refused: {message}")).code("CANNOT"),
        AccessError::Unavailable(_) => {
            warn!(%error, "imap: mailstore unavailable");
            Reply::no("mailstore temporarily unavailable").code("UNAVAILABLE")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        assert!(list_matches("*", "INBOX"));
        assert!(list_matches("*", "Archive/2024"));
        assert!(list_matches("%", "Sent"));
        assert!(!list_matches("%", "Archive/2024"));
        assert!(list_matches("Archive/%", "Archive/2024"));
        assert!(list_matches("inbox", "INBOX"));
        assert!(!list_matches("Sent", "Sent Items"));
        assert!(list_matches("S*s", "Sent Items"));
    }

    #[test]
    fn headers_and_text() {
        assert_eq!(
            split_header(b"A: 1\r\n\r\nbody\r\n"),
            (&b"A: 1\r\n\r\n"[..], &b"body\r\n"[..])
        );
        assert_eq!(split_header(b"A: 1\r\n"), (&b"A: 1\r\n"[..], &b""[..]));
    }

    #[test]
    fn sequence_numbers_beyond_the_mailbox_are_bad() {
        let set = SequenceSet(vec![(SeqNumber::Value(4), SeqNumber::Value(4))]);
        assert!(resolve(&set, false, &[10, 11, 12]).is_err());
        assert_eq!(resolve(&set, true, &[10, 11, 12]).unwrap(), vec![]);
        let all = SequenceSet(vec![(SeqNumber::Value(1), SeqNumber::Star)]);
        assert_eq!(
            resolve(&all, false, &[10, 11]).unwrap(),
            vec![(1, 10), (2, 11)]
        );
        let uid_range = SequenceSet(vec![(SeqNumber::Value(11), SeqNumber::Star)]);
        assert_eq!(
            resolve(&uid_range, true, &[10, 11, 12]).unwrap(),
            vec![(2, 11), (3, 12)]
        );
    }
}
