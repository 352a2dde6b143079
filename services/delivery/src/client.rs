//! The outbound SMTP client: one transaction (one message, the recipients
//! of one domain) over one connection to one MX address.
//!
//! EHLO with our hostname, opportunistic STARTTLS ([`crate::tls`]), then
//! MAIL/RCPT/DATA — pipelined when the server offers PIPELINING (RFC 2920),
//! with SIZE (RFC 1870), BODY=8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531) as
//! negotiated — under the timeouts of RFC 5321 §4.5.3.2. Replies are parsed
//! by [`crate::reply`]; nothing the server sends can make us panic, only
//! end the attempt with an [`SmtpError`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::reply::{Extensions, Reply, ReplyError, ReplyParser};
use crate::tls::{TlsClient, TlsOutcome};
use crate::wire;

/// Longest reply line we read (RFC 5321 §4.5.3.1.5 says 512; servers put
/// long texts in replies, so leave room).
const MAX_LINE: usize = 4096;
/// Size of each DATA write, each under the data block timeout.
const DATA_CHUNK: usize = 64 * 1024;

/// RFC 5321 §4.5.3.2 timeouts, plus a connect timeout.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    /// §4.5.3.2.1: initial 220, 5 minutes.
    pub greeting: Duration,
    /// EHLO, STARTTLS, TLS handshake, RSET, QUIT: treated like MAIL.
    pub command: Duration,
    /// §4.5.3.2.2: MAIL, 5 minutes.
    pub mail: Duration,
    /// §4.5.3.2.3: RCPT, 5 minutes.
    pub rcpt: Duration,
    /// §4.5.3.2.4: DATA initiation, 2 minutes.
    pub data_init: Duration,
    /// §4.5.3.2.5: each data block, 3 minutes.
    pub data_block: Duration,
    /// §4.5.3.2.6: the reply to the final dot, 10 minutes.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: minutes(5),
            command: minutes(5),
            mail: minutes(5),
            rcpt: minutes(5),
            data_init: minutes(2),
            data_block: minutes(3),
            data_end: minutes(10),
        }
    }
}

/// Which step of the dialogue an error or reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataEnd,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataEnd => "end of DATA",
        })
    }
}

/// Why a transaction ended without a verdict per recipient.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("{stage}: {source}")]
    Io { stage: Stage, source: io::Error },
    #[error("{stage}: timed out")]
    Timeout { stage: Stage },
    #[error("{stage}: {source}")]
    Protocol { stage: Stage, source: ReplyError },
    #[error("{stage}: line longer than {MAX_LINE} bytes")]
    LineTooLong { stage: Stage },
    #[error("{stage}: connection closed")]
    Closed { stage: Stage },
    #[error("STARTTLS: {0}")]
    Tls(String),
    /// Smarthost authentication failed or was impossible: a configuration
    /// problem, retried (not bounced) until it is fixed.
    #[error("AUTH: {0}")]
    Auth(String),
    /// The server answered a whole-transaction step with an error reply.
    #[error("{stage}: {reply}")]
    Rejected { stage: Stage, reply: Reply },
    /// RFC 1870: the server's SIZE is smaller than the message.
    #[error("message of {size} bytes exceeds the server's limit of {limit}")]
    TooBig { size: u64, limit: u64 },
    /// An envelope address with control characters (or angle brackets)
    /// could inject commands; it is never sent.
    #[error("invalid envelope address {0:?}")]
    BadAddress(String),
    /// RFC 6531 §3.2: the envelope needs SMTPUTF8 and the server lacks it.
    #[error("the envelope needs SMTPUTF8, which the server does not offer")]
    NoSmtpUtf8,
}

impl SmtpError {
    /// Whether the failure is final for the recipients concerned. Network
    /// trouble and 4xx replies may pass; a 5xx reply, a size the server
    /// refuses or a missing SMTPUTF8 will not.
    pub fn is_permanent(&self) -> bool {
        match self {
            SmtpError::Rejected { reply, .. } => reply.is_permanent(),
            SmtpError::TooBig { .. } | SmtpError::NoSmtpUtf8 | SmtpError::BadAddress(_) => true,
            _ => false,
        }
    }

    /// The server's reply, when there was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SmtpError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// Whether this happened before a secure channel could be set up, so
    /// that trying again without STARTTLS may help.
    pub fn is_tls_failure(&self) -> bool {
        matches!(self, SmtpError::Tls(_))
    }
}

/// One message for one group of recipients.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Empty for the null reverse-path `<>`.
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    /// The [`wire::canonical`] message (signed, if it is to be signed).
    pub message: &'a [u8],
}

/// How the connection went and what the server said to each recipient.
#[derive(Debug)]
pub struct Transaction {
    /// The server's reply to each RCPT, in `recipients` order.
    pub rcpt: Vec<Reply>,
    /// The reply to the final dot; `None` when no recipient was accepted
    /// and no DATA was sent.
    pub data: Option<Reply>,
    /// `None`: plaintext (no STARTTLS offered, or after a failed handshake).
    pub tls: Option<TlsOutcome>,
}

impl Transaction {
    /// The final reply for recipient `i`: its RCPT refusal, or the DATA reply.
    pub fn outcome(&self, i: usize) -> Option<&Reply> {
        let rcpt = self.rcpt.get(i)?;
        if rcpt.is_positive() {
            self.data.as_ref()
        } else {
            Some(rcpt)
        }
    }
}

/// What a client session needs besides the envelope.
#[derive(Clone)]
pub struct ClientSettings {
    /// Our name in EHLO (`hostname` in the config).
    pub ehlo_name: String,
    pub timeouts: Timeouts,
    pub tls: TlsClient,
    /// `false` after a failed TLS handshake with this host: plaintext.
    pub starttls: bool,
    /// The local address to connect from (`delivery.source_ip`).
    pub source_ip: Option<IpAddr>,
    /// Credentials for a smarthost (`AUTH PLAIN`, RFC 4954 and 4616); only
    /// ever sent inside TLS.
    pub auth: Option<Credentials>,
}

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password>)", self.username)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with its read buffer.
struct Connection {
    stream: BufReader<Box<dyn Io>>,
}

impl Connection {
    fn new(io: Box<dyn Io>) -> Connection {
        Connection {
            stream: BufReader::new(io),
        }
    }

    async fn read_line(&mut self, stage: Stage) -> Result<Vec<u8>, SmtpError> {
        let mut line = Vec::new();
        loop {
            let available = self
                .stream
                .fill_buf()
                .await
                .map_err(|source| SmtpError::Io { stage, source })?;
            if available.is_empty() {
                return Err(SmtpError::Closed { stage });
            }
            let (used, done) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if line.len() + used > MAX_LINE {
                return Err(SmtpError::LineTooLong { stage });
            }
            line.extend_from_slice(&available[..used]);
            self.stream.consume(used);
            if done {
                return Ok(line);
            }
        }
    }

    async fn read_reply(&mut self, stage: Stage, timeout: Duration) -> Result<Reply, SmtpError> {
        let read = async {
            let mut parser = ReplyParser::default();
            loop {
                let line = self.read_line(stage).await?;
                if let Some(reply) = parser
                    .push(&line)
                    .map_err(|source| SmtpError::Protocol { stage, source })?
                {
                    return Ok(reply);
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| SmtpError::Timeout { stage })?
    }

    async fn send(
        &mut self,
        stage: Stage,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), SmtpError> {
        let write = async {
            let stream = self.stream.get_mut();
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| SmtpError::Timeout { stage })?
            .map_err(|source| SmtpError::Io { stage, source })
    }

    /// Sends a command and expects a positive reply to it.
    async fn command(
        &mut self,
        stage: Stage,
        line: &str,
        timeout: Duration,
    ) -> Result<Reply, SmtpError> {
        self.send(stage, line.as_bytes(), timeout).await?;
        let reply = self.read_reply(stage, timeout).await?;
        if reply.is_positive() {
            Ok(reply)
        } else {
            Err(SmtpError::Rejected { stage, reply })
        }
    }

    /// Best effort: the transaction's outcome is already known.
    async fn quit(&mut self, timeout: Duration) {
        let _ = self.send(Stage::DataEnd, b"QUIT\r\n", timeout).await;
        let _ = self.read_reply(Stage::DataEnd, timeout).await;
        let _ = self.stream.get_mut().shutdown().await;
    }
}

/// An open SMTP session, past EHLO (and STARTTLS and AUTH when they apply),
/// ready for a transaction. Kept between messages by [`crate::pool`].
pub struct Session {
    conn: Connection,
    ext: Extensions,
    tls: Option<TlsOutcome>,
}

impl Session {
    /// Polite end: QUIT, its reply, then the TCP shutdown; best effort.
    pub async fn quit(mut self, timeout: Duration) {
        self.conn.quit(timeout).await;
    }
}

/// Runs one transaction with the MX at `addr` (`host` is its name, for SNI
/// and certificate verification) on a new connection, closed afterwards.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    envelope: &Envelope<'_>,
) -> Result<Transaction, SmtpError> {
    let (result, session) = deliver_on(None, addr, host, settings, envelope).await;
    if let Some(session) = session {
        session.quit(settings.timeouts.command).await;
    }
    result
}

/// Runs one transaction on `idle` when it still answers (RSET), else on a
/// new connection to `addr`. Returns the session too while the server
/// still talks, for the next message; `None` when it hung up or is
/// closing (421), so the connection is gone.
pub async fn deliver_on(
    idle: Option<Session>,
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    envelope: &Envelope<'_>,
) -> (Result<Transaction, SmtpError>, Option<Session>) {
    let t = &settings.timeouts;
    let mut session = None;
    if let Some(mut idle) = idle {
        // RFC 5321 §4.1.1.5: RSET starts a clean transaction; a server
        // that hung up meanwhile is simply replaced.
        if idle
            .conn
            .command(Stage::Mail, "RSET\r\n", t.mail)
            .await
            .is_ok()
        {
            session = Some(idle);
        }
    }
    let mut session = match session {
        Some(session) => session,
        None => match connect_and_open(addr, host, settings).await {
            Ok(session) => session,
            Err(error) => return (Err(error), None),
        },
    };
    let result = transaction(&mut session.conn, &session.ext, t, envelope).await;
    let tls = session.tls.clone();
    // On a 5xx/4xx for the whole transaction the server still talks (421
    // excepted: it is closing); on an I/O error there is nobody left.
    let talking = match &result {
        Ok(_) => true,
        Err(SmtpError::Rejected { reply, .. }) => reply.code != 421,
        Err(_) => false,
    };
    let result = result.map(|(rcpt, data)| Transaction { rcpt, data, tls });
    (result, talking.then_some(session))
}

async fn connect_and_open(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
) -> Result<Session, SmtpError> {
    let t = &settings.timeouts;
    let stream = tokio::time::timeout(t.connect, connect(addr, settings.source_ip))
        .await
        .map_err(|_| SmtpError::Timeout {
            stage: Stage::Connect,
        })?
        .map_err(|source| SmtpError::Io {
            stage: Stage::Connect,
            source,
        })?;
    // Small commands, pipelined or not: do not wait for Nagle.
    let _ = stream.set_nodelay(true);
    open(Box::new(stream), host, settings).await
}

/// A TCP connection to `addr`, from `source` when given.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Greeting, EHLO, STARTTLS when offered, AUTH when configured: a session
/// ready for MAIL.
async fn open(
    io: Box<dyn Io>,
    host: &str,
    settings: &ClientSettings,
) -> Result<Session, SmtpError> {
    let t = &settings.timeouts;
    let mut conn = Connection::new(io);

    // RFC 5321 §3.1: a 554 greeting means no service; so does any non-220.
    let greeting = conn.read_reply(Stage::Greeting, t.greeting).await?;
    if greeting.code != 220 {
        return Err(SmtpError::Rejected {
            stage: Stage::Greeting,
            reply: greeting,
        });
    }
    let ehlo = format!("EHLO {}\r\n", settings.ehlo_name);
    let mut ext = Extensions::from_ehlo(&conn.command(Stage::Ehlo, &ehlo, t.command).await?);

    let mut tls = None;
    if ext.starttls && settings.starttls {
        conn.command(Stage::StartTls, "STARTTLS\r\n", t.command)
            .await?;
        // RFC 3207 §4.2 (and CVE-2011-0411): anything the server sent after
        // its 220 was not protected and must not be read as a reply later.
        if !conn.stream.buffer().is_empty() {
            return Err(SmtpError::Tls(
                "data after the STARTTLS reply (command injection?)".into(),
            ));
        }
        let (connector, outcome) = settings.tls.connector();
        let name = server_name(host)?;
        let plain = conn.stream.into_inner();
        let secure = tokio::time::timeout(t.command, connector.connect(name, plain))
            .await
            .map_err(|_| SmtpError::Tls("handshake timed out".into()))?
            .map_err(|error| SmtpError::Tls(error.to_string()))?;
        tls = outcome.lock().ok().and_then(|o| o.clone());
        conn = Connection::new(Box::new(secure));
        // RFC 3207 §4.2: forget what was learned before TLS; EHLO again.
        ext = Extensions::from_ehlo(&conn.command(Stage::Ehlo, &ehlo, t.command).await?);
    }

    if let Some(credentials) = &settings.auth {
        authenticate(&mut conn, &ext, tls.is_some(), credentials, t).await?;
    }
    Ok(Session { conn, ext, tls })
}

/// One transaction over an established stream, without a pool (tests over
/// an in-memory duplex).
#[cfg(test)]
async fn deliver_over(
    io: Box<dyn Io>,
    host: &str,
    settings: &ClientSettings,
    envelope: &Envelope<'_>,
) -> Result<Transaction, SmtpError> {
    let t = &settings.timeouts;
    let mut session = open(io, host, settings).await?;
    let result = transaction(&mut session.conn, &session.ext, t, envelope).await;
    if matches!(&result, Ok(_) | Err(SmtpError::Rejected { .. })) {
        session.conn.quit(t.command).await;
    }
    let (rcpt, data) = result?;
    Ok(Transaction {
        rcpt,
        data,
        tls: session.tls,
    })
}

/// AUTH PLAIN (RFC 4616) to a smarthost; never without TLS, where the
/// password would cross the network in clear.
async fn authenticate(
    conn: &mut Connection,
    ext: &Extensions,
    secure: bool,
    credentials: &Credentials,
    t: &Timeouts,
) -> Result<(), SmtpError> {
    if !secure {
        return Err(SmtpError::Auth(
            "the relay offers no STARTTLS; credentials are never sent in clear".into(),
        ));
    }
    if !ext.auth.iter().any(|m| m == "PLAIN") {
        return Err(SmtpError::Auth(format!(
            "the relay does not offer AUTH PLAIN (offers: {})",
            ext.auth.join(" ")
        )));
    }
    let token = mailfleet_runtime::base64::encode(
        format!("\0{}\0{}", credentials.username, credentials.password).as_bytes(),
    );
    conn.send(
        Stage::Auth,
        format!("AUTH PLAIN {token}\r\n").as_bytes(),
        t.command,
    )
    .await?;
    let reply = conn.read_reply(Stage::Auth, t.command).await?;
    if reply.code == 235 {
        Ok(())
    } else {
        Err(SmtpError::Auth(format!(
            "the relay refused our credentials: {reply}"
        )))
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, SmtpError> {
    let host = host.trim_end_matches('.');
    ServerName::try_from(host.to_owned())
        .map_err(|error| SmtpError::Tls(format!("invalid server name {host:?}: {error}")))
}

/// The MAIL FROM line with the parameters the server's extensions allow.
fn mail_command(ext: &Extensions, envelope: &Envelope<'_>) -> Result<String, SmtpError> {
    let unsafe_address = |a: &str| a.chars().any(|c| c.is_control() || c == '<' || c == '>');
    if let Some(bad) = std::iter::once(envelope.mail_from)
        .chain(envelope.recipients.iter().map(String::as_str))
        .find(|a| unsafe_address(a))
    {
        return Err(SmtpError::BadAddress(bad.to_owned()));
    }
    let size = envelope.message.len() as u64;
    let mut line = format!("MAIL FROM:<{}>", envelope.mail_from);
    if let Some(limit) = ext.size {
        if limit > 0 && size > limit {
            return Err(SmtpError::TooBig { size, limit });
        }
        line.push_str(&format!(" SIZE={size}"));
    }
    if ext.eight_bit_mime && wire::is_eight_bit(envelope.message) {
        line.push_str(" BODY=8BITMIME");
    }
    if wire::needs_smtputf8(envelope.mail_from, envelope.recipients) {
        if !ext.smtputf8 {
            return Err(SmtpError::NoSmtpUtf8);
        }
        line.push_str(" SMTPUTF8");
    }
    line.push_str("\r\n");
    Ok(line)
}

/// MAIL, RCPT for each recipient, DATA; returns the RCPT replies and the
/// reply to the final dot (`None` when no recipient was accepted).
async fn transaction(
    conn: &mut Connection,
    ext: &Extensions,
    t: &Timeouts,
    envelope: &Envelope<'_>,
) -> Result<(Vec<Reply>, Option<Reply>), SmtpError> {
    let mail = mail_command(ext, envelope)?;
    let rcpts: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| format!("RCPT TO:<{r}>\r\n"))
        .collect();

    let (rcpt_replies, data_reply) = if ext.pipelining {
        // RFC 2920 §3.1: MAIL, every RCPT and DATA in one group; then the
        // replies in order.
        let mut batch = mail.clone().into_bytes();
        for rcpt in &rcpts {
            batch.extend_from_slice(rcpt.as_bytes());
        }
        batch.extend_from_slice(b"DATA\r\n");
        conn.send(Stage::Mail, &batch, t.mail).await?;
        let mail_reply = conn.read_reply(Stage::Mail, t.mail).await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in &rcpts {
            rcpt_replies.push(conn.read_reply(Stage::Rcpt, t.rcpt).await?);
        }
        let data_reply = conn.read_reply(Stage::Data, t.data_init).await?;
        if !mail_reply.is_positive() {
            if data_reply.code == 354 {
                // Should not happen after a refused MAIL; end the (empty)
                // data so the session stays in step.
                conn.send(Stage::DataEnd, b".\r\n", t.data_block).await?;
                let _ = conn.read_reply(Stage::DataEnd, t.data_end).await;
            }
            return Err(SmtpError::Rejected {
                stage: Stage::Mail,
                reply: mail_reply,
            });
        }
        if !rcpt_replies.iter().any(Reply::is_positive) {
            if data_reply.code == 354 {
                // RFC 2920 §3.1: no valid recipient, yet DATA accepted: send
                // an empty message's end; its reply means nothing.
                conn.send(Stage::DataEnd, b".\r\n", t.data_block).await?;
                let _ = conn.read_reply(Stage::DataEnd, t.data_end).await;
            }
            return Ok((rcpt_replies, None));
        }
        (rcpt_replies, data_reply)
    } else {
        conn.command(Stage::Mail, &mail, t.mail).await?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for rcpt in &rcpts {
            conn.send(Stage::Rcpt, rcpt.as_bytes(), t.rcpt).await?;
            rcpt_replies.push(conn.read_reply(Stage::Rcpt, t.rcpt).await?);
        }
        if !rcpt_replies.iter().any(Reply::is_positive) {
            return Ok((rcpt_replies, None));
        }
        conn.send(Stage::Data, b"DATA\r\n", t.data_init).await?;
        let data_reply = conn.read_reply(Stage::Data, t.data_init).await?;
        (rcpt_replies, data_reply)
    };

    if data_reply.code != 354 {
        return Err(SmtpError::Rejected {
            stage: Stage::Data,
            reply: data_reply,
        });
    }
    let payload = wire::dot_stuff(envelope.message);
    for chunk in payload.chunks(DATA_CHUNK) {
        conn.send(Stage::DataEnd, chunk, t.data_block).await?;
    }
    let end = conn.read_reply(Stage::DataEnd, t.data_end).await?;
    Ok((rcpt_replies, Some(end)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn settings() -> ClientSettings {
        ClientSettings {
            ehlo_name: "out.example.test".into(),
            timeouts: Timeouts {
                connect: Duration::from_secs(2),
                greeting: Duration::from_secs(2),
                command: Duration::from_secs(2),
                mail: Duration::from_secs(2),
                rcpt: Duration::from_secs(2),
                data_init: Duration::from_secs(2),
                data_block: Duration::from_secs(2),
                data_end: Duration::from_secs(2),
            },
            tls: TlsClient::new(rustls::RootCertStore::empty()),
            starttls: true,
            source_ip: None,
            auth: None,
        }
    }

    /// A scripted server: for each `(expect, reply)` reads until the
    /// client's bytes end with `expect`, then writes `reply`. Returns
    /// everything the client sent.
    async fn script(mut server: DuplexStream, steps: Vec<(&'static str, &'static str)>) -> String {
        let mut seen = Vec::new();
        for (expect, reply) in steps {
            while !seen.ends_with(expect.as_bytes()) {
                let mut buf = [0u8; 4096];
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    return String::from_utf8_lossy(&seen).into_owned();
                }
                seen.extend_from_slice(&buf[..n]);
            }
            server.write_all(reply.as_bytes()).await.unwrap();
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    async fn run(
        steps: Vec<(&'static str, &'static str)>,
        envelope: Envelope<'_>,
    ) -> (Result<Transaction, SmtpError>, String) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(script(server, steps));
        let result =
            deliver_over(Box::new(client), "mx.example.test", &settings(), &envelope).await;
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn pipelined_transaction_with_partial_refusal() {
        let recipients = vec!["a@example.test".to_string(), "b@example.test".to_string()];
        let envelope = Envelope {
            mail_from: "s@origin.test",
            recipients: &recipients,
            message: b"Subject: x\r\n\r\n.\r\n",
        };
        let (result, transcript) = run(
            vec![
                ("", "220 mx ready\r\n"),
                (
                    "EHLO out.example.test\r\n",
                    "250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
                ),
                (
                    "DATA\r\n",
                    "250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n",
                ),
                ("\r\n.\r\n", "250 2.0.0 queued\r\n"),
                ("QUIT\r\n", "221 bye\r\n"),
            ],
            envelope,
        )
        .await;
        let t = result.unwrap();
        assert_eq!(t.outcome(0).unwrap().code, 250);
        assert_eq!(t.outcome(1).unwrap().code, 550);
        assert_eq!(t.tls, None);
        assert_eq!(
            transcript,
            "EHLO out.example.test\r\n\
             MAIL FROM:<s@origin.test> SIZE=17\r\n\
             RCPT TO:<a@example.test>\r\n\
             RCPT TO:<b@example.test>\r\n\
             DATA\r\n\
             Subject: x\r\n\r\n..\r\n.\r\n\
             QUIT\r\n"
        );
    }

    #[tokio::test]
    async fn sequential_without_pipelining_and_no_data_when_all_refused() {
        let recipients = vec!["a@example.test".to_string()];
        let envelope = Envelope {
            mail_from: "",
            recipients: &recipients,
            message: b"x\r\n",
        };
        let (result, transcript) = run(
            vec![
                ("", "220 mx\r\n"),
                ("EHLO out.example.test\r\n", "250 mx\r\n"),
                ("MAIL FROM:<>\r\n", "250 ok\r\n"),
                ("RCPT TO:<a@example.test>\r\n", "451 4.7.1 later\r\n"),
                ("QUIT\r\n", "221 bye\r\n"),
            ],
            envelope,
        )
        .await;
        let t = result.unwrap();
        assert!(t.data.is_none());
        assert!(t.outcome(0).unwrap().is_transient());
        assert!(!transcript.contains("DATA"));
    }

    #[tokio::test]
    async fn whole_transaction_errors() {
        let recipients = vec!["a@example.test".to_string()];
        let envelope = Envelope {
            mail_from: "s@o.test",
            recipients: &recipients,
            message: b"x\r\n",
        };
        let (result, _) = run(vec![("", "554 no service\r\n")], envelope.clone()).await;
        let error = result.unwrap_err();
        assert!(error.is_permanent(), "{error}");

        let (result, _) = run(
            vec![
                ("", "220 mx\r\n"),
                ("EHLO out.example.test\r\n", "250-mx\r\n250 SIZE 2\r\n"),
            ],
            envelope.clone(),
        )
        .await;
        assert!(matches!(
            result.unwrap_err(),
            SmtpError::TooBig { size: 3, limit: 2 }
        ));

        let (result, _) = run(
            vec![
                ("", "220 mx\r\n"),
                ("EHLO out.example.test\r\n", "250 mx\r\n"),
                ("MAIL FROM:<s@o.test>\r\n", "421 4.3.2 shutting down\r\n"),
            ],
            envelope.clone(),
        )
        .await;
        let error = result.unwrap_err();
        assert!(!error.is_permanent());
        assert_eq!(error.reply().unwrap().code, 421);

        // Garbage instead of a reply, and a server that hangs up.
        let (result, _) = run(vec![("", "HTTP/1.1 400 Bad\r\n")], envelope.clone()).await;
        assert!(matches!(result.unwrap_err(), SmtpError::Protocol { .. }));
        let (result, _) = run(vec![("", "220-mx\r\n")], envelope.clone()).await;
        assert!(!result.unwrap_err().is_permanent());
    }

    #[tokio::test]
    async fn smtputf8_and_8bitmime_negotiation() {
        let recipients = vec!["j\u{f6}rg@example.test".to_string()];
        let message = "Subject: caf\u{e9}\r\n\r\n\u{e9}\r\n".as_bytes();
        let envelope = Envelope {
            mail_from: "s@o.test",
            recipients: &recipients,
            message,
        };
        let (result, _) = run(
            vec![
                ("", "220 mx\r\n"),
                ("EHLO out.example.test\r\n", "250 mx\r\n"),
            ],
            envelope.clone(),
        )
        .await;
        let error = result.unwrap_err();
        assert!(matches!(error, SmtpError::NoSmtpUtf8));
        assert!(error.is_permanent());

        let (result, transcript) = run(
            vec![
                ("", "220 mx\r\n"),
                (
                    "EHLO out.example.test\r\n",
                    "250-mx\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
                ),
                ("\r\n", "250 ok\r\n"),
                ("\r\n", "250 ok\r\n"),
                ("DATA\r\n", "354 go\r\n"),
                ("\r\n.\r\n", "250 ok\r\n"),
                ("QUIT\r\n", "221 bye\r\n"),
            ],
            envelope,
        )
        .await;
        result.unwrap();
        assert!(
            transcript.contains("MAIL FROM:<s@o.test> BODY=8BITMIME SMTPUTF8\r\n"),
            "{transcript}"
        );
    }

    /// Bytes sent after the 220 to STARTTLS, in the same packet, are an
    /// injection attempt (CVE-2011-0411 class): the attempt ends.
    #[tokio::test]
    async fn starttls_injection_is_refused() {
        let recipients = vec!["a@example.test".to_string()];
        let envelope = Envelope {
            mail_from: "s@o.test",
            recipients: &recipients,
            message: b"x\r\n",
        };
        let (result, _) = run(
            vec![
                ("", "220 mx\r\n"),
                ("EHLO out.example.test\r\n", "250-mx\r\n250 STARTTLS\r\n"),
                ("STARTTLS\r\n", "220 go ahead\r\n250 injected\r\n"),
            ],
            envelope,
        )
        .await;
        let error = result.unwrap_err();
        assert!(error.is_tls_failure(), "{error}");
    }
}
