//! Opportunistic STARTTLS for outbound SMTP (RFC 3207 as MTAs use it).
//!
//! Without MTA-STS or DANE a sending MTA cannot know which certificate a
//! receiving MX should present, and refusing to send over an unverified
//! channel would send the mail in plaintext instead. So, like Postfix's
//! `may` level, any certificate is accepted, but the chain is still checked
//! against the roots and the outcome recorded ([`TlsOutcome`]) for logs and
//! queue state. The handshake signatures are always verified: the peer must
//! hold the key of the certificate it shows.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What we learned about the peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsOutcome {
    /// The chain verified against our roots for the MX host name.
    Verified,
    /// Accepted anyway (opportunistic); why it did not verify.
    Unverified(String),
}

/// The client side TLS settings shared by every outbound connection.
#[derive(Clone)]
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    /// `None` when there are no roots at all: nothing can verify.
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl TlsClient {
    /// Verifies against `roots` (the system's in production, a test CA in
    /// tests).
    pub fn new(roots: RootCertStore) -> TlsClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .ok();
        TlsClient { provider, webpki }
    }

    /// The operating system's trust store; certificates it cannot parse
    /// are skipped (an MTA must not fail to start over one bad root).
    pub fn with_system_roots() -> TlsClient {
        let mut roots = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::debug!(%error, "cannot load a system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
        TlsClient::new(roots)
    }

    /// A connector for one connection and the slot its verifier writes the
    /// outcome into.
    pub fn connector(&self) -> (tokio_rustls::TlsConnector, Arc<Mutex<Option<TlsOutcome>>>) {
        let outcome = Arc::new(Mutex::new(None));
        let verifier = Arc::new(RecordingVerifier {
            provider: self.provider.clone(),
            webpki: self.webpki.clone(),
            outcome: outcome.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        let config = match config {
            Ok(config) => config,
            // The default provider supports the default versions; this is
            // unreachable in practice and must not panic regardless.
            Err(error) => {
                tracing::error!(%error, "tls client configuration failed");
                rustls::ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
                        provider: self.provider.clone(),
                        webpki: None,
                        outcome: outcome.clone(),
                    }))
                    .with_no_client_auth()
            }
        };
        (tokio_rustls::TlsConnector::from(Arc::new(config)), outcome)
    }
}

#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    outcome: Arc<Mutex<Option<TlsOutcome>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = match &self.webpki {
            None => TlsOutcome::Unverified("no trusted roots".into()),
            Some(webpki) => match webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => TlsOutcome::Verified,
                Err(error) => TlsOutcome::Unverified(error.to_string()),
            },
        };
        if let Ok(mut slot) = self.outcome.lock() {
            *slot = Some(outcome);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
