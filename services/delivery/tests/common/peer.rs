//! A real SMTP server for delivery tests, on a loopback address of its own
//! (Linux routes all of 127.0.0.0/8 to `lo`), so that several MX hosts can
//! share the one `delivery.remote_smtp_port`. It accepts, defers or refuses
//! recipients as told, optionally offers STARTTLS, and records every
//! message it accepted (dot-unstuffed) for the test to check.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the peer answers to RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Accept,
    /// `451 4.7.1` to the first `n` RCPT commands, then accept.
    DeferFirst(usize),
    /// `451 4.7.1` for ever.
    DeferAlways,
    /// `550 5.1.1`.
    Refuse,
    /// Accept, but take this many milliseconds to answer the final dot.
    SlowAccept(u64),
    /// Accept, but answer the first DATA command of the peer's life only
    /// after this many milliseconds (a server that stalls).
    StallFirstData(u64),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub recipients: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// The user that authenticated (AUTH PLAIN), if any.
    pub user: Option<String>,
}

#[derive(Default)]
struct State {
    rcpt_seen: usize,
    messages: Vec<Received>,
    connections: usize,
    data_commands: usize,
    active: usize,
    max_active: usize,
    /// (client address, EHLO name) of each session.
    clients: Vec<(IpAddr, String)>,
    /// When set: AUTH PLAIN required (after STARTTLS) with this
    /// (user, expected base64 token).
    auth: Option<(String, String)>,
}

pub struct Peer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    /// A smarthost: STARTTLS, then AUTH PLAIN as `user` with `password`
    /// required before MAIL.
    pub async fn start_relay(
        ip: IpAddr,
        port: u16,
        tls: tokio_rustls::TlsAcceptor,
        user: &str,
        password: &str,
    ) -> Peer {
        let peer = Peer::start(ip, port, Mode::Accept, Some(tls)).await;
        let token = mailfleet_runtime::base64::encode(format!("\0{user}\0{password}").as_bytes());
        peer.state.lock().unwrap().auth = Some((user.to_owned(), token));
        peer
    }

    pub async fn start(
        ip: IpAddr,
        port: u16,
        mode: Mode,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Peer {
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .expect("bind test SMTP peer");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, client)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    {
                        let mut s = state.lock().unwrap();
                        s.connections += 1;
                        s.active += 1;
                        s.max_active = s.max_active.max(s.active);
                    }
                    let _ = session(stream, client.ip(), mode, tls, state.clone()).await;
                    state.lock().unwrap().active -= 1;
                });
            }
        });
        Peer { addr, state, task }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// (client address, EHLO name) of every EHLO seen.
    pub fn clients(&self) -> Vec<(IpAddr, String)> {
        self.state.lock().unwrap().clients.clone()
    }

    /// RCPT commands seen (each one an attempt for one recipient).
    pub fn rcpts_seen(&self) -> usize {
        self.state.lock().unwrap().rcpt_seen
    }

    /// DATA commands seen.
    pub fn data_commands(&self) -> usize {
        self.state.lock().unwrap().data_commands
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.state.lock().unwrap().active
    }

    /// The most sessions that were open at once.
    pub fn max_concurrent(&self) -> usize {
        self.state.lock().unwrap().max_active
    }
}

async fn session(
    stream: tokio::net::TcpStream,
    client: IpAddr,
    mode: Mode,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut conn = BufReader::new(stream);
    conn.get_mut().write_all(b"220 peer.test ESMTP\r\n").await?;
    match dialogue(&mut conn, client, mode, tls.is_some(), false, &state).await? {
        Next::Close => Ok(()),
        Next::StartTls => {
            let acceptor = tls.expect("STARTTLS only offered with a certificate");
            let secure = acceptor.accept(conn.into_inner()).await?;
            let mut conn = BufReader::new(secure);
            dialogue(&mut conn, client, mode, false, true, &state).await?;
            Ok(())
        }
    }
}

enum Next {
    Close,
    StartTls,
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    client: IpAddr,
    mode: Mode,
    offer_tls: bool,
    secure: bool,
    state: &Arc<Mutex<State>>,
) -> std::io::Result<Next> {
    let mut mail_from = String::new();
    let mut recipients = Vec::new();
    let auth = state.lock().unwrap().auth.clone();
    let mut user: Option<String> = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(Next::Close);
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let name = line[4..].trim().to_owned();
            state.lock().unwrap().clients.push((client, name));
            let mut r = String::from("250-peer.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
            if offer_tls {
                r.push_str("250-STARTTLS\r\n");
            }
            if secure && auth.is_some() {
                r.push_str("250-AUTH LOGIN PLAIN\r\n");
            }
            r.push_str("250 SIZE 10000000\r\n");
            r
        } else if upper.starts_with("STARTTLS") {
            conn.get_mut().write_all(b"220 go ahead\r\n").await?;
            return Ok(Next::StartTls);
        } else if upper.starts_with("AUTH PLAIN ") {
            match &auth {
                Some((name, token)) if secure && line[11..].trim() == token => {
                    user = Some(name.clone());
                    "235 2.7.0 authenticated\r\n".into()
                }
                _ => "535 5.7.8 bad credentials\r\n".into(),
            }
        } else if upper.starts_with("MAIL FROM:") && auth.is_some() && user.is_none() {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = between_brackets(&line);
            recipients.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let n = {
                let mut s = state.lock().unwrap();
                s.rcpt_seen += 1;
                s.rcpt_seen
            };
            let deferred = match mode {
                Mode::DeferFirst(k) => n <= k,
                Mode::DeferAlways => true,
                _ => false,
            };
            if deferred {
                "451 4.7.1 greylisted, try again later\r\n".into()
            } else if mode == Mode::Refuse {
                "550 5.1.1 no such user here\r\n".into()
            } else {
                recipients.push(between_brackets(&line));
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            let n = {
                let mut s = state.lock().unwrap();
                s.data_commands += 1;
                s.data_commands
            };
            if let Mode::StallFirstData(ms) = mode
                && n == 1
            {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            if recipients.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                conn.get_mut().write_all(b"354 go ahead\r\n").await?;
                let data = read_data(conn).await?;
                if let Mode::SlowAccept(ms) = mode {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                state.lock().unwrap().messages.push(Received {
                    mail_from: mail_from.clone(),
                    recipients: std::mem::take(&mut recipients),
                    data,
                    tls: secure,
                    user: user.clone(),
                });
                "250 2.0.0 ok: queued\r\n".into()
            }
        } else if upper.starts_with("RSET") {
            recipients.clear();
            "250 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            conn.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(Next::Close);
        } else {
            "500 5.5.2 what?\r\n".into()
        };
        conn.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// Reads up to the lone `.` line; returns the unstuffed data.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if conn.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" {
            return Ok(data);
        }
        data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
    }
}

fn between_brackets(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line.rfind('>').unwrap_or(line.len());
    line.get(start..end).unwrap_or_default().to_owned()
}

/// A test CA and a certificate it issued for `host`: the acceptor for the
/// peer and the CA's DER for a client that should trust it.
pub fn tls_for(
    host: &str,
) -> (
    tokio_rustls::TlsAcceptor,
    rustls::pki_types::CertificateDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.der().clone(),
    )
}
