//! One SMTP session: the state as an explicit enum, one handler per verb
//! returning a [`Reply`] (or a [`Step`] the loop must take first: read a
//! BDAT chunk, start TLS), and [`serve`], the loop that reads commands and
//! is the only place that writes to the socket.
//!
//! What the session needs from the rest of the cluster sits behind small
//! traits, so the whole dialog is tested over an in-memory stream:
//! [`RecipientLookup`] (the directory, asked at MAIL and RCPT),
//! [`Authenticator`] (AUTH) and [`Acceptor`] (the end of the message:
//! filter verdict, spool, queue).
//!
//! The listener decides the [`Mode`]: the MX takes mail for our domains
//! from anyone and relays for nobody but authenticated users and
//! `smtp.relay_networks`; submission and submissions take mail only from
//! authenticated users, who may send as their own addresses only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::backend::Counters;
use mailfleet_runtime::config::Cidr;
use mailfleet_runtime::tls::TlsProvider;

use crate::address::{needs_smtputf8, relay_trick};
use crate::auth::{self, AuthOutcome, Authenticator, Mechanism, SaslError};
use crate::conn::{Conn, Io, Line};
use crate::data::{BareLf, DataDecoder, DataOutcome};
use crate::metrics::Metrics;
use crate::parser::{Command, MailFrom, ParseError, RcptTo, parse_command};
use crate::reply::{self, Reply};

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
pub const MAX_TEXT_LINE: usize = 1000;
/// AUTH failures after which each further failure is answered slowly.
const AUTH_FAILURES_BEFORE_DELAY: u64 = 3;
/// The longest pause before a `535` (tarpit of a password guesser).
const AUTH_MAX_DELAY: Duration = Duration::from_secs(5);
/// RFC 4954 §4: AUTH lines (the command with an initial response, and
/// each response line) may be up to 12288 octets; other commands keep
/// `smtp.max_line_length`.
pub const MAX_AUTH_LINE: usize = 12288;
/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which listener a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// MX (port 25): mail for our domains from anyone, STARTTLS offered.
    #[default]
    Mx,
    /// Submission (port 587, RFC 6409): STARTTLS, then AUTH, then mail.
    Submission,
    /// Submissions (port 465, RFC 8314): TLS from the first byte.
    Submissions,
}

impl Mode {
    pub fn is_submission(self) -> bool {
        !matches!(self, Mode::Mx)
    }

    /// The metric and log name of the listener.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mx => "smtp",
            Mode::Submission => "submission",
            Mode::Submissions => "submissions",
        }
    }
}

/// The limits and names a session runs with (from `[smtp]` and `hostname`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub mode: Mode,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_line_length: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub messages_per_ip_per_minute: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// RFC 5321 §6.3: a message that went through more hops than this is
    /// in a loop (`554 5.4.6`).
    pub max_hops: usize,
    pub bare_lf: BareLf,
    pub relay_networks: Vec<Cidr>,
    pub trusted_networks: Vec<Cidr>,
    pub proxy_trusted_networks: Vec<Cidr>,
    pub auth_failures_per_ip: u64,
    pub auth_failure_window: Duration,
}

impl SessionConfig {
    /// Concurrent sessions; at least one.
    pub fn max_connections(&self) -> usize {
        self.max_connections.max(1)
    }

    pub fn from_config(config: &mailfleet_runtime::Config) -> SessionConfig {
        let smtp = &config.smtp;
        SessionConfig {
            hostname: config.hostname.clone(),
            mode: Mode::Mx,
            max_message_size: smtp.max_message_size,
            max_recipients: smtp.max_recipients,
            max_line_length: smtp.max_line_length,
            max_errors: smtp.max_errors,
            command_timeout: Duration::from_secs(smtp.command_timeout_secs),
            data_timeout: Duration::from_secs(smtp.data_timeout_secs),
            messages_per_ip_per_minute: smtp.messages_per_ip_per_minute,
            max_connections: smtp.max_connections,
            max_connections_per_ip: smtp.max_connections_per_ip,
            max_hops: smtp.max_hops,
            // Validated by the config: anything but "reject" normalises.
            bare_lf: if smtp.bare_lf == "reject" {
                BareLf::Reject
            } else {
                BareLf::Normalize
            },
            relay_networks: Cidr::parse_list(&smtp.relay_networks),
            trusted_networks: Cidr::parse_list(&smtp.trusted_networks),
            proxy_trusted_networks: Cidr::parse_list(&smtp.proxy_trusted_networks),
            auth_failures_per_ip: smtp.auth_failures_per_ip,
            auth_failure_window: Duration::from_secs(smtp.auth_failure_window_secs),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::from_config(&mailfleet_runtime::Config::default())
    }
}

/// Where an address goes, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// One of our domains, and these accounts receive it (one, or several
    /// for an alias that names several; never none).
    Local { accounts: Vec<String> },
    /// One of our domains, but nobody by that name.
    UnknownUser,
    /// Not our domain: relaying.
    Remote,
}

#[derive(Debug, thiserror::Error)]
#[error("recipient lookup failed: {0}")]
pub struct LookupError(pub String);

/// The directory, as the session sees it.
#[async_trait]
pub trait RecipientLookup: Send + Sync + 'static {
    async fn lookup(&self, address: &str) -> Result<Lookup, LookupError>;
}

/// A recipient accepted at RCPT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recipient {
    /// As given in RCPT TO.
    pub address: String,
    /// The local account it resolves to; empty for a remote recipient
    /// (relayed for an authenticated user or a relay network).
    pub account: String,
    /// RFC 3461 NOTIFY, if given.
    pub notify: Option<String>,
    /// RFC 3461 ORCPT, if given.
    pub orcpt: Option<String>,
}

/// Everything about a transaction except the message itself.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub session_id: String,
    pub client_ip: IpAddr,
    pub helo: String,
    /// EHLO (true) or HELO: `with ESMTP` or `with SMTP` in `Received:`.
    pub esmtp: bool,
    /// `"TLSv1.3 TLS13_AES_256_GCM_SHA384"` when the session is encrypted.
    pub tls: Option<String>,
    /// The account that authenticated, if any.
    pub auth_account: Option<String>,
    /// Empty for the null reverse-path.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    /// RFC 3461 RET and ENVID, if given.
    pub dsn_ret: Option<&'static str>,
    pub dsn_envid: Option<String>,
}

/// Why a message was not accepted at the end of DATA. Each maps to one
/// reply in [`Session::end_of_data`]: nothing is acknowledged unless the
/// acceptor returned a queue id.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("refused by the filter: {code} {enhanced} {reason}")]
    Rejected {
        code: u16,
        enhanced: String,
        reason: String,
    },
    #[error("deferred by the filter: {reason}")]
    Deferred { reason: String },
    #[error("filter unavailable: {0}")]
    FilterUnavailable(String),
    #[error("storage failed: {0}")]
    Storage(String),
}

/// The end of DATA: filter the message, store it durably, return its
/// queue id. Returns only once the message and its queue entry are durable.
#[async_trait]
pub trait Acceptor: Send + Sync + 'static {
    async fn accept(&self, envelope: &Envelope, message: Vec<u8>) -> Result<String, AcceptError>;
}

/// Client IPs refused AUTH until an instant, after too many failures.
/// The failures are counted in [`Counters`] (shared by a cluster); the
/// refusal is remembered here so a blocked client's guesses are never
/// checked.
#[derive(Default)]
pub struct AuthBlocklist {
    until: Mutex<HashMap<IpAddr, Instant>>,
    /// Failures per IP when no shared counters are configured.
    local: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl AuthBlocklist {
    fn is_blocked(&self, ip: IpAddr) -> bool {
        let mut until = self.until.lock().expect("auth blocklist lock");
        let now = Instant::now();
        until.retain(|_, t| *t > now);
        until.contains_key(&ip)
    }

    fn block(&self, ip: IpAddr, window: Duration) {
        let mut until = self.until.lock().expect("auth blocklist lock");
        until.insert(ip, Instant::now() + window);
    }

    fn count_locally(&self, ip: IpAddr, window: Duration) -> u64 {
        let mut local = self.local.lock().expect("auth blocklist lock");
        let now = Instant::now();
        local.retain(|_, (start, _)| now.duration_since(*start) < window);
        let entry = local.entry(ip).or_insert((now, 0));
        entry.1 += 1;
        entry.1
    }
}

/// What a session uses of the rest of the cluster.
#[derive(Clone)]
pub struct Services {
    pub lookup: Arc<dyn RecipientLookup>,
    pub auth: Arc<dyn Authenticator>,
    pub acceptor: Arc<dyn Acceptor>,
    /// Rate-limit and AUTH-failure counters; `None`: rate limits off, AUTH
    /// failures counted in this process.
    pub counters: Option<Arc<dyn Counters>>,
    /// The certificate for STARTTLS; `None`: no STARTTLS.
    pub tls: Option<Arc<TlsProvider>>,
    pub auth_blocklist: Arc<AuthBlocklist>,
    /// Open sessions per client IP, shared by every listener.
    pub connections: Arc<crate::ConnectionsPerIp>,
    /// `smtp.max_connections` shared by every listener of the process;
    /// `None`: each [`crate::serve_listener`] has its own.
    pub session_permits: Option<Arc<tokio::sync::Semaphore>>,
}

/// BDAT chunks received so far (RFC 3030).
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    data: Vec<u8>,
    size: u64,
}

/// An open mail transaction (RFC 5321 §3.3).
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail_from: MailFrom,
    pub recipients: Vec<Recipient>,
    /// Set by the first BDAT: the body comes in chunks, DATA is refused.
    pub chunks: Option<Chunks>,
}

/// Where the session is in the dialog.
#[derive(Debug, Clone)]
pub enum State {
    /// Connected and greeted (or TLS just started); no EHLO/HELO yet.
    Greeting,
    /// EHLO/HELO done, no transaction.
    Ready,
    /// MAIL accepted, no recipient yet.
    Mail(Transaction),
    /// At least one recipient accepted.
    Rcpt(Transaction),
    /// 354 sent: the body is being read.
    Data(Transaction),
}

/// What the loop does after a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this reply.
    Reply(Reply),
    /// Read a BDAT chunk of `size` bytes into [`Session::chunk_data`], then
    /// send [`Session::end_of_chunk`]'s reply.
    Chunk { size: u64 },
    /// Send `220`, then start TLS on the connection (RFC 3207).
    StartTls,
}

/// The BDAT command being read: how it ends, or why it is refused.
#[derive(Debug)]
struct PendingChunk {
    last: bool,
    refused: Option<Reply>,
}

pub struct Session {
    config: Arc<SessionConfig>,
    services: Services,
    metrics: Metrics,
    id: String,
    client_ip: IpAddr,
    helo: Option<(String, bool)>,
    state: State,
    errors: u32,
    tls: Option<String>,
    auth: Option<String>,
    auth_step: Option<auth::Step>,
    chunk: Option<PendingChunk>,
}

impl Session {
    pub fn new(
        config: Arc<SessionConfig>,
        services: Services,
        metrics: Metrics,
        id: String,
        client_ip: IpAddr,
    ) -> Session {
        Session {
            config,
            services,
            metrics,
            id,
            client_ip,
            helo: None,
            state: State::Greeting,
            errors: 0,
            tls: None,
            auth: None,
            auth_step: None,
            chunk: None,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The account that authenticated, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// RFC 5321 §4.3.1: the 220 greeting. No enhanced code (RFC 2034 §3).
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP Mailfleet", self.config.hostname))
    }

    /// TLS is up (implicit TLS, or after STARTTLS): RFC 3207 §4.2, the
    /// session starts over, the client must say EHLO again, and nothing it
    /// said before counts.
    pub fn tls_started(&mut self, description: String) {
        tracing::debug!(tls = %description, "tls started");
        self.tls = Some(description);
        self.helo = None;
        self.auth = None;
        self.auth_step = None;
        self.state = State::Greeting;
    }

    /// The acceptor for STARTTLS, if the session may start TLS now.
    pub fn tls_acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.services.tls.as_ref().map(|tls| tls.acceptor())
    }

    /// Parses and runs one command line (or the next line of an AUTH
    /// exchange).
    pub async fn handle_line(&mut self, line: &[u8]) -> Step {
        if let Some(step) = self.auth_step.take() {
            let reply = self.auth_continue(step, line).await;
            self.count_error(&reply);
            return Step::Reply(reply);
        }
        let step = match parse_command(line) {
            Ok(command) => self.handle(command).await,
            Err(error) => {
                tracing::debug!(%error, "bad command");
                Step::Reply(parse_error_reply(&error))
            }
        };
        if let Step::Reply(reply) = &step {
            self.count_error(reply);
        }
        step
    }

    /// True if `line`, longer than `smtp.max_line_length`, may still be
    /// read as a command: an AUTH line (RFC 4954 §4).
    pub fn allows_long_line(&self, line: &[u8]) -> bool {
        line.len() <= MAX_AUTH_LINE
            && (self.auth_step.is_some()
                || line
                    .get(..5)
                    .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH ")))
    }

    /// A command line over the limit (already skipped to its end).
    pub fn line_too_long(&mut self) -> Reply {
        // An AUTH exchange cut short by a huge line is over.
        self.auth_step = None;
        self.count_error(&reply::LINE_TOO_LONG);
        reply::LINE_TOO_LONG
    }

    /// True once `max_errors` bad commands were seen: the loop sends
    /// `421 4.7.0` and closes.
    pub fn too_many_errors(&self) -> bool {
        self.errors >= self.config.max_errors
    }

    fn count_error(&mut self, reply: &Reply) {
        // Syntax, sequence and unknown-command errors are the signs of a
        // confused or hostile client; refused addresses (550, 553, 554),
        // failed AUTH (535) those of a dictionary or password guesser.
        if matches!(reply.code, 500..=504 | 535 | 550 | 553 | 554 | 555) {
            self.errors += 1;
        }
    }

    async fn handle(&mut self, command: Command) -> Step {
        let reply = match command {
            Command::Ehlo { host } => self.ehlo(host),
            Command::Helo { host } => self.helo(host),
            Command::Mail(from) => self.mail(from).await,
            Command::Rcpt(to) => self.rcpt(to).await,
            Command::Data => self.data(),
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Rset => self.rset(),
            Command::Noop => reply::OK,
            Command::Quit => reply::BYE,
            Command::Vrfy => reply::CANNOT_VRFY,
            Command::Help => reply::HELP,
            Command::StartTls => return self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            Command::NotImplemented { verb } => {
                tracing::debug!(verb, "command not implemented");
                reply::NOT_IMPLEMENTED
            }
        };
        Step::Reply(reply)
    }

    /// STARTTLS may be offered: a certificate, not yet TLS.
    fn starttls_offered(&self) -> bool {
        self.services.tls.is_some() && self.tls.is_none()
    }

    /// AUTH may be offered: a submission listener, and TLS or a client in
    /// `smtp.trusted_networks` (RFC 4954 §4: no plain-text passwords on an
    /// unprotected channel).
    fn auth_offered(&self) -> bool {
        self.config.mode.is_submission()
            && (self.tls.is_some() || in_networks(&self.config.trusted_networks, self.client_ip))
    }

    /// RFC 5321 §4.1.1.1: EHLO opens the session and resets any transaction.
    fn ehlo(&mut self, host: String) -> Reply {
        self.helo = Some((host.clone(), true));
        self.state = State::Ready;
        // RFC 2920 PIPELINING, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8,
        // RFC 1870 SIZE, RFC 3030 CHUNKING, RFC 3461 DSN, RFC 3207
        // STARTTLS, RFC 4954 AUTH, RFC 2034 ENHANCEDSTATUSCODES.
        let mut lines = vec![
            format!("{} greets {}", self.config.hostname, printable(&host)),
            "PIPELINING".into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            format!("SIZE {}", self.config.max_message_size),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        Reply::plain(250, lines.join("\n"))
    }

    fn helo(&mut self, host: String) -> Reply {
        self.helo = Some((host, false));
        self.state = State::Ready;
        Reply::plain(250, self.config.hostname.clone())
    }

    /// RFC 3207 §4.
    fn starttls(&mut self) -> Step {
        if self.tls.is_some() {
            return Step::Reply(reply::TLS_ALREADY_ACTIVE);
        }
        if self.services.tls.is_none() {
            return Step::Reply(reply::NOT_IMPLEMENTED);
        }
        if matches!(self.state, State::Mail(_) | State::Rcpt(_) | State::Data(_)) {
            return Step::Reply(reply::BAD_SEQUENCE);
        }
        Step::StartTls
    }

    /// RFC 4954 §4: `AUTH mechanism [initial-response]`.
    async fn auth(&mut self, mechanism: Option<Mechanism>, initial: Option<String>) -> Reply {
        if !self.config.mode.is_submission() {
            // The MX takes mail for our users only; AUTH is for submission.
            return reply::NOT_IMPLEMENTED;
        }
        if self.helo.is_none() {
            return reply::NEED_EHLO;
        }
        if self.auth.is_some() {
            return reply::ALREADY_AUTHENTICATED;
        }
        if !matches!(self.state, State::Ready) {
            return reply::AUTH_IN_TRANSACTION;
        }
        if !self.auth_offered() {
            return reply::ENCRYPTION_REQUIRED;
        }
        if self.services.auth_blocklist.is_blocked(self.client_ip) {
            tracing::info!("auth refused, too many failures");
            return reply::AUTH_TOO_MANY_FAILURES;
        }
        let Some(mechanism) = mechanism else {
            return reply::AUTH_MECHANISM_UNSUPPORTED;
        };
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.auth_step = Some(auth::Step::PlainResponse);
                Reply::plain(334, String::new())
            }
            (Mechanism::Plain, Some(initial)) => self.auth_plain(&initial).await,
            (Mechanism::Login, None) => {
                self.auth_step = Some(auth::Step::LoginUser);
                Reply::plain(334, auth::LOGIN_USER_PROMPT.into())
            }
            (Mechanism::Login, Some(initial)) => self.auth_login_user(&initial),
        }
    }

    /// The next client line of an AUTH exchange.
    async fn auth_continue(&mut self, step: auth::Step, line: &[u8]) -> Reply {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\r', '\n']);
        match step {
            auth::Step::PlainResponse => self.auth_plain(line).await,
            auth::Step::LoginUser => self.auth_login_user(line),
            auth::Step::LoginPassword { user } => {
                match auth::decode_response(line).and_then(|d| auth::parse_login_field(&d)) {
                    Ok(password) => self.check_password(&user, &password).await,
                    Err(error) => sasl_error_reply(error),
                }
            }
        }
    }

    async fn auth_plain(&mut self, response: &str) -> Reply {
        match auth::decode_response(response).and_then(|d| auth::parse_plain(&d)) {
            Ok((user, password)) => self.check_password(&user, &password).await,
            Err(error) => sasl_error_reply(error),
        }
    }

    fn auth_login_user(&mut self, response: &str) -> Reply {
        match auth::decode_response(response).and_then(|d| auth::parse_login_field(&d)) {
            Ok(user) => {
                self.auth_step = Some(auth::Step::LoginPassword { user });
                Reply::plain(334, auth::LOGIN_PASSWORD_PROMPT.into())
            }
            Err(error) => sasl_error_reply(error),
        }
    }

    async fn check_password(&mut self, user: &str, password: &str) -> Reply {
        match self.services.auth.authenticate(user, password).await {
            Ok(AuthOutcome::Ok { account }) => {
                tracing::info!(%account, "authenticated");
                self.auth = Some(account);
                reply::AUTH_OK
            }
            Ok(AuthOutcome::Invalid) => {
                self.auth_failed(user).await;
                reply::AUTH_INVALID
            }
            Err(error) => {
                tracing::warn!(%error, "authentication backend failed");
                reply::AUTH_TEMPORARY_FAILURE
            }
        }
    }

    /// Counts a failure for the client IP; slows the answer down after a
    /// few, blocks AUTH from the IP for the window after the limit.
    async fn auth_failed(&mut self, user: &str) {
        let ip = self.client_ip;
        let window = self.config.auth_failure_window;
        let count = match &self.services.counters {
            Some(counters) => match counters.hit(&format!("authfail:{ip}"), window).await {
                Ok(count) => count,
                Err(error) => {
                    tracing::warn!(%error, "auth failure counter failed");
                    self.services.auth_blocklist.count_locally(ip, window)
                }
            },
            None => self.services.auth_blocklist.count_locally(ip, window),
        };
        tracing::info!(user = %printable(user), failures = count, "authentication failed");
        if count >= self.config.auth_failures_per_ip {
            tracing::warn!(failures = count, "auth blocked for this client ip");
            self.services.auth_blocklist.block(ip, window);
        }
        if count > AUTH_FAILURES_BEFORE_DELAY {
            let delay = Duration::from_secs(count - AUTH_FAILURES_BEFORE_DELAY).min(AUTH_MAX_DELAY);
            tokio::time::sleep(delay).await;
        }
    }

    /// RFC 5321 §4.1.1.2.
    async fn mail(&mut self, from: MailFrom) -> Reply {
        match self.state {
            State::Greeting => return reply::NEED_EHLO,
            State::Ready => {}
            State::Mail(_) | State::Rcpt(_) | State::Data(_) => return reply::NESTED_MAIL,
        }
        if self.config.mode.is_submission() && self.auth.is_none() {
            // RFC 6409 §4.3 / RFC 4954 §6: submission needs AUTH first;
            // RFC 3207 §4: and AUTH needs TLS first.
            return if self.auth_offered() {
                reply::AUTH_REQUIRED
            } else {
                reply::STARTTLS_FIRST
            };
        }
        // RFC 6531 §3.5: a non-ASCII address needs the SMTPUTF8 parameter.
        if needs_smtputf8(&from.address) && !from.smtputf8 {
            return reply::SENDER_NEEDS_SMTPUTF8;
        }
        // RFC 1870 §6.1: a declared size over the limit is refused at once.
        if from.size.is_some_and(|s| s > self.config.max_message_size) {
            return reply::SIZE_DECLARED_TOO_BIG;
        }
        if let Some(account) = self.auth.clone()
            && let Some(reply) = self.sender_not_owned(&from.address, &account).await
        {
            return reply;
        }
        if let Some(reply) = self.rate_limited().await {
            return reply;
        }
        tracing::debug!(mail_from = %from.address, "sender accepted");
        self.state = State::Mail(Transaction {
            mail_from: from,
            recipients: Vec::new(),
            chunks: None,
        });
        reply::SENDER_OK
    }

    /// An authenticated user sends only as an address of their own: one
    /// the directory resolves to their account (aliases included).
    async fn sender_not_owned(&self, address: &str, account: &str) -> Option<Reply> {
        if address.is_empty() {
            tracing::info!(%account, "null sender refused for an authenticated user");
            return Some(reply::SENDER_NOT_OWNED);
        }
        match self.services.lookup.lookup(address).await {
            // An alias shared by several accounts is each member's own.
            Ok(Lookup::Local { accounts })
                if accounts.iter().any(|a| a.eq_ignore_ascii_case(account)) =>
            {
                None
            }
            Ok(_) => {
                tracing::info!(mail_from = %address, %account, "sender not owned by the user");
                Some(reply::SENDER_NOT_OWNED)
            }
            Err(error) => {
                tracing::warn!(mail_from = %address, %error, "sender lookup failed");
                Some(reply::LOOKUP_FAILED)
            }
        }
    }

    async fn rate_limited(&self) -> Option<Reply> {
        let limit = self.config.messages_per_ip_per_minute;
        let counters = self.services.counters.as_ref().filter(|_| limit > 0)?;
        let key = format!("msg:{}", self.client_ip);
        match counters.hit(&key, Duration::from_secs(60)).await {
            Ok(count) if count > limit => {
                tracing::info!(count, limit, "rate limited");
                Some(reply::RATE_LIMITED)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "rate-limit counter failed");
                Some(reply::LOCAL_ERROR)
            }
        }
    }

    /// May this client send to domains that are not ours?
    fn may_relay(&self) -> bool {
        self.auth.is_some() || in_networks(&self.config.relay_networks, self.client_ip)
    }

    /// RFC 5321 §4.1.1.3.
    async fn rcpt(&mut self, to: RcptTo) -> Reply {
        let (count, smtputf8) = match &self.state {
            State::Mail(t) | State::Rcpt(t) if t.chunks.is_none() => {
                (t.recipients.len(), t.mail_from.smtputf8)
            }
            State::Rcpt(_) => return reply::BAD_SEQUENCE,
            State::Greeting | State::Ready | State::Mail(_) | State::Data(_) => {
                return reply::NEED_MAIL;
            }
        };
        // RFC 5321 §4.5.3.1.10: at least 100 must be accepted; past the
        // configured limit, 452 tells the client to send the rest later.
        if count >= self.config.max_recipients {
            return reply::TOO_MANY_RECIPIENTS;
        }
        if needs_smtputf8(&to.address) && !smtputf8 {
            return reply::RECIPIENT_NEEDS_SMTPUTF8;
        }
        let may_relay = self.may_relay();
        if !may_relay && let Some(trick) = relay_trick(&to.address) {
            tracing::info!(rcpt_to = %to.address, trick, "relay trick refused");
            return reply::RELAY_DENIED;
        }
        let accounts = match self.services.lookup.lookup(&to.address).await {
            Ok(Lookup::Local { accounts }) if !accounts.is_empty() => accounts,
            Ok(Lookup::Local { .. }) => {
                tracing::warn!(rcpt_to = %to.address, "directory gave a local address no account");
                return reply::LOOKUP_FAILED;
            }
            Ok(Lookup::UnknownUser) => {
                tracing::info!(rcpt_to = %to.address, "unknown user");
                return reply::USER_UNKNOWN;
            }
            // Relayed (queued for delivery to its domain's MX) only for
            // authenticated users and relay networks: never an open relay.
            Ok(Lookup::Remote) if may_relay => vec![String::new()],
            Ok(Lookup::Remote) => {
                tracing::info!(rcpt_to = %to.address, "relay denied");
                return reply::RELAY_DENIED;
            }
            Err(error) => {
                tracing::warn!(rcpt_to = %to.address, %error, "recipient lookup failed");
                return reply::LOOKUP_FAILED;
            }
        };
        let mut transaction = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(t) | State::Rcpt(t) => t,
            // Checked above; the state did not change while awaiting.
            other => {
                self.state = other;
                return reply::NEED_MAIL;
            }
        };
        // A recipient repeated (or another address of the same account) is
        // acknowledged but delivered once; an alias of several accounts is
        // one queue recipient per account, each under the address given.
        let key = |account: &str, address: &str| {
            if account.is_empty() {
                address.to_ascii_lowercase()
            } else {
                account.to_ascii_lowercase()
            }
        };
        for account in accounts {
            let this = key(&account, &to.address);
            if transaction
                .recipients
                .iter()
                .any(|r| key(&r.account, &r.address) == this)
            {
                continue;
            }
            transaction.recipients.push(Recipient {
                address: to.address.clone(),
                account,
                notify: to.notify.clone(),
                orcpt: to.orcpt.clone(),
            });
        }
        self.state = State::Rcpt(transaction);
        reply::RECIPIENT_OK
    }

    /// RFC 5321 §4.1.1.4.
    fn data(&mut self) -> Reply {
        match std::mem::replace(&mut self.state, State::Ready) {
            // RFC 3030 §3: DATA after BDAT is a sequence error.
            State::Rcpt(t) if t.chunks.is_some() => {
                self.state = State::Rcpt(t);
                reply::BAD_SEQUENCE
            }
            State::Rcpt(t) => {
                self.state = State::Data(t);
                reply::START_DATA
            }
            State::Mail(t) => {
                self.state = State::Mail(t);
                reply::NEED_RCPT
            }
            other => {
                self.state = other;
                reply::BAD_SEQUENCE
            }
        }
    }

    /// RFC 3030 §2: `BDAT size [LAST]`. The chunk is read whatever the
    /// answer, so the command stream stays in step.
    fn bdat(&mut self, size: u64, last: bool) -> Step {
        let refused = match &mut self.state {
            State::Rcpt(t) => {
                t.chunks.get_or_insert_with(Chunks::default);
                None
            }
            State::Mail(_) => Some(reply::NEED_RCPT),
            State::Greeting => Some(reply::NEED_EHLO),
            State::Ready | State::Data(_) => Some(reply::BAD_SEQUENCE),
        };
        self.chunk = Some(PendingChunk { last, refused });
        Step::Chunk { size }
    }

    /// Bytes of the BDAT chunk being read.
    pub fn chunk_data(&mut self, bytes: &[u8]) {
        let refused = self.chunk.as_ref().is_none_or(|c| c.refused.is_some());
        if refused {
            return;
        }
        let max = self.config.max_message_size;
        if let State::Rcpt(Transaction {
            chunks: Some(chunks),
            ..
        }) = &mut self.state
        {
            chunks.size += bytes.len() as u64;
            // Over the limit: counted, not kept (RFC 1870 §6.3 as for DATA).
            if chunks.size <= max {
                chunks.data.extend_from_slice(bytes);
            }
        }
    }

    /// The BDAT chunk has been read: answer it, and end the transaction
    /// after the LAST one.
    pub async fn end_of_chunk(&mut self) -> Reply {
        let Some(chunk) = self.chunk.take() else {
            return reply::BAD_SEQUENCE;
        };
        if let Some(reply) = chunk.refused {
            self.count_error(&reply);
            return reply;
        }
        let State::Rcpt(transaction) = &self.state else {
            return reply::BAD_SEQUENCE;
        };
        let received = transaction.chunks.as_ref().map_or(0, |c| c.size);
        if !chunk.last {
            return Reply::owned(250, "2.0.0", format!("{received} octets received"));
        }
        let State::Rcpt(mut transaction) = std::mem::replace(&mut self.state, State::Ready) else {
            return reply::BAD_SEQUENCE;
        };
        let chunks = transaction.chunks.take().unwrap_or_default();
        let outcome = if chunks.size > self.config.max_message_size {
            DataOutcome::TooBig { size: chunks.size }
        } else {
            match normalize_line_ends(chunks.data, self.config.bare_lf) {
                Some(message) => DataOutcome::Message(message),
                None => DataOutcome::BareLf,
            }
        };
        self.finish(transaction, outcome).await
    }

    /// True after a 354: the loop reads the body next.
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// A new decoder for the body under the configured size limit.
    pub fn data_decoder(&self) -> DataDecoder {
        DataDecoder::new(self.config.max_message_size, self.config.bare_lf)
    }

    /// The body has been read: hand it to the [`Acceptor`] and answer.
    /// Whatever happens, the transaction is over (RFC 5321 §4.1.1.4).
    pub async fn end_of_data(&mut self, outcome: DataOutcome) -> Reply {
        let State::Data(transaction) = std::mem::replace(&mut self.state, State::Ready) else {
            return reply::BAD_SEQUENCE;
        };
        self.finish(transaction, outcome).await
    }

    /// The end of a message, by DATA or by BDAT LAST.
    async fn finish(&mut self, transaction: Transaction, outcome: DataOutcome) -> Reply {
        let (reply, result) = match outcome {
            DataOutcome::TooBig { size } => {
                tracing::info!(size, "message too big");
                (reply::MESSAGE_TOO_BIG, "too_big")
            }
            DataOutcome::BareLf => {
                tracing::info!("message with bare lf refused");
                (reply::BARE_LF, "bare_lf")
            }
            DataOutcome::Message(message) => match self.check_message(&message) {
                Some((reply, result)) => (reply, result),
                None => {
                    let message = self.complete_headers(message);
                    let size = message.len();
                    let (reply, result) = self.accept(transaction, message).await;
                    if result == "queued" {
                        self.metrics.accepted_size(size);
                    }
                    (reply, result)
                }
            },
        };
        self.count_error(&reply);
        self.metrics.transaction(result);
        reply
    }

    /// What no message may be, whoever sends it.
    fn check_message(&self, message: &[u8]) -> Option<(Reply, &'static str)> {
        // RFC 5321 §4.5.3.1.6 (RFC 5322 §2.1.1: 998 characters and CRLF).
        if message
            .split(|&b| b == b'\n')
            .any(|line| line.len() + 1 > MAX_TEXT_LINE)
        {
            tracing::info!("message with a line over 1000 bytes refused");
            return Some((reply::LINE_TOO_LONG_IN_DATA, "long_line"));
        }
        // RFC 5321 §6.3: loop detection by counting trace headers.
        let hops = header_lines(message)
            .filter(|line| starts_with_ignore_case(line, b"received:"))
            .count();
        if hops > self.config.max_hops {
            tracing::info!(hops, "mail loop");
            return Some((reply::TOO_MANY_HOPS, "loop"));
        }
        None
    }

    /// RFC 6409 §8.1/§8.3: submission adds `Date:` and `Message-ID:` when
    /// the client left them out; the MX leaves messages as they came.
    fn complete_headers(&self, message: Vec<u8>) -> Vec<u8> {
        if !self.config.mode.is_submission() {
            return message;
        }
        let mut added = Vec::new();
        if crate::accept::header_value(&message, "Date").is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default();
            added.extend_from_slice(
                format!("Date: {}\r\n", mailfleet_runtime::dates::rfc5322(now)).as_bytes(),
            );
        }
        if crate::accept::header_value(&message, "Message-ID").is_none() {
            added.extend_from_slice(
                format!(
                    "Message-ID: <{}@{}>\r\n",
                    uuid::Uuid::now_v7().simple(),
                    self.config.hostname
                )
                .as_bytes(),
            );
        }
        if added.is_empty() {
            return message;
        }
        added.extend_from_slice(&message);
        added
    }

    async fn accept(&self, transaction: Transaction, message: Vec<u8>) -> (Reply, &'static str) {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let envelope = Envelope {
            session_id: self.id.clone(),
            client_ip: self.client_ip,
            helo,
            esmtp,
            tls: self.tls.clone(),
            auth_account: self.auth.clone(),
            dsn_ret: transaction.mail_from.ret,
            dsn_envid: transaction.mail_from.envid,
            mail_from: transaction.mail_from.address,
            recipients: transaction.recipients,
        };
        let size = message.len();
        match self.services.acceptor.accept(&envelope, message).await {
            Ok(queue_id) => {
                tracing::info!(%queue_id, size, recipients = envelope.recipients.len(), "message queued");
                (
                    Reply::owned(250, "2.0.0", format!("Ok: queued as {queue_id}")),
                    "queued",
                )
            }
            Err(AcceptError::Rejected {
                code,
                enhanced,
                reason,
            }) => {
                tracing::info!(code, %reason, "message rejected by filter");
                (rejection(code, enhanced, reason), "rejected")
            }
            Err(AcceptError::Deferred { reason }) => {
                tracing::info!(%reason, "message deferred by filter");
                (
                    Reply::owned(451, "4.7.1", format!("try again later: {reason}")),
                    "deferred",
                )
            }
            Err(error @ (AcceptError::FilterUnavailable(_) | AcceptError::Storage(_))) => {
                // Never accept unfiltered or undurable mail: the client retries.
                tracing::warn!(%error, "message not accepted");
                (reply::LOCAL_ERROR, "error")
            }
        }
    }

    /// RFC 5321 §4.1.1.5: RSET ends the transaction but keeps the EHLO.
    fn rset(&mut self) -> Reply {
        if !matches!(self.state, State::Greeting) {
            self.state = State::Ready;
        }
        reply::RESET_OK
    }
}

fn in_networks(networks: &[Cidr], ip: IpAddr) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

fn sasl_error_reply(error: SaslError) -> Reply {
    match error {
        SaslError::Cancelled => reply::AUTH_CANCELLED,
        SaslError::Base64 | SaslError::Malformed => reply::AUTH_BAD_RESPONSE,
    }
}

/// The lines of the header section (up to the first empty line).
fn header_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

fn starts_with_ignore_case(line: &[u8], prefix: &[u8]) -> bool {
    line.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// A BDAT body under the bare-LF policy: every bare LF becomes CRLF
/// (normalize) or the message is refused (`None`, reject). BDAT has no
/// terminator to smuggle, but what we relay later goes out over DATA.
fn normalize_line_ends(data: Vec<u8>, policy: BareLf) -> Option<Vec<u8>> {
    let bare = data
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || data[i - 1] != b'\r'));
    if !bare {
        return Some(data);
    }
    if policy == BareLf::Reject {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() + 64);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    Some(out)
}

fn rejection(code: u16, enhanced: String, reason: String) -> Reply {
    let code = if (500..600).contains(&code) {
        code
    } else {
        550
    };
    let enhanced = if is_enhanced_code(&enhanced, '5') {
        enhanced
    } else {
        "5.7.1".into()
    };
    let reason = if reason.is_empty() {
        "message refused".into()
    } else {
        printable(&reason)
    };
    Reply::owned(code, enhanced, reason)
}

/// RFC 3463 §2: `class.subject.detail`.
fn is_enhanced_code(code: &str, class: char) -> bool {
    let mut parts = code.split('.');
    parts.next() == Some(&class.to_string())
        && parts.by_ref().take(2).filter(|p| is_digits(p)).count() == 2
        && parts.next().is_none()
}

fn is_digits(part: &str) -> bool {
    (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
}

/// Client-supplied text made safe to echo: printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn parse_error_reply(error: &ParseError) -> Reply {
    match error {
        ParseError::Unknown => reply::UNKNOWN_COMMAND,
        ParseError::Syntax(_) | ParseError::InvalidParameter(_) => reply::SYNTAX,
        ParseError::BadSender => reply::BAD_SENDER_SYNTAX,
        ParseError::BadRecipient => reply::BAD_RECIPIENT_SYNTAX,
        ParseError::UnsupportedParameter(_) => reply::UNSUPPORTED_PARAMETER,
    }
}

/// Runs a session over `stream` until QUIT, an error, a timeout or
/// `shutdown`. The only place that writes to the client.
pub async fn serve<S>(
    stream: S,
    mut session: Session,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: Io + 'static,
{
    let mut conn: Conn<Box<dyn Io>> = Conn::new(Box::new(stream));
    let config = session.config.clone();
    conn.queue(&session.greeting());
    loop {
        // A command boundary: on shutdown, every session gets 421 here
        // (RFC 5321 §3.8), pipelined commands still buffered included.
        if shutdown.is_cancelled() {
            conn.queue(&reply::SHUTTING_DOWN);
            break;
        }
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => continue,
            read = tokio::time::timeout(
                config.command_timeout,
                conn.read_line(config.max_line_length.max(MAX_AUTH_LINE)),
            ) => read,
        };
        let step = match read {
            Err(_elapsed) => {
                tracing::info!("command timeout");
                conn.queue(&reply::TIMEOUT);
                break;
            }
            Ok(result) => match result? {
                Line::Eof => {
                    tracing::debug!("client closed the connection");
                    return Ok(());
                }
                Line::TooLong => Step::Reply(session.line_too_long()),
                Line::Complete(line)
                    if line.len() > config.max_line_length && !session.allows_long_line(&line) =>
                {
                    Step::Reply(session.line_too_long())
                }
                Line::Complete(line) => session.handle_line(&line).await,
            },
        };
        let reply = match step {
            Step::Reply(reply) => reply,
            Step::Chunk { size } => {
                match conn
                    .read_chunk(size, config.data_timeout, |bytes| session.chunk_data(bytes))
                    .await
                {
                    Ok(true) => session.end_of_chunk().await,
                    Ok(false) => {
                        tracing::info!("client closed the connection during bdat");
                        return Ok(());
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                        tracing::info!("bdat timeout");
                        conn.queue(&reply::TIMEOUT);
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
            Step::StartTls => {
                let Some(acceptor) = session.tls_acceptor() else {
                    conn.queue(&reply::NOT_IMPLEMENTED);
                    continue;
                };
                conn.queue(&reply::READY_FOR_TLS);
                let (stream, unread) = conn.into_stream().await?;
                if unread > 0 {
                    // RFC 3207 §5 / CVE-2011-0411: commands pipelined after
                    // STARTTLS were sent in clear; they never run.
                    tracing::info!(bytes = unread, "plain-text bytes after starttls discarded");
                }
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(tls)) => {
                        session.tls_started(mailfleet_runtime::tls::describe(tls.get_ref().1));
                        conn = Conn::new(Box::new(tls));
                        continue;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%error, "tls handshake failed");
                        return Ok(());
                    }
                    Err(_elapsed) => {
                        tracing::info!("tls handshake timeout");
                        return Ok(());
                    }
                }
            }
        };
        conn.queue(&reply);
        if reply.closes_session() {
            break;
        }
        if session.too_many_errors() {
            tracing::info!(errors = session.errors, "too many errors");
            conn.queue(&reply::TOO_MANY_ERRORS);
            break;
        }
        if session.in_data() {
            let decoder = session.data_decoder();
            match conn.read_data(decoder, config.data_timeout).await {
                Ok(Some(outcome)) => {
                    let reply = session.end_of_data(outcome).await;
                    conn.queue(&reply);
                    if session.too_many_errors() {
                        tracing::info!(errors = session.errors, "too many errors");
                        conn.queue(&reply::TOO_MANY_ERRORS);
                        break;
                    }
                }
                Ok(None) => {
                    tracing::info!("client closed the connection during data");
                    return Ok(());
                }
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::info!("data timeout");
                    conn.queue(&reply::TIMEOUT);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
    }
    conn.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_rejections_stay_permanent() {
        let r = rejection(554, "5.7.1".into(), "message refused by rule GTUBE".into());
        assert_eq!(r.to_wire(), "554 5.7.1 message refused by rule GTUBE\r\n");
        let r = rejection(250, "2.0.0".into(), "".into());
        assert_eq!(r.to_wire(), "550 5.7.1 message refused\r\n");
        let r = rejection(550, "5.7.x".into(), "bad\r\n250 ok".into());
        assert_eq!(r.to_wire(), "550 5.7.1 bad??250 ok\r\n");
    }

    #[test]
    fn enhanced_code_shape() {
        assert!(is_enhanced_code("5.7.1", '5'));
        assert!(is_enhanced_code("5.7.100", '5'));
        assert!(!is_enhanced_code("4.7.1", '5'));
        assert!(!is_enhanced_code("5.7", '5'));
        assert!(!is_enhanced_code("5.7.1.1", '5'));
        assert!(!is_enhanced_code("5..1", '5'));
    }
}
