//! One IMAP session (RFC 9051, compatible with RFC 3501 clients): a loop
//! that reads a complete command (answering `+` to synchronising literals),
//! parses it, calls the handler of its verb and writes the reply. Handlers
//! return [`Reply`] values; only the loop (and IDLE, which is a loop of its
//! own) writes to the stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::BoxStream;
use mailfleet_proto::queue::MailboxEvent;
use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::imap_mime::Rendered;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf,
};
use tracing::{debug, info, warn};

use super::mime;
use super::parser::{
    self, CommandBody, FetchItem, ListOptions, MAX_COMMAND_BYTES, MAX_LITERAL_BYTES, SearchKey,
    SearchReturn, SeqNumber, SequenceSet, StatusItem, StoreMode,
};
use super::response::{self, Reply, Status, flag_list, internal_date, untagged};
use super::search::{self, Candidate};
use super::utf7;
use crate::io::{Line, read_line};
use crate::store::{AccessError, FlagMode, MessageInfo};
use crate::{Connection, Shared};

/// RFC 9051 §7.2.2 capabilities. IMAP4rev2 with what RFC 9051 §6.1.1 folds
/// into it (NAMESPACE, UNSELECT, UIDPLUS, ESEARCH, SEARCHRES, ENABLE, IDLE,
/// SASL-IR, LIST-EXTENDED, LIST-STATUS, MOVE, LITERAL+ (a superset of
/// LITERAL-), BINARY, SPECIAL-USE, STATUS=SIZE), and IMAP4rev1 for older
/// clients: rev2 behaviour starts only after `ENABLE IMAP4rev2`.
pub const CAPABILITIES: &str = "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE \
     UNSELECT UIDPLUS MOVE CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS STATUS=SIZE \
     CONDSTORE ESEARCH SEARCHRES QUOTA QUOTA=RES-STORAGE BINARY UTF8=ACCEPT";

/// The hierarchy delimiter of every mailbox name.
pub const DELIMITER: char = '/';

/// The system flags (RFC 9051 §2.3.2) every mailbox accepts.
const SYSTEM_FLAGS: &str = r"\Answered \Flagged \Deleted \Seen \Draft";

/// Serves one IMAP connection until LOGOUT, disconnect, idle timeout or
/// shutdown, as if from loopback without TLS (session tests).
pub async fn serve<S>(stream: S, shared: Arc<Shared>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    serve_connection(stream, shared, shutdown, Connection::local()).await
}

/// Serves one IMAP connection; after STARTTLS (RFC 9051 §6.2.1) the same
/// session goes on over TLS, anything the client pipelined in plain text
/// after the command being dropped with the read buffer.
pub async fn serve_connection<S>(
    stream: S,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    connection: Connection,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let _guard = shared.metrics.session("imap");
    let (reader, writer) = tokio::io::split(stream);
    let mut io = Io {
        reader: BufReader::new(reader),
        writer: BufWriter::new(writer),
    };
    let mut session = Session::new(shared.clone(), connection);
    debug!("imap session started");
    match session.run(&mut io, &shutdown).await {
        Ok(Outcome::Closed) => debug!("imap session ended"),
        Ok(Outcome::StartTls) => {
            let stream = io.reader.into_inner().unsplit(io.writer.into_inner());
            let Some(tls) = shared.tls.as_ref() else {
                return;
            };
            let stream = match crate::tls_handshake(tls, stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    info!(%error, "imap starttls handshake failed");
                    return;
                }
            };
            session.connection.tls = true;
            let (reader, writer) = tokio::io::split(stream);
            let mut io = Io {
                reader: BufReader::new(reader),
                writer: BufWriter::new(writer),
            };
            if let Err(error) = session.run(&mut io, &shutdown).await {
                debug!(%error, "imap session ended by i/o error");
            }
            let _ = io.writer.shutdown().await;
            return;
        }
        Err(error) => debug!(%error, "imap session ended by i/o error"),
    }
    let _ = io.writer.shutdown().await;
}

/// How [`Session::run`] ended.
enum Outcome {
    Closed,
    /// STARTTLS was accepted: the caller does the handshake and runs the
    /// session again over TLS.
    StartTls,
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
    /// The MODSEQ of each message as this session last reported it: a
    /// higher one in the mailstore is a flag change by someone else, sent
    /// as an unsolicited FETCH (RFC 9051 §7.4.2, §5.2).
    modseqs: HashMap<u32, u64>,
    /// The mailbox's HIGHEST_MODSEQ when this view was last brought up to
    /// date: the next sync asks only for what changed after it.
    synced_modseq: u64,
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
    /// RFC 7162 §3.1: CONDSTORE enabled (ENABLE, SELECT (CONDSTORE), or a
    /// command using a MODSEQ); FETCH and STORE replies then carry MODSEQ.
    condstore: bool,
    /// The tag of the command being handled (RFC 4731 ESEARCH repeats it).
    tag: String,
    connection: Connection,
    greeted: bool,
    /// `ENABLE IMAP4rev2` was given (RFC 9051 §6.3.1): SEARCH answers
    /// ESEARCH, SELECT drops RECENT and UNSEEN and sends LIST.
    rev2: bool,
    /// RFC 5182: the UIDs saved by `SEARCH RETURN (SAVE)`, used as `$`.
    saved: Vec<u32>,
    /// Mailbox names are UTF-8 on the wire (RFC 6855 `ENABLE UTF8=ACCEPT`,
    /// or IMAP4rev2); modified UTF-7 otherwise (RFC 3501 §5.1.3).
    utf8: bool,
}

impl Session {
    fn new(shared: Arc<Shared>, connection: Connection) -> Self {
        Session {
            shared,
            state: State::NotAuthenticated,
            events: None,
            dirty: false,
            condstore: false,
            tag: String::new(),
            connection,
            greeted: false,
            rev2: false,
            saved: Vec::new(),
            utf8: false,
        }
    }

    /// RFC 9051 §7.2.2 with RFC 9051 §6.2.1/§7.1: STARTTLS while it can be
    /// used, LOGINDISABLED and no AUTH=PLAIN while plain text passwords are
    /// refused.
    fn capabilities(&self) -> String {
        let mut out = CAPABILITIES.to_owned();
        if self.shared.tls.is_some() && !self.connection.tls {
            out.push_str(" STARTTLS");
        }
        if self.shared.plaintext_auth_allowed(&self.connection) {
            out.push_str(" AUTH=PLAIN");
        } else {
            out.push_str(" LOGINDISABLED");
        }
        out
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Outcome> {
        if !self.greeted {
            // RFC 9051 §7.1.1: the greeting may carry the capabilities.
            let greeting = format!(
                "* OK [CAPABILITY {}] {} Mailfleet IMAP ready\r\n",
                self.capabilities(),
                self.shared.limits.hostname
            );
            io.send(greeting.as_bytes()).await?;
            self.greeted = true;
        }
        let closed = Ok(Outcome::Closed);
        let mut buf = Vec::new();
        loop {
            if matches!(self.state, State::Logout) {
                return closed;
            }
            let timeout = self.shared.limits.imap_idle_timeout;
            let wake = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = tokio::time::sleep(timeout) => Wake::Timeout,
                input = read_command(io, &mut buf, self.shared.limits.max_append_bytes) => Wake::Input(input),
            };
            let input = match wake {
                Wake::Shutdown => {
                    io.send(b"* BYE server shutting down\r\n").await?;
                    return closed;
                }
                Wake::Timeout => {
                    // RFC 9051 §5.4: autologout timer.
                    info!("imap autologout after idle timeout");
                    io.send(b"* BYE autologout; idle for too long\r\n").await?;
                    return closed;
                }
                Wake::Input(input) => input?,
            };
            let command = match input {
                Input::Eof => return closed,
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
                        io.send(b"* BYE literal too large\r\n").await?;
                        return closed;
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
                    return closed;
                }
                continue;
            }
            if command.body == CommandBody::StartTls {
                let reply = self.starttls();
                io.send(&reply.tagged_line(&command.tag)).await?;
                if reply.status == Status::Ok {
                    return Ok(Outcome::StartTls);
                }
                continue;
            }
            if let CommandBody::Authenticate { mechanism, initial } = &command.body {
                let reply = self.authenticate(io, mechanism, initial.clone()).await?;
                io.send(&reply.tagged_line(&command.tag)).await?;
                continue;
            }
            self.tag = command.tag.clone();
            let reply = self.handle(command.body.clone()).await;
            let reply = self.with_pending_changes(&command.body, reply).await;
            for line in &reply.untagged {
                io.writer.write_all(line).await?;
            }
            io.send(&reply.tagged_line(&command.tag)).await?;
            if reply.close {
                return closed;
            }
        }
    }

    /// Dispatches to the handler of the verb, after checking that the verb
    /// is allowed in the current state (RFC 9051 §6).
    async fn handle(&mut self, body: CommandBody) -> Reply {
        let body = self.expand_saved(body);
        let body = match utf7::decode_names(body, self.utf8) {
            Ok(body) => body,
            Err(error) => return Reply::bad(error.to_string()),
        };
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
            // Handled by the loop itself, which owns the stream.
            CommandBody::Authenticate { .. } | CommandBody::Idle | CommandBody::StartTls => {
                Reply::bad("unexpected")
            }
            CommandBody::Enable { capabilities } => self.enable(&capabilities),
            CommandBody::Id { parameters } => self.id(&parameters),
            CommandBody::Namespace => self.namespace(),
            CommandBody::List {
                reference,
                patterns,
                options,
            } => self.list(&reference, &patterns, &options).await,
            CommandBody::Lsub { reference, pattern } => self.lsub(&reference, &pattern).await,
            CommandBody::Select { mailbox, condstore } => {
                self.select(mailbox, false, condstore).await
            }
            CommandBody::Examine { mailbox, condstore } => {
                self.select(mailbox, true, condstore).await
            }
            CommandBody::Create { mailbox } => self.create(&mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe_mailbox(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe_mailbox(&mailbox, false).await,
            CommandBody::Status { mailbox, items } => self.status(&mailbox, &items).await,
            CommandBody::Append {
                mailbox,
                flags,
                date_ms,
                message,
            } => self.append(&mailbox, &flags, date_ms, &message).await,
            CommandBody::Fetch {
                uid,
                set,
                items,
                changed_since,
            } => self.fetch(uid, &set, &items, changed_since).await,
            CommandBody::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.store(uid, &set, mode, silent, &flags, unchanged_since)
                    .await
            }
            CommandBody::Copy {
                uid,
                set,
                mailbox,
                move_messages,
            } => self.copy(uid, &set, &mailbox, move_messages).await,
            CommandBody::Search { uid, returns, key } => {
                self.search(uid, returns.as_deref(), &key).await
            }
            CommandBody::Expunge => self.expunge(None).await,
            CommandBody::UidExpunge { set } => self.expunge(Some(&set)).await,
            CommandBody::GetQuota { root } => self.get_quota(&root, None).await,
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota("", Some(&mailbox)).await,
            CommandBody::Close => self.close(true).await,
            CommandBody::Unselect => self.close(false).await,
        }
    }

    /// RFC 5182 §2.1: `$` stands for the saved result, as UIDs for UID
    /// commands and as the current sequence numbers of those UIDs otherwise.
    fn expand_saved(&self, body: CommandBody) -> CommandBody {
        let State::Selected { mailbox, .. } = &self.state else {
            return body;
        };
        let expand = |set: SequenceSet, uid: bool| -> SequenceSet {
            if !set.is_saved() {
                return set;
            }
            let numbers: Vec<u32> = if uid {
                self.saved.clone()
            } else {
                mailbox
                    .uids
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| self.saved.contains(u))
                    .map(|(i, _)| i as u32 + 1)
                    .collect()
            };
            SequenceSet(
                numbers
                    .into_iter()
                    .map(|n| (SeqNumber::Value(n), SeqNumber::Value(n)))
                    .collect(),
            )
        };
        fn keys(key: SearchKey, expand: &dyn Fn(SequenceSet, bool) -> SequenceSet) -> SearchKey {
            match key {
                SearchKey::Uid(set) => SearchKey::Uid(expand(set, true)),
                SearchKey::Sequence(set) => SearchKey::Sequence(expand(set, false)),
                SearchKey::Not(k) => SearchKey::Not(Box::new(keys(*k, expand))),
                SearchKey::Or(a, b) => {
                    SearchKey::Or(Box::new(keys(*a, expand)), Box::new(keys(*b, expand)))
                }
                SearchKey::And(list) => {
                    SearchKey::And(list.into_iter().map(|k| keys(k, expand)).collect())
                }
                other => other,
            }
        }
        match body {
            CommandBody::Fetch {
                uid,
                set,
                items,
                changed_since,
            } => CommandBody::Fetch {
                uid,
                set: expand(set, uid),
                items,
                changed_since,
            },
            CommandBody::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => CommandBody::Store {
                uid,
                set: expand(set, uid),
                mode,
                silent,
                flags,
                unchanged_since,
            },
            CommandBody::Copy {
                uid,
                set,
                mailbox,
                move_messages,
            } => CommandBody::Copy {
                uid,
                set: expand(set, uid),
                mailbox,
                move_messages,
            },
            CommandBody::UidExpunge { set } => CommandBody::UidExpunge {
                set: expand(set, true),
            },
            CommandBody::Search { uid, returns, key } => CommandBody::Search {
                uid,
                returns,
                key: keys(key, &expand),
            },
            other => other,
        }
    }

    /// RFC 9051 §6.1.1
    fn capability(&self) -> Reply {
        Reply::ok("CAPABILITY completed").untagged(vec![untagged(&format!(
            "CAPABILITY {}",
            self.capabilities()
        ))])
    }

    /// RFC 9051 §6.2.1 STARTTLS: only before authentication, only once.
    fn starttls(&self) -> Reply {
        if self.connection.tls {
            return Reply::bad("TLS is already active");
        }
        if !matches!(self.state, State::NotAuthenticated) {
            return Reply::bad("STARTTLS only before authentication");
        }
        if self.shared.tls.is_none() {
            return Reply::no("TLS is not available").code("UNAVAILABLE");
        }
        Reply::ok("begin TLS negotiation now")
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
        if !self.shared.plaintext_auth_allowed(&self.connection) {
            // RFC 9051 §6.2.3 / RFC 5530
            return Reply::no("use STARTTLS first").code("PRIVACYREQUIRED");
        }
        self.check_credentials(user, password, "LOGIN").await
    }

    /// Checks a user name and password and, when they are right, moves to
    /// the authenticated state.
    async fn check_credentials(&mut self, user: &str, password: &str, verb: &str) -> Reply {
        match self.shared.store.authenticate(user, password).await {
            Ok(Some(account)) => {
                self.shared.metrics.login("imap", true);
                info!(%account, "imap login");
                self.subscribe(&account).await;
                self.state = State::Authenticated { account };
                Reply::ok(format!("{verb} completed"))
                    .code(format!("CAPABILITY {}", self.capabilities()))
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

    /// RFC 9051 §6.2.2 AUTHENTICATE with SASL PLAIN (RFC 4616), the initial
    /// response inline (SASL-IR, RFC 4959) or after a `+` continuation.
    async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        mechanism: &str,
        initial: Option<String>,
    ) -> std::io::Result<Reply> {
        if !matches!(self.state, State::NotAuthenticated) {
            return Ok(Reply::bad("already authenticated"));
        }
        if mechanism != "PLAIN" {
            return Ok(Reply::no("unsupported mechanism").code("CANNOT"));
        }
        if !self.shared.plaintext_auth_allowed(&self.connection) {
            return Ok(Reply::no("use STARTTLS first").code("PRIVACYREQUIRED"));
        }
        let response = match initial {
            Some(initial) => initial.into_bytes(),
            None => {
                io.send(b"+ \r\n").await?;
                let mut line = Vec::new();
                match read_line(&mut io.reader, &mut line, 4096).await? {
                    Line::Complete => line,
                    Line::TooLong => return Ok(Reply::bad("response too long")),
                    Line::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        // RFC 4959 §3: "=" is an empty initial response; RFC 9051 §6.2.2:
        // "*" cancels.
        if response == b"*" {
            return Ok(Reply::bad("authentication cancelled"));
        }
        let decoded = if response == b"=" {
            Some(Vec::new())
        } else {
            mailfleet_runtime::base64::decode(&response)
        };
        let Some(decoded) = decoded else {
            return Ok(Reply::bad("invalid base64"));
        };
        // RFC 4616 §2: [authzid] NUL authcid NUL passwd
        let mut fields = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Ok(Reply::bad("malformed PLAIN response"));
        };
        let (Ok(authzid), Ok(user), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(user),
            std::str::from_utf8(password),
        ) else {
            return Ok(Reply::bad("PLAIN response is not UTF-8"));
        };
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(user) {
            return Ok(Reply::no("cannot act as another user").code("AUTHORIZATIONFAILED"));
        }
        Ok(self.check_credentials(user, password, "AUTHENTICATE").await)
    }

    /// RFC 5161 ENABLE: CONDSTORE is the one extension that needs it here.
    fn enable(&mut self, capabilities: &[String]) -> Reply {
        if !matches!(
            self.state,
            State::Authenticated { .. } | State::Selected { .. }
        ) {
            return Reply::bad("LOGIN first");
        }
        let mut enabled = Vec::new();
        for capability in capabilities {
            match capability.as_str() {
                "CONDSTORE" => {
                    self.condstore = true;
                    enabled.push("CONDSTORE");
                }
                "IMAP4REV2" => {
                    self.rev2 = true;
                    // RFC 9051 §5.1: rev2 mailbox names are UTF-8.
                    self.utf8 = true;
                    enabled.push("IMAP4rev2");
                }
                "UTF8=ACCEPT" => {
                    self.utf8 = true;
                    enabled.push("UTF8=ACCEPT");
                }
                _ => {}
            }
        }
        Reply::ok("ENABLE completed").untagged(vec![untagged(
            format!("ENABLED {}", enabled.join(" ")).trim_end(),
        )])
    }

    /// RFC 2971 ID: logged, answered with our name.
    fn id(&self, parameters: &[(String, String)]) -> Reply {
        let client: Vec<String> = parameters
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("name") || k.eq_ignore_ascii_case("version"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        debug!(client = %client.join(" "), "imap client id");
        Reply::ok("ID completed").untagged(vec![untagged(&format!(
            "ID (\"name\" \"Mailfleet\" \"version\" \"{}\")",
            env!("CARGO_PKG_VERSION")
        ))])
    }

    /// RFC 2342 NAMESPACE: one personal namespace, no others.
    fn namespace(&self) -> Reply {
        if self.account().is_none() {
            return Reply::bad("LOGIN first");
        }
        Reply::ok("NAMESPACE completed").untagged(vec![untagged(&format!(
            "NAMESPACE ((\"\" \"{DELIMITER}\")) NIL NIL"
        ))])
    }

    async fn subscribe(&mut self, account: &str) {
        match self.shared.events.subscribe(account).await {
            Ok(stream) => self.events = Some(stream),
            Err(error) => {
                warn!(%error, "imap: no change events; new mail shows at NOOP only");
            }
        }
    }

    /// RFC 9051 §6.3.9 LIST with RFC 5258 LIST-EXTENDED options: `*`
    /// matches everything and `%` everything but the delimiter.
    async fn list(&mut self, reference: &str, patterns: &[String], options: &ListOptions) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        if patterns.len() == 1 && patterns[0].is_empty() && !options.extended {
            // The hierarchy delimiter and root of the reference.
            return Reply::ok("LIST completed").untagged(vec![untagged(&format!(
                "LIST (\\Noselect) \"{DELIMITER}\" \"\""
            ))]);
        }
        let mailboxes = match self.shared.store.list_mailboxes(&account).await {
            Ok(mailboxes) => mailboxes,
            Err(error) => return store_failure(error),
        };
        let names: Vec<&str> = mailboxes.iter().map(|m| m.name.as_str()).collect();
        let mut lines = Vec::new();
        for mailbox in &mailboxes {
            let matched = patterns
                .iter()
                .any(|p| list_matches(&format!("{reference}{p}"), &mailbox.name));
            if !matched
                || (options.subscribed_only && !mailbox.subscribed)
                || (options.special_use_only && mailbox.attributes.is_empty())
            {
                continue;
            }
            let mut attributes: Vec<String> = Vec::new();
            // RFC 6154 §2: special-use attributes in every LIST reply unless
            // the client asked for extended LIST without SPECIAL-USE.
            if !options.extended || options.return_special_use {
                attributes.extend(mailbox.attributes.iter().map(|a| {
                    if a.starts_with('\\') {
                        a.clone()
                    } else {
                        format!("\\{a}")
                    }
                }));
            }
            let prefix = format!("{}{DELIMITER}", mailbox.name);
            let has_children = names.iter().any(|n| n.starts_with(&prefix));
            attributes.push(if has_children {
                "\\HasChildren".into()
            } else {
                "\\HasNoChildren".into()
            });
            if options.return_subscribed && mailbox.subscribed {
                attributes.push("\\Subscribed".into());
            }
            let mut line =
                format!("* LIST ({}) \"{DELIMITER}\" ", attributes.join(" ")).into_bytes();
            response::string(&mut line, &utf7::wire_name(&mailbox.name, self.utf8));
            line.extend_from_slice(b"\r\n");
            lines.push(line);
            // RFC 5819 §2: LIST-STATUS
            if !options.return_status.is_empty()
                && let Ok(status) = self
                    .status_line(&account, &mailbox.name, &options.return_status)
                    .await
            {
                lines.push(status);
            }
        }
        Reply::ok("LIST completed").untagged(lines)
    }

    /// RFC 3501 §6.3.9 LSUB (kept in IMAP4rev2 servers for rev1 clients).
    async fn lsub(&mut self, reference: &str, pattern: &str) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        let mailboxes = match self.shared.store.list_mailboxes(&account).await {
            Ok(mailboxes) => mailboxes,
            Err(error) => return store_failure(error),
        };
        let full_pattern = format!("{reference}{pattern}");
        let mut lines = Vec::new();
        for mailbox in mailboxes.iter().filter(|m| m.subscribed) {
            if !list_matches(&full_pattern, &mailbox.name) {
                continue;
            }
            let mut line = format!("* LSUB () \"{DELIMITER}\" ").into_bytes();
            response::string(&mut line, &utf7::wire_name(&mailbox.name, self.utf8));
            line.extend_from_slice(b"\r\n");
            lines.push(line);
        }
        Reply::ok("LSUB completed").untagged(lines)
    }

    /// RFC 9051 §6.3.4 CREATE; a trailing delimiter only says the name will
    /// have children.
    async fn create(&mut self, mailbox: &str) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        let name = mailbox.trim_end_matches(DELIMITER);
        if name.eq_ignore_ascii_case("INBOX") {
            return Reply::no("INBOX always exists").code("ALREADYEXISTS");
        }
        match self.shared.store.create_mailbox(&account, name).await {
            Ok(()) => Reply::ok("CREATE completed"),
            Err(error) => store_failure(error),
        }
    }

    /// RFC 9051 §6.3.5 DELETE
    async fn delete(&mut self, mailbox: &str) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        if mailbox == "INBOX" {
            return Reply::no("INBOX cannot be deleted").code("CANNOT");
        }
        match self.shared.store.delete_mailbox(&account, mailbox).await {
            Ok(()) => Reply::ok("DELETE completed"),
            Err(error) => store_failure(error),
        }
    }

    /// RFC 9051 §6.3.6 RENAME
    async fn rename(&mut self, from: &str, to: &str) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        match self.shared.store.rename_mailbox(&account, from, to).await {
            Ok(()) => Reply::ok("RENAME completed"),
            Err(error) => store_failure(error),
        }
    }

    /// RFC 9051 §6.3.7 SUBSCRIBE and §6.3.8 UNSUBSCRIBE.
    async fn subscribe_mailbox(&mut self, mailbox: &str, on: bool) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        let verb = if on { "SUBSCRIBE" } else { "UNSUBSCRIBE" };
        match self
            .shared
            .store
            .set_subscribed(&account, mailbox, on)
            .await
        {
            Ok(()) => Reply::ok(format!("{verb} completed")),
            Err(error) => store_failure(error),
        }
    }

    /// RFC 9051 §6.3.11 STATUS
    async fn status(&mut self, mailbox: &str, items: &[StatusItem]) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        match self.status_line(&account, mailbox, items).await {
            Ok(line) => Reply::ok("STATUS completed").untagged(vec![line]),
            Err(error) => store_failure(error),
        }
    }

    async fn status_line(
        &mut self,
        account: &str,
        mailbox: &str,
        items: &[StatusItem],
    ) -> Result<Vec<u8>, AccessError> {
        let status = self.shared.store.select(account, mailbox).await?;
        let needs_messages = items
            .iter()
            .any(|i| matches!(i, StatusItem::Deleted | StatusItem::Size));
        let messages = if needs_messages {
            self.shared.store.list_messages(account, mailbox).await?
        } else {
            Vec::new()
        };
        let mut values = Vec::new();
        for item in items {
            values.push(match item {
                StatusItem::Messages => format!("MESSAGES {}", status.exists),
                StatusItem::UidNext => format!("UIDNEXT {}", status.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", status.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", status.unseen),
                StatusItem::Recent => "RECENT 0".to_owned(),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", status.highest_modseq),
                StatusItem::Deleted => format!(
                    "DELETED {}",
                    messages
                        .iter()
                        .filter(|m| has_flag(&m.flags, "\\Deleted"))
                        .count()
                ),
                StatusItem::Size => {
                    format!("SIZE {}", messages.iter().map(|m| m.size).sum::<u64>())
                }
            });
        }
        let mut line = b"* STATUS ".to_vec();
        response::string(&mut line, &utf7::wire_name(mailbox, self.utf8));
        line.extend_from_slice(format!(" ({})\r\n", values.join(" ")).as_bytes());
        Ok(line)
    }

    /// RFC 9051 §6.3.12 APPEND, answered with RFC 4315 APPENDUID.
    async fn append(
        &mut self,
        mailbox: &str,
        flags: &[String],
        date_ms: Option<i64>,
        message: &[u8],
    ) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        if message.is_empty() {
            return Reply::no("empty message").code("CANNOT");
        }
        match self
            .shared
            .store
            .append(&account, mailbox, message, flags, date_ms.unwrap_or(0))
            .await
        {
            Ok(appended) => Reply::ok("APPEND completed").code(format!(
                "APPENDUID {} {}",
                appended.uid_validity, appended.uid
            )),
            // RFC 9051 §6.3.12: a missing mailbox is NO [TRYCREATE].
            Err(AccessError::NotFound(_)) => Reply::no("no such mailbox").code("TRYCREATE"),
            Err(error) => store_failure(error),
        }
    }

    /// RFC 9051 §6.4.7 COPY and RFC 6851 MOVE, with RFC 4315 COPYUID.
    async fn copy(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        target: &str,
        move_messages: bool,
    ) -> Reply {
        let State::Selected { account, mailbox } = &mut self.state else {
            return Reply::bad("no mailbox selected");
        };
        if move_messages && mailbox.read_only {
            return Reply::no("mailbox is read-only").code("READ-ONLY");
        }
        let targets = match resolve(set, uid, &mailbox.uids) {
            Ok(targets) => targets,
            Err(reply) => return reply,
        };
        let verb = match (uid, move_messages) {
            (false, false) => "COPY",
            (true, false) => "UID COPY",
            (false, true) => "MOVE",
            (true, true) => "UID MOVE",
        };
        if targets.is_empty() {
            return Reply::ok(format!("{verb} completed"));
        }
        let uids: Vec<u32> = targets.iter().map(|&(_, u)| u).collect();
        let copied = match self
            .shared
            .store
            .copy(account, &mailbox.name, target, &uids, move_messages)
            .await
        {
            Ok(copied) => copied,
            Err(AccessError::NotFound(_)) => {
                return Reply::no("no such mailbox").code("TRYCREATE");
            }
            Err(error) => return store_failure(error),
        };
        if let Some(learner) = &self.shared.learner {
            learner.after_copy(
                self.shared.store.clone(),
                account,
                &mailbox.name,
                target,
                &copied,
            );
        }
        let code = (!copied.pairs.is_empty()).then(|| {
            let (from, to): (Vec<u32>, Vec<u32>) = copied.pairs.iter().copied().unzip();
            format!(
                "COPYUID {} {} {}",
                copied.uid_validity,
                compact_set(&from),
                compact_set(&to)
            )
        });
        if !move_messages {
            let reply = Reply::ok(format!("{verb} completed"));
            return match code {
                Some(code) => reply.code(code),
                None => reply,
            };
        }
        // RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
        let mut lines = Vec::new();
        if let Some(code) = code {
            lines.push(untagged(&format!("OK [{code}] moved")));
        }
        for (source, _) in &copied.pairs {
            if let Some(index) = mailbox.uids.iter().position(|u| u == source) {
                mailbox.uids.remove(index);
                lines.push(untagged(&format!("{} EXPUNGE", index + 1)));
            }
        }
        Reply::ok(format!("{verb} completed")).untagged(lines)
    }

    /// RFC 9051 §6.4.4 SEARCH, RFC 4731 ESEARCH when RETURN is given, RFC
    /// 7162 §3.1.5 MODSEQ. Flag, size, date and UID keys use the message
    /// list only; header and body keys read and parse each message.
    async fn search(
        &mut self,
        uid: bool,
        returns: Option<&[SearchReturn]>,
        key: &SearchKey,
    ) -> Reply {
        let State::Selected { account, mailbox } = &self.state else {
            return Reply::bad("no mailbox selected");
        };
        if key.uses_modseq() {
            self.condstore = true;
        }
        let needs_body = key.needs_body();
        // Header keys are answered from what the mailstore parsed at
        // delivery; only BODY/TEXT/other headers read every message.
        let stored_headers = needs_body && key.header_only();
        let listed = if stored_headers {
            self.shared
                .store
                .list_messages_for_search(account, &mailbox.name)
                .await
        } else {
            self.shared
                .store
                .list_messages(account, &mailbox.name)
                .await
        };
        let current = match listed {
            Ok(messages) => by_uid(messages),
            Err(error) => return store_failure(error),
        };
        let max_seq = mailbox.uids.len() as u32;
        let max_uid = mailbox.uids.last().copied().unwrap_or(0);
        let mut hits: Vec<(u32, u32, u64)> = Vec::new();
        for (index, &message_uid) in mailbox.uids.iter().enumerate() {
            let Some(info) = current.get(&message_uid) else {
                continue;
            };
            let content = if stored_headers && !info.search_header.is_empty() {
                Some(mime::Searchable::from_search_header(&info.search_header))
            } else if needs_body {
                match self
                    .shared
                    .store
                    .fetch_body(account, &mailbox.name, message_uid)
                    .await
                {
                    Ok(body) => Some(mime::Searchable::new(&body)),
                    Err(AccessError::NotFound(_)) => continue,
                    Err(error) => return store_failure(error),
                }
            } else {
                None
            };
            let candidate = Candidate {
                seq: index as u32 + 1,
                max_seq,
                max_uid,
                info,
                content: content.as_ref(),
            };
            if search::matches(key, &candidate) {
                hits.push((index as u32 + 1, message_uid, info.modseq));
            }
        }
        let numbers: Vec<u32> = hits
            .iter()
            .map(|&(seq, u, _)| if uid { u } else { seq })
            .collect();
        let highest = hits.iter().map(|h| h.2).max();
        let verb = if uid { "UID SEARCH" } else { "SEARCH" };
        // RFC 9051 §6.4.4: a rev2 client gets ESEARCH, `RETURN (ALL)` by
        // default.
        let returns = match returns {
            None if self.rev2 => Some(&[SearchReturn::All][..]),
            other => other,
        };
        if let Some(returns) = returns
            && returns.contains(&SearchReturn::Save)
        {
            self.saved = hits.iter().map(|h| h.1).collect();
            // RFC 5182 §2.4: SAVE alone answers no ESEARCH.
            if returns.iter().all(|r| *r == SearchReturn::Save) {
                return Reply::ok(format!("{verb} completed, result saved"));
            }
        }
        let line = match returns {
            Some(returns) => {
                // RFC 4731 §3.1: `* ESEARCH (TAG "tag") [UID] results`.
                let mut tag = Vec::new();
                response::string(&mut tag, &self.tag);
                let mut line = format!("ESEARCH (TAG {})", String::from_utf8_lossy(&tag));
                if uid {
                    line.push_str(" UID");
                }
                for option in returns {
                    match option {
                        SearchReturn::Min if !numbers.is_empty() => {
                            let _ = write!(line, " MIN {}", numbers[0]);
                        }
                        SearchReturn::Max if !numbers.is_empty() => {
                            let _ = write!(line, " MAX {}", numbers[numbers.len() - 1]);
                        }
                        SearchReturn::All if !numbers.is_empty() => {
                            let _ = write!(line, " ALL {}", compact_set(&numbers));
                        }
                        SearchReturn::Count => {
                            let _ = write!(line, " COUNT {}", numbers.len());
                        }
                        _ => {}
                    }
                }
                if key.uses_modseq()
                    && let Some(highest) = highest
                {
                    let _ = write!(line, " MODSEQ {highest}");
                }
                line
            }
            None => {
                let mut line = String::from("SEARCH");
                for n in &numbers {
                    let _ = write!(line, " {n}");
                }
                if key.uses_modseq()
                    && let Some(highest) = highest
                {
                    let _ = write!(line, " (MODSEQ {highest})");
                }
                line
            }
        };
        Reply::ok(format!("{verb} completed")).untagged(vec![untagged(&line)])
    }

    /// RFC 9208 §4.2 GETQUOTA and §4.3 GETQUOTAROOT: one root, `""`, per
    /// account, with the STORAGE resource in units of 1024 octets.
    async fn get_quota(&mut self, root: &str, mailbox: Option<&str>) -> Reply {
        let Some(account) = self.account() else {
            return Reply::bad("LOGIN first");
        };
        if mailbox.is_none() && !root.is_empty() {
            return Reply::no("no such quota root").code("NONEXISTENT");
        }
        let quota = match self.shared.store.quota(&account).await {
            Ok(quota) => quota,
            Err(error) => return store_failure(error),
        };
        let mut lines = Vec::new();
        let verb = if let Some(mailbox) = mailbox {
            let mut line = b"* QUOTAROOT ".to_vec();
            response::string(&mut line, mailbox);
            line.extend_from_slice(b" \"\"\r\n");
            lines.push(line);
            "GETQUOTAROOT"
        } else {
            "GETQUOTA"
        };
        let resources = if quota.limit_bytes == 0 {
            String::new()
        } else {
            format!(
                "STORAGE {} {}",
                quota.used_bytes.div_ceil(1024),
                quota.limit_bytes / 1024
            )
        };
        lines.push(untagged(&format!("QUOTA \"\" ({resources})")));
        Reply::ok(format!("{verb} completed")).untagged(lines)
    }

    /// RFC 9051 §6.3.2 SELECT and §6.3.3 EXAMINE.
    async fn select(&mut self, name: String, read_only: bool, condstore: bool) -> Reply {
        if condstore {
            self.condstore = true;
        }
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
        self.saved.clear();
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
        if self.rev2 {
            // RFC 9051 §6.3.2: a LIST response with the mailbox name.
            let mut line = format!("* LIST () \"{DELIMITER}\" ").into_bytes();
            response::string(&mut line, &name);
            line.extend_from_slice(b"\r\n");
            lines.push(line);
        } else {
            // RFC 3501 §7.3.2; IMAP4rev2 dropped \Recent but rev1 clients expect it.
            lines.push(untagged("0 RECENT"));
        }
        if let Some(first) = messages
            .iter()
            .position(|m| !m.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")))
            .filter(|_| !self.rev2)
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
        // RFC 7162 §3.1.2.1
        lines.push(untagged(&format!(
            "OK [HIGHESTMODSEQ {}] highest",
            status.highest_modseq.max(1)
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
                modseqs: messages.iter().map(|m| (m.uid, m.modseq)).collect(),
                // Read before the list: a change in between is asked for
                // again at the next sync, and found already known.
                synced_modseq: status.highest_modseq,
            },
        };
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Reply::ok(format!("{verb} completed"))
            .code(code)
            .untagged(lines)
    }

    /// RFC 9051 §6.4.5 FETCH and §6.4.9 UID FETCH; RFC 7162 §3.1.4
    /// CHANGEDSINCE.
    async fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
    ) -> Reply {
        if changed_since.is_some() || items.contains(&FetchItem::ModSeq) {
            self.condstore = true;
        }
        let condstore = self.condstore;
        let State::Selected { account, mailbox } = &mut self.state else {
            return Reply::bad("no mailbox selected");
        };
        let targets = match resolve(set, uid, &mailbox.uids) {
            Ok(targets) => targets,
            Err(reply) => return reply,
        };
        let current = match current_of(&self.shared, account, &mailbox.name, &targets).await {
            Ok(current) => current,
            Err(error) => return store_failure(error),
        };
        let sets_seen = !mailbox.read_only && items.iter().any(FetchItem::sets_seen);
        let needs_body = items.iter().any(FetchItem::needs_body);
        // ENVELOPE, BODYSTRUCTURE and BODY alone are answered from what the
        // mailstore rendered at delivery, without reading the message.
        let structure_only = needs_body
            && items.iter().all(|i| {
                !i.needs_body()
                    || matches!(
                        i,
                        FetchItem::Envelope | FetchItem::BodyStructure | FetchItem::BodySimple
                    )
            });
        let mut lines = Vec::new();
        for (seq, message_uid) in targets {
            // Expunged by another session since our last sync: RFC 9051
            // §7.5.2 forbids an EXPUNGE here, so the message is skipped.
            let Some(info) = current.get(&message_uid) else {
                continue;
            };
            if changed_since.is_some_and(|since| info.modseq <= since) {
                continue;
            }
            let mut info = info.clone();
            let stored = if structure_only {
                match self
                    .shared
                    .store
                    .fetch_structure(account, &mailbox.name, message_uid)
                    .await
                {
                    Ok(stored) => stored,
                    Err(AccessError::NotFound(_)) => continue,
                    Err(error) => return store_failure(error),
                }
            } else {
                None
            };
            // Older messages have no stored rendering: read and parse them.
            let body = if needs_body && stored.is_none() {
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
                        info.modseq = updated.modseq;
                        mailbox.modseqs.insert(message_uid, updated.modseq);
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
                Content {
                    raw: body.as_deref(),
                    rendered: stored.as_ref(),
                },
                flags_changed,
                condstore,
            ));
        }
        Reply::ok(format!("{}FETCH completed", if uid { "UID " } else { "" })).untagged(lines)
    }

    /// RFC 9051 §6.4.6 STORE and §6.4.9 UID STORE; RFC 7162 §3.1.3
    /// UNCHANGEDSINCE (messages changed since are left alone and listed in
    /// `[MODIFIED ...]`).
    async fn store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Reply {
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let condstore = self.condstore;
        let State::Selected { account, mailbox } = &mut self.state else {
            return Reply::bad("no mailbox selected");
        };
        if mailbox.read_only {
            return Reply::no("mailbox is read-only").code("READ-ONLY");
        }
        let targets = match resolve(set, uid, &mailbox.uids) {
            Ok(targets) => targets,
            Err(reply) => return reply,
        };
        let current = match unchanged_since {
            Some(_) => match current_of(&self.shared, account, &mailbox.name, &targets).await {
                Ok(current) => current,
                Err(error) => return store_failure(error),
            },
            None => BTreeMap::new(),
        };
        let mode = match mode {
            StoreMode::Replace => FlagMode::Replace,
            StoreMode::Add => FlagMode::Add,
            StoreMode::Remove => FlagMode::Remove,
        };
        let mut lines = Vec::new();
        let mut modified = Vec::new();
        for (seq, message_uid) in targets {
            if let Some(limit) = unchanged_since
                && current.get(&message_uid).is_some_and(|m| m.modseq > limit)
            {
                modified.push(if uid { message_uid } else { seq });
                continue;
            }
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
            // Our own change: not to be reported again by the next sync.
            mailbox.modseqs.insert(message_uid, info.modseq);
            if silent && !condstore {
                continue;
            }
            let mut parts = Vec::new();
            if uid {
                parts.push(format!("UID {message_uid}"));
            }
            // RFC 7162 §3.2: .SILENT still reports the new MODSEQ.
            if !silent {
                parts.push(format!("FLAGS {}", flag_list(&info.flags)));
            }
            if condstore {
                parts.push(format!("MODSEQ ({})", info.modseq));
            }
            lines.push(untagged(&format!("{seq} FETCH ({})", parts.join(" "))));
        }
        let reply =
            Reply::ok(format!("{}STORE completed", if uid { "UID " } else { "" })).untagged(lines);
        if modified.is_empty() {
            reply
        } else {
            reply.code(format!("MODIFIED {}", compact_set(&modified)))
        }
    }

    /// RFC 9051 §6.4.3 EXPUNGE, or RFC 4315 §2.1 UID EXPUNGE of the `\Deleted`
    /// messages among `set`: each reported with `* n EXPUNGE`, numbers
    /// shifting as it goes.
    async fn expunge(&mut self, set: Option<&SequenceSet>) -> Reply {
        let State::Selected { account, mailbox } = &mut self.state else {
            return Reply::bad("no mailbox selected");
        };
        if mailbox.read_only {
            return Reply::no("mailbox is read-only").code("READ-ONLY");
        }
        let uids: Vec<u32> = match set {
            Some(set) => {
                let largest = mailbox.uids.last().copied().unwrap_or(0);
                let chosen: Vec<u32> = mailbox
                    .uids
                    .iter()
                    .copied()
                    .filter(|&u| set.contains(u, largest))
                    .collect();
                if chosen.is_empty() {
                    return Reply::ok("UID EXPUNGE completed");
                }
                chosen
            }
            None => Vec::new(),
        };
        let expunged = match self
            .shared
            .store
            .expunge(account, &mailbox.name, &uids)
            .await
        {
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
        let verb = if set.is_some() {
            "UID EXPUNGE"
        } else {
            "EXPUNGE"
        };
        Reply::ok(format!("{verb} completed")).untagged(lines)
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
        self.saved.clear();
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
        // RFC 9051 §7.5.2: no EXPUNGE during FETCH, STORE or SEARCH (the
        // UID forms are fine: they do not use sequence numbers).
        let allow_expunge = !matches!(
            body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
        );
        let lines = self.sync(allow_expunge).await;
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
    /// mailstore and returns the untagged responses that say so. Only what
    /// changed since the last sync is asked for (flag changes and new
    /// messages carry a higher MODSEQ); the whole list is read only when
    /// the count says messages went away, to learn which.
    async fn sync(&mut self, allow_expunge: bool) -> Vec<Vec<u8>> {
        let State::Selected { account, mailbox } = &mut self.state else {
            return Vec::new();
        };
        self.dirty = false;
        let changes = match self
            .shared
            .store
            .list_changes(account, &mailbox.name, mailbox.synced_modseq, None)
            .await
        {
            Ok(changes) => changes,
            Err(error) => {
                warn!(%error, "imap: cannot refresh mailbox");
                return Vec::new();
            }
        };
        let known_max = mailbox.uids.last().copied().unwrap_or(0);
        let arrived = changes
            .messages
            .iter()
            .filter(|m| m.uid > known_max)
            .count();
        let expunged = changes.exists as usize != mailbox.uids.len() + arrived;
        if !(allow_expunge && expunged) {
            mailbox.synced_modseq = changes.highest_modseq;
            // Without the expunges (not allowed now), the count stays off
            // and the next sync that may report them reads the whole list.
            return apply_changes(mailbox, &changes.messages, false, self.condstore);
        }
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
        // Read before the list, so nothing committed in between is missed.
        mailbox.synced_modseq = changes.highest_modseq;
        apply_changes(mailbox, &messages, true, self.condstore)
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

/// Applies what the mailstore reported to the session's view and returns
/// the untagged responses for it: flag changes made elsewhere as FETCH, new
/// messages as EXISTS and, when `messages` is the whole mailbox
/// (`complete`), the ones missing from it as EXPUNGE.
fn apply_changes(
    mailbox: &mut Mailbox,
    messages: &[MessageInfo],
    complete: bool,
    condstore: bool,
) -> Vec<Vec<u8>> {
    let current: HashSet<u32> = messages.iter().map(|m| m.uid).collect();
    let allow_expunge = complete;
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
    // Flag changes made elsewhere to messages this session knows.
    for message in messages {
        let Some(known) = mailbox.modseqs.get_mut(&message.uid) else {
            continue;
        };
        if message.modseq <= *known {
            continue;
        }
        *known = message.modseq;
        let Ok(index) = mailbox.uids.binary_search(&message.uid) else {
            continue;
        };
        let modseq = if condstore {
            format!(" MODSEQ ({})", message.modseq)
        } else {
            String::new()
        };
        lines.push(untagged(&format!(
            "{} FETCH (UID {} FLAGS {}{modseq})",
            index + 1,
            message.uid,
            flag_list(&message.flags)
        )));
    }
    let known_max = mailbox.uids.last().copied().unwrap_or(0);
    let before = mailbox.uids.len();
    for message in messages.iter().filter(|m| m.uid > known_max) {
        mailbox.uids.push(message.uid);
        mailbox.modseqs.insert(message.uid, message.modseq);
    }
    if mailbox.uids.len() != before {
        lines.push(untagged(&format!("{} EXISTS", mailbox.uids.len())));
    }
    if allow_expunge {
        mailbox.modseqs.retain(|uid, _| current.contains(uid));
    }
    lines
}

/// Reads one complete command: a line, and for each literal it announces,
/// the literal's bytes and the line after. Synchronising literals are
/// invited with `+` (RFC 9051 §7.5).
async fn read_command<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    buf: &mut Vec<u8>,
    max_append: usize,
) -> std::io::Result<Input> {
    buf.clear();
    let mut max_literal = MAX_LITERAL_BYTES;
    let mut max_command = MAX_COMMAND_BYTES;
    loop {
        let line_start = buf.len();
        let room = max_command.saturating_sub(line_start);
        match read_line(&mut io.reader, buf, room).await? {
            Line::Eof => return Ok(Input::Eof),
            Line::TooLong => return Ok(Input::TooLong(parser::leading_tag(buf))),
            Line::Complete => {}
        }
        let Some(literal) = parser::trailing_literal(&buf[line_start..]) else {
            return Ok(Input::Command(std::mem::take(buf)));
        };
        // The message of an APPEND may be as large as configured.
        if line_start == 0 && parser::is_append(buf) {
            max_literal = max_append;
            max_command = MAX_COMMAND_BYTES.saturating_add(max_append);
        }
        let room = max_command.saturating_sub(buf.len() + 2);
        let too_big = literal.length > max_literal as u64 || literal.length > room as u64;
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
            SeqNumber::Saved => false,
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

/// The mailstore's current metadata of the `(seq, uid)` targets of a
/// FETCH or STORE, asked for as the one UID range that covers them rather
/// than as the whole mailbox; a UID missing from the map was expunged.
async fn current_of(
    shared: &Shared,
    account: &str,
    mailbox: &str,
    targets: &[(u32, u32)],
) -> Result<BTreeMap<u32, MessageInfo>, AccessError> {
    let (Some(first), Some(last)) = (
        targets.iter().map(|&(_, u)| u).min(),
        targets.iter().map(|&(_, u)| u).max(),
    ) else {
        return Ok(BTreeMap::new());
    };
    let changes = shared
        .store
        .list_changes(account, mailbox, u64::MAX, Some((first, last)))
        .await?;
    Ok(by_uid(changes.messages))
}

fn by_uid(messages: Vec<MessageInfo>) -> BTreeMap<u32, MessageInfo> {
    messages.into_iter().map(|m| (m.uid, m)).collect()
}

fn has_flag(flags: &[String], flag: &str) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

/// What FETCH has of a message beyond its metadata: the raw bytes when an
/// item needs them, and the renderings stored at delivery when those are
/// all the items need.
struct Content<'a> {
    raw: Option<&'a [u8]>,
    rendered: Option<&'a Rendered>,
}

/// One `* n FETCH (...)` response. UID FETCH always includes UID, and FLAGS
/// are included when fetching just set `\Seen` (RFC 9051 §6.4.5, §6.4.9);
/// MODSEQ too once CONDSTORE is on (RFC 7162 §3.1.4.1).
fn fetch_line(
    seq: u32,
    uid_command: bool,
    items: &[FetchItem],
    info: &MessageInfo,
    content: Content<'_>,
    flags_changed: bool,
    condstore: bool,
) -> Vec<u8> {
    let whole = content.raw.unwrap_or_default();
    let stored = content.rendered;
    // Parsed once per message, only when an item needs the structure.
    let needs_structure = items.iter().any(|i| {
        matches!(
            i,
            FetchItem::BodyStructure
                | FetchItem::BodySimple
                | FetchItem::Body { .. }
                | FetchItem::Binary { .. }
                | FetchItem::BinarySize { .. }
        )
    });
    let structure = (needs_structure && stored.is_none()).then(|| mime::parse(whole));
    let mut parts: Vec<Vec<u8>> = Vec::new();
    if uid_command && !items.contains(&FetchItem::Uid) {
        parts.push(format!("UID {}", info.uid).into_bytes());
    }
    for item in items {
        let mut part = Vec::new();
        match item {
            FetchItem::Flags => part.extend(format!("FLAGS {}", flag_list(&info.flags)).bytes()),
            FetchItem::Uid => part.extend(format!("UID {}", info.uid).bytes()),
            FetchItem::ModSeq => part.extend(format!("MODSEQ ({})", info.modseq).bytes()),
            FetchItem::Rfc822Size => part.extend(format!("RFC822.SIZE {}", info.size).bytes()),
            FetchItem::InternalDate => part
                .extend(format!("INTERNALDATE {}", internal_date(info.internal_date_ms)).bytes()),
            FetchItem::Envelope => {
                part.extend_from_slice(b"ENVELOPE ");
                match stored {
                    Some(stored) => part.extend_from_slice(stored.envelope.as_bytes()),
                    None => part.extend_from_slice(&mime::envelope(split_header(whole).0)),
                }
            }
            FetchItem::BodyStructure | FetchItem::BodySimple => {
                let extended = *item == FetchItem::BodyStructure;
                part.extend_from_slice(if extended {
                    b"BODYSTRUCTURE "
                } else {
                    b"BODY "
                });
                if let Some(stored) = stored {
                    part.extend_from_slice(if extended {
                        stored.body_structure.as_bytes()
                    } else {
                        stored.body.as_bytes()
                    });
                } else if let Some(structure) = &structure {
                    part.extend_from_slice(&mime::body_structure(whole, structure, extended));
                }
            }
            FetchItem::Rfc822 => {
                part.extend_from_slice(b"RFC822 ");
                response::literal(&mut part, whole);
            }
            FetchItem::Rfc822Header => {
                part.extend_from_slice(b"RFC822.HEADER ");
                response::literal(&mut part, split_header(whole).0);
            }
            FetchItem::Rfc822Text => {
                part.extend_from_slice(b"RFC822.TEXT ");
                response::literal(&mut part, split_header(whole).1);
            }
            FetchItem::Body {
                section, partial, ..
            } => {
                let data = structure
                    .as_ref()
                    .and_then(|s| mime::section(whole, s, section))
                    .unwrap_or_default();
                part.extend(format!("BODY[{}]", section.spec()).bytes());
                write_partial(&mut part, &data, *partial);
            }
            FetchItem::Binary {
                part: path,
                partial,
                ..
            } => {
                let data = structure
                    .as_ref()
                    .and_then(|s| mime::binary(whole, s, path))
                    .unwrap_or_default();
                part.extend(format!("BINARY[{}]", join_path(path)).bytes());
                write_partial(&mut part, &data, *partial);
            }
            FetchItem::BinarySize { part: path } => {
                let size = structure
                    .as_ref()
                    .and_then(|s| mime::binary(whole, s, path))
                    .map_or(0, |d| d.len());
                part.extend(format!("BINARY.SIZE[{}] {size}", join_path(path)).bytes());
            }
        }
        parts.push(part);
    }
    if flags_changed && !items.contains(&FetchItem::Flags) {
        parts.push(format!("FLAGS {}", flag_list(&info.flags)).into_bytes());
    }
    if condstore && flags_changed && !items.contains(&FetchItem::ModSeq) {
        parts.push(format!("MODSEQ ({})", info.modseq).into_bytes());
    }
    let mut line = format!("* {seq} FETCH (").into_bytes();
    line.extend_from_slice(&parts.join(&b' '));
    line.extend_from_slice(b")\r\n");
    line
}

fn join_path(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// ` {n}\r\ndata`, or for `<offset.length>` the `<offset>` origin and the
/// slice (RFC 9051 §6.4.5: beyond the end is an empty string).
fn write_partial(part: &mut Vec<u8>, data: &[u8], partial: Option<(u32, u32)>) {
    let data = match partial {
        Some((offset, length)) => {
            part.extend(format!("<{offset}>").bytes());
            let start = (offset as usize).min(data.len());
            let end = start.saturating_add(length as usize).min(data.len());
            &data[start..end]
        }
        None => data,
    };
    part.push(b' ');
    response::literal(part, data);
}

/// Splits a message into header (blank line included) and text
/// (RFC 9051 §6.4.5 `HEADER`, `TEXT`). A message without a blank line is
/// all header.
fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    message.split_at(mime::header_length(message))
}

/// A sorted list of numbers as a compact sequence set: `1:3,7,9:10`.
fn compact_set(numbers: &[u32]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}:{end}");
        }
        i += 1;
    }
    out
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
        AccessError::AlreadyExists(_) => Reply::no("mailbox already exists").code("ALREADYEXISTS"),
        // RFC 9208 §4.1
        AccessError::OverQuota(_) => Reply::no("quota exceeded").code("OVERQUOTA"),
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
