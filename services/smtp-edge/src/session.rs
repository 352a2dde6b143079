//! One SMTP session: the state as an explicit enum, one handler per verb
//! returning a [`Reply`], and [`serve`], the loop that reads commands and is
//! the only place that writes to the socket.
//!
//! What the session needs from the rest of the cluster sits behind two
//! small traits, so the whole dialog is tested over an in-memory stream:
//! [`RecipientLookup`] (the directory, asked at RCPT) and [`Acceptor`] (the
//! end of DATA: filter verdict, spool, queue).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::backend::Counters;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{Conn, Line};
use crate::data::{BareLf, DataDecoder, DataOutcome};
use crate::metrics::Metrics;
use crate::parser::{Command, MailFrom, ParseError, RcptTo, parse_command};
use crate::reply::{self, Reply};

/// The limits and names a session runs with (from `[smtp]` and `hostname`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_line_length: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub messages_per_ip_per_minute: u64,
    pub max_connections: usize,
    pub bare_lf: BareLf,
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
            max_message_size: smtp.max_message_size,
            max_recipients: smtp.max_recipients,
            max_line_length: smtp.max_line_length,
            max_errors: smtp.max_errors,
            command_timeout: Duration::from_secs(smtp.command_timeout_secs),
            data_timeout: Duration::from_secs(smtp.data_timeout_secs),
            messages_per_ip_per_minute: smtp.messages_per_ip_per_minute,
            max_connections: smtp.max_connections,
            // Validated by the config: anything but "reject" normalises.
            bare_lf: if smtp.bare_lf == "reject" {
                BareLf::Reject
            } else {
                BareLf::Normalize
            },
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig::from_config(&mailfleet_runtime::Config::default())
    }
}

/// Where an RCPT TO address goes, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// One of our domains, and this account receives it.
    Local { account: String },
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// As given in RCPT TO.
    pub address: String,
    /// The local account it resolves to.
    pub account: String,
}

/// Everything about a transaction except the message itself.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub session_id: String,
    pub client_ip: IpAddr,
    pub helo: String,
    /// EHLO (true) or HELO: `with ESMTP` or `with SMTP` in `Received:`.
    pub esmtp: bool,
    /// Empty for the null reverse-path.
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
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

/// What a session uses of the rest of the cluster.
#[derive(Clone)]
pub struct Services {
    pub lookup: Arc<dyn RecipientLookup>,
    pub acceptor: Arc<dyn Acceptor>,
    /// Rate-limit counters; `None` when no limit is configured.
    pub counters: Option<Arc<dyn Counters>>,
}

/// An open mail transaction (RFC 5321 §3.3).
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail_from: MailFrom,
    pub recipients: Vec<Recipient>,
}

/// Where the session is in the dialog.
#[derive(Debug, Clone)]
pub enum State {
    /// Connected and greeted; the client has not said EHLO/HELO yet.
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

pub struct Session {
    config: Arc<SessionConfig>,
    services: Services,
    metrics: Metrics,
    id: String,
    client_ip: IpAddr,
    helo: Option<(String, bool)>,
    state: State,
    errors: u32,
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
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// RFC 5321 §4.3.1: the 220 greeting. No enhanced code (RFC 2034 §3).
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP Mailfleet", self.config.hostname))
    }

    /// Parses and runs one command line.
    pub async fn handle_line(&mut self, line: &[u8]) -> Reply {
        let reply = match parse_command(line) {
            Ok(command) => self.handle(command).await,
            Err(error) => {
                tracing::debug!(%error, "bad command");
                parse_error_reply(&error)
            }
        };
        self.count_error(&reply);
        reply
    }

    /// A command line over the limit (already skipped to its end).
    pub fn line_too_long(&mut self) -> Reply {
        self.count_error(&reply::LINE_TOO_LONG);
        reply::LINE_TOO_LONG
    }

    /// True once `max_errors` bad commands were seen: the loop sends
    /// `421 4.7.0` and closes.
    pub fn too_many_errors(&self) -> bool {
        self.errors >= self.config.max_errors
    }

    fn count_error(&mut self, reply: &Reply) {
        // Syntax, sequence and unknown-command errors: the signs of a
        // confused or hostile client, not of a refused address.
        if matches!(reply.code, 500..=504 | 555) {
            self.errors += 1;
        }
    }

    async fn handle(&mut self, command: Command) -> Reply {
        match command {
            Command::Ehlo { host } => self.ehlo(host),
            Command::Helo { host } => self.helo(host),
            Command::Mail(from) => self.mail(from).await,
            Command::Rcpt(to) => self.rcpt(to).await,
            Command::Data => self.data(),
            Command::Rset => self.rset(),
            Command::Noop => reply::OK,
            Command::Quit => reply::BYE,
            Command::Vrfy => reply::CANNOT_VRFY,
            Command::Help => reply::HELP,
            Command::NotImplemented { verb } => {
                tracing::debug!(verb, "command not implemented");
                reply::NOT_IMPLEMENTED
            }
        }
    }

    /// RFC 5321 §4.1.1.1: EHLO opens the session and resets any transaction.
    fn ehlo(&mut self, host: String) -> Reply {
        self.helo = Some((host.clone(), true));
        self.state = State::Ready;
        // RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 6152 8BITMIME,
        // RFC 6531 SMTPUTF8, RFC 2034 ENHANCEDSTATUSCODES.
        Reply::plain(
            250,
            format!(
                "{} greets {}\nPIPELINING\n8BITMIME\nSMTPUTF8\nSIZE {}\nENHANCEDSTATUSCODES",
                self.config.hostname,
                printable(&host),
                self.config.max_message_size
            ),
        )
    }

    fn helo(&mut self, host: String) -> Reply {
        self.helo = Some((host, false));
        self.state = State::Ready;
        Reply::plain(250, self.config.hostname.clone())
    }

    /// RFC 5321 §4.1.1.2.
    async fn mail(&mut self, from: MailFrom) -> Reply {
        match self.state {
            State::Greeting => return reply::NEED_EHLO,
            State::Ready => {}
            State::Mail(_) | State::Rcpt(_) | State::Data(_) => return reply::NESTED_MAIL,
        }
        // RFC 1870 §6.1: a declared size over the limit is refused at once.
        if from.size.is_some_and(|s| s > self.config.max_message_size) {
            return reply::SIZE_DECLARED_TOO_BIG;
        }
        if let Some(reply) = self.rate_limited().await {
            return reply;
        }
        tracing::debug!(mail_from = %from.address, "sender accepted");
        self.state = State::Mail(Transaction {
            mail_from: from,
            recipients: Vec::new(),
        });
        reply::SENDER_OK
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

    /// RFC 5321 §4.1.1.3.
    async fn rcpt(&mut self, to: RcptTo) -> Reply {
        let count = match &self.state {
            State::Mail(t) | State::Rcpt(t) => t.recipients.len(),
            State::Greeting | State::Ready | State::Data(_) => return reply::NEED_MAIL,
        };
        // RFC 5321 §4.5.3.1.10: at least 100 must be accepted; past the
        // configured limit, 452 tells the client to send the rest later.
        if count >= self.config.max_recipients {
            return reply::TOO_MANY_RECIPIENTS;
        }
        let account = match self.services.lookup.lookup(&to.address).await {
            Ok(Lookup::Local { account }) => account,
            Ok(Lookup::UnknownUser) => {
                tracing::info!(rcpt_to = %to.address, "unknown user");
                return reply::USER_UNKNOWN;
            }
            // Without AUTH (none on the MX listener) nobody may relay.
            Ok(Lookup::Remote) => {
                tracing::info!(rcpt_to = %to.address, "relay denied");
                return reply::RELAY_DENIED;
            }
            Err(error) => {
                tracing::warn!(rcpt_to = %to.address, %error, "recipient lookup failed");
                return reply::LOOKUP_FAILED;
            }
        };
        let transaction = match std::mem::replace(&mut self.state, State::Ready) {
            State::Mail(t) | State::Rcpt(t) => t,
            // Checked above; the state did not change while awaiting.
            other => {
                self.state = other;
                return reply::NEED_MAIL;
            }
        };
        let mut transaction = transaction;
        // A recipient repeated (or another address of the same account) is
        // acknowledged but delivered once.
        if !transaction.recipients.iter().any(|r| r.account == account) {
            transaction.recipients.push(Recipient {
                address: to.address,
                account,
            });
        }
        self.state = State::Rcpt(transaction);
        reply::RECIPIENT_OK
    }

    /// RFC 5321 §4.1.1.4.
    fn data(&mut self) -> Reply {
        match std::mem::replace(&mut self.state, State::Ready) {
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
        let (reply, result) = match outcome {
            DataOutcome::TooBig { size } => {
                tracing::info!(size, "message too big");
                (reply::MESSAGE_TOO_BIG, "too_big")
            }
            DataOutcome::BareLf => {
                tracing::info!("message with bare lf refused");
                (reply::BARE_LF, "bare_lf")
            }
            DataOutcome::Message(message) => self.accept(transaction, message).await,
        };
        self.metrics.transaction(result);
        reply
    }

    async fn accept(&self, transaction: Transaction, message: Vec<u8>) -> (Reply, &'static str) {
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let envelope = Envelope {
            session_id: self.id.clone(),
            client_ip: self.client_ip,
            helo,
            esmtp,
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

/// A filter's permanent refusal as a reply; anything that is not a 5xx
/// with a 5.x.x code is made one, so a REJECT can never read as success.
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
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(stream);
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
                conn.read_line(config.max_line_length),
            ) => read,
        };
        let reply = match read {
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
                Line::TooLong => session.line_too_long(),
                Line::Complete(line) => session.handle_line(&line).await,
            },
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
