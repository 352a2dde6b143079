//! Connections: the loopback guard, plain TCP or TLS behind one boxed stream
//! type, line reading with a length cap and a timeout, and the client error
//! type every scenario counts by kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::net::TcpStream;

/// Longest response line accepted from a server; a longer one is an error
/// (a load generator must not grow without bound on a broken server).
pub const MAX_LINE: usize = 64 * 1024;

/// Any byte stream a session runs on.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type Conn = BufReader<Box<dyn Stream>>;

/// What went wrong in a client session; [`ClientError::kind`] is the key
/// under which it is counted.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("connection closed by server")]
    Closed,
    #[error("malformed response: {0}")]
    Protocol(String),
    #[error("tls: {0}")]
    Tls(String),
    /// An SMTP reply that was not the expected one, e.g. `550 5.1.1 ...`.
    #[error("smtp {code}: {text}")]
    Smtp { code: u16, text: String },
    /// An IMAP tagged `NO` or `BAD`.
    #[error("imap {status}: {text}")]
    Imap { status: String, text: String },
}

impl ClientError {
    pub fn kind(&self) -> String {
        match self {
            ClientError::Connect(_) => "connect".into(),
            ClientError::Io(_) => "io".into(),
            ClientError::Timeout => "timeout".into(),
            ClientError::Closed => "closed".into(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Tls(_) => "tls".into(),
            ClientError::Smtp { code, .. } => code.to_string(),
            ClientError::Imap { status, .. } => status.clone(),
        }
    }

    /// Whether the session can go on after this error (a reply), or must
    /// reconnect (the stream is in an unknown state).
    pub fn is_reply(&self) -> bool {
        matches!(self, ClientError::Smtp { .. } | ClientError::Imap { .. })
    }
}

/// Resolves `target` (`host:port`) and refuses any address that is not
/// loopback unless `allow_remote`: a load generator pointed at someone
/// else's server by a typo is an attack.
pub async fn resolve(target: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    check_loopback(target, &addrs, allow_remote)
}

pub fn check_loopback(
    target: &str,
    addrs: &[SocketAddr],
    allow_remote: bool,
) -> Result<SocketAddr, String> {
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{target} resolves to no address"))?;
    if !allow_remote && addrs.iter().any(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{target} is not a loopback address; pass --allow-remote to load a remote server"
        ));
    }
    Ok(first)
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(ClientError::Connect)?;
    let _ = tcp.set_nodelay(true);
    Ok(BufReader::new(Box::new(tcp) as Box<dyn Stream>))
}

/// Wraps the connection in TLS (after STARTTLS). Any bytes still buffered
/// were sent in clear after the server's go-ahead, which RFC 3207 §4.2 says
/// to discard; a well-behaved server sends none.
pub async fn start_tls(conn: Conn, timeout: Duration) -> Result<Conn, ClientError> {
    let inner = conn.into_inner();
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    let name = ServerName::try_from("localhost").expect("static name");
    let tls = tokio::time::timeout(timeout, connector.connect(name, inner))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(BufReader::new(Box::new(tls) as Box<dyn Stream>))
}

/// Reads one line (CRLF or LF ended, terminator included) within `timeout`.
pub async fn read_line(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ClientError> {
    buf.clear();
    let read = async {
        loop {
            let available = conn.fill_buf().await?;
            if available.is_empty() {
                return Err(ClientError::Closed);
            }
            if let Some(i) = available.iter().position(|&b| b == b'\n') {
                buf.extend_from_slice(&available[..=i]);
                conn.consume(i + 1);
                return Ok(());
            }
            let n = available.len();
            buf.extend_from_slice(available);
            conn.consume(n);
            if buf.len() > MAX_LINE {
                return Err(ClientError::Protocol("response line too long".into()));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Reads exactly `n` bytes (an IMAP literal) within `timeout`.
pub async fn read_exact(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    n: usize,
    timeout: Duration,
) -> Result<(), ClientError> {
    let start = buf.len();
    buf.resize(start + n, 0);
    tokio::time::timeout(timeout, conn.read_exact(&mut buf[start..]))
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        })?;
    Ok(())
}

pub async fn write_all(
    conn: &mut Conn,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), ClientError> {
    use tokio::io::AsyncWriteExt;
    let w = async {
        conn.get_mut().write_all(bytes).await?;
        conn.get_mut().flush().await
    };
    tokio::time::timeout(timeout, w)
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(ClientError::Io)
}

/// A TLS client configuration that accepts any certificate: the servers under
/// test use self-signed ones, and the load is what is measured, not the PKI.
/// Signatures are still verified, so the handshake costs what a real one does.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_guard() {
        let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
        let local6: SocketAddr = "[::1]:25".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:25".parse().unwrap();
        assert_eq!(check_loopback("x", &[local, local6], false), Ok(local));
        assert!(check_loopback("x", &[local, remote], false).is_err());
        assert_eq!(check_loopback("x", &[remote], true), Ok(remote));
        assert!(check_loopback("x", &[], true).is_err());
    }

    #[tokio::test]
    async fn lines_are_capped_and_eof_is_closed() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut conn: Conn = BufReader::new(Box::new(client) as Box<dyn Stream>);
        use tokio::io::AsyncWriteExt;
        server.write_all(b"220 hi\r\nabc").await.unwrap();
        let t = Duration::from_secs(1);
        let mut buf = Vec::new();
        read_line(&mut conn, &mut buf, t).await.unwrap();
        assert_eq!(buf, b"220 hi\r\n");
        server.write_all(&vec![b'x'; MAX_LINE + 10]).await.unwrap();
        assert!(matches!(
            read_line(&mut conn, &mut buf, t).await,
            Err(ClientError::Protocol(_))
        ));
        let (client2, server2) = tokio::io::duplex(64);
        drop(server2);
        let mut conn2: Conn = BufReader::new(Box::new(client2) as Box<dyn Stream>);
        assert!(matches!(
            read_line(&mut conn2, &mut buf, t).await,
            Err(ClientError::Closed)
        ));
    }
}
