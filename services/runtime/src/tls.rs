//! The server certificate of every TLS listener (SMTP STARTTLS and
//! submissions, IMAP/POP3 STARTTLS and implicit TLS), with rustls on the
//! aws-lc-rs provider, TLS 1.2 and 1.3 only.
//!
//! The certificate comes from `[tls] cert_file`/`key_file` and is reloaded
//! when the files change (cert-manager renews in place), keeping the old one
//! if the new files do not load. Without files, a single node generates a
//! self-signed certificate for `hostname` into `<data_dir>/tls/` at first
//! start and keeps it, so STARTTLS works out of the box and clients can pin it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("certificate and key do not work together: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Hands out the current acceptor; swapped in place on reload.
pub struct TlsProvider {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<TlsAcceptor>,
    loaded_at: RwLock<Option<SystemTime>>,
}

impl TlsProvider {
    /// Loads the configured certificate, or the single node's self-signed
    /// one (generated on first use).
    pub fn from_config(config: &Config) -> Result<TlsProvider, TlsError> {
        let (cert_file, key_file) = if config.tls.cert_file.is_empty() {
            ensure_self_signed(&config.data_dir.join("tls"), &config.hostname)?
        } else {
            (
                PathBuf::from(&config.tls.cert_file),
                PathBuf::from(&config.tls.key_file),
            )
        };
        Self::from_files(&cert_file, &key_file)
    }

    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<TlsProvider, TlsError> {
        let acceptor = load(cert_file, key_file)?;
        Ok(TlsProvider {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(acceptor),
            loaded_at: RwLock::new(modified(cert_file).max(modified(key_file))),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().expect("tls lock").clone()
    }

    /// The PEM certificate file in use (tests trust it as their CA).
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// Reloads if either file changed since the last load. A certificate
    /// that does not load is logged and the old one kept.
    pub fn reload_if_changed(&self) -> bool {
        let latest = modified(&self.cert_file).max(modified(&self.key_file));
        if latest <= *self.loaded_at.read().expect("tls lock") {
            return false;
        }
        match load(&self.cert_file, &self.key_file) {
            Ok(acceptor) => {
                *self.current.write().expect("tls lock") = acceptor;
                *self.loaded_at.write().expect("tls lock") = latest;
                tracing::info!(cert = %self.cert_file.display(), "tls certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "tls certificate changed but does not load; keeping the old one");
                false
            }
        }
    }

    /// Polls the files every `every` until `shutdown`.
    pub fn watch(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let provider = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                provider.reload_if_changed();
            }
        });
    }
}

/// `"TLSv1.3 TLS13_AES_256_GCM_SHA384"`: what a `Received:` header records.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_owned(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => format!("{version} {:?}", suite.suite()),
        None => version,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let read_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| read_err(cert_file, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(cert_file, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| read_err(key_file, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // TLS 1.2+ only: 1.0 and 1.1 are deprecated (RFC 8996).
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Returns the self-signed pair in `dir`, generating it on first use.
///
/// Several processes of one node may share a data directory (targets run
/// apart) and start at once: one of them generates, under an exclusive lock
/// file, and the others wait for it. The key is renamed into place before
/// the certificate, so whoever sees both files sees a matching pair.
/// Blocking waits are fine here: this runs once, at start-up.
fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_file = dir.join("self-signed.crt");
    let key_file = dir.join("self-signed.key");
    let ready = || cert_file.exists() && key_file.exists();
    if ready() {
        return Ok((cert_file, key_file));
    }
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let lock = dir.join(".self-signed.lock");
    // A lock older than this was left by a process that died generating.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let result = if ready() {
                    Ok(())
                } else {
                    generate_self_signed(&cert_file, &key_file, hostname)
                };
                let _ = std::fs::remove_file(&lock);
                return result.map(|()| (cert_file, key_file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if ready() {
                    return Ok((cert_file, key_file));
                }
                if std::time::Instant::now() > deadline {
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(write_err(&lock)(e)),
        }
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + use<> {
    let path = path.to_owned();
    move |source| TlsError::Write { path, source }
}

fn generate_self_signed(cert_file: &Path, key_file: &Path, hostname: &str) -> Result<(), TlsError> {
    let names = vec![
        hostname.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    let tmp = |path: &Path| path.with_extension(format!("tmp-{}", std::process::id()));
    let (key_tmp, cert_tmp) = (tmp(key_file), tmp(cert_file));
    write_private(&key_tmp, generated.signing_key.serialize_pem().as_bytes())
        .map_err(write_err(&key_tmp))?;
    std::fs::rename(&key_tmp, key_file).map_err(write_err(key_file))?;
    std::fs::write(&cert_tmp, generated.cert.pem()).map_err(write_err(&cert_tmp))?;
    std::fs::rename(&cert_tmp, cert_file).map_err(write_err(cert_file))?;
    tracing::warn!(
        cert = %cert_file.display(),
        "no tls.cert_file configured: generated a self-signed certificate"
    );
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let provider = TlsProvider::from_config(&config).unwrap();
        let first = std::fs::read(provider.cert_file()).unwrap();
        let again = TlsProvider::from_config(&config).unwrap();
        assert_eq!(first, std::fs::read(again.cert_file()).unwrap());
        assert!(!provider.reload_if_changed());
    }

    /// Processes sharing a data directory start together: one pair, and
    /// every one of them loads it.
    #[test]
    fn concurrent_first_starts_agree_on_one_pair() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let tls = tls.clone();
                std::thread::spawn(move || ensure_self_signed(&tls, "mx.example").unwrap())
            })
            .collect();
        let pairs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let cert = std::fs::read(&pairs[0].0).unwrap();
        for (c, k) in &pairs {
            assert_eq!(std::fs::read(c).unwrap(), cert);
            TlsProvider::from_files(c, k).unwrap();
        }
        assert!(!tls.join(".self-signed.lock").exists());
    }

    #[test]
    fn configured_files_reload_on_change_and_bad_files_keep_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(&dir.path().join("a"), "mx.example").unwrap();
        let provider = TlsProvider::from_files(&cert, &key).unwrap();

        // A broken certificate is refused at start ...
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not pem").unwrap();
        assert!(TlsProvider::from_files(&bad, &key).is_err());

        // ... and on reload the old one stays.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&cert, "garbage").unwrap();
        assert!(!provider.reload_if_changed());

        // A new valid pair is picked up.
        let (cert2, key2) = ensure_self_signed(&dir.path().join("b"), "mx.example").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        assert!(provider.reload_if_changed());
    }
}
