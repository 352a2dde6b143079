//! DKIM signing (RFC 6376; Ed25519 by RFC 8463) of mail leaving for other
//! domains, with the key the directory holds for the domain of the
//! message's `From:` (the domain DMARC aligns with). Mail from a domain
//! without a key goes out unsigned. Signing hashes the whole body, so it
//! runs on the blocking pool.
//!
//! Key pairs are generated here too ([`generate`], RSA 2048 or Ed25519,
//! through rcgen on aws-lc-rs) with the TXT record to publish ([`txt_record`]).

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailfleet_proto::mailstore::DkimKey;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The headers covered by the signature, when present (RFC 6376 §5.4.1).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("invalid DKIM private key for {domain}: {message}")]
    Key { domain: String, message: String },
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

/// A new key pair for `domain` and `selector`: `"rsa"` (RSA-SHA256, 2048
/// bits) or `"ed25519"` (RFC 8463).
pub fn generate(domain: &str, selector: &str, algorithm: &str) -> Result<DkimKey, DkimError> {
    use rcgen::PublicKeyData;
    let failed = |e: rcgen::Error| DkimError::Key {
        domain: domain.to_owned(),
        message: e.to_string(),
    };
    let (pair, name, public) = match algorithm {
        "rsa" | "rsa-sha256" => {
            let pair =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .map_err(failed)?;
            // RFC 6376 §3.6.1: p= holds the SubjectPublicKeyInfo (DER).
            let public = pair.subject_public_key_info();
            (pair, "rsa-sha256", public)
        }
        "ed25519" | "ed25519-sha256" => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(failed)?;
            // RFC 8463 §4.2: p= holds the raw 32-byte public key.
            let public = pair.public_key_raw().to_vec();
            (pair, "ed25519-sha256", public)
        }
        other => {
            return Err(DkimError::Key {
                domain: domain.to_owned(),
                message: format!("unknown algorithm {other:?}: rsa or ed25519"),
            });
        }
    };
    Ok(DkimKey {
        domain: domain.to_ascii_lowercase(),
        selector: selector.to_ascii_lowercase(),
        algorithm: name.into(),
        private_key_pem: pair.serialize_pem(),
        public_key: mailfleet_runtime::base64::encode(&public),
        created_at_ms: 0,
    })
}

/// The DNS record to publish for `key`: name and TXT value.
pub fn txt_record(key: &DkimKey) -> (String, String) {
    let k = if key.algorithm.starts_with("ed25519") {
        "ed25519"
    } else {
        "rsa"
    };
    (
        format!("{}._domainkey.{}", key.selector, key.domain),
        format!("v=DKIM1; k={k}; p={}", key.public_key),
    )
}

/// The domain of the first address in the `From:` header, lower case.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let headers = crate::wire::headers(message);
    let text = String::from_utf8_lossy(headers);
    let mut value: Option<String> = None;
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if let Some(v) = value.as_mut() {
            // RFC 5322 §2.2.3: a folded line continues the field.
            if line.starts_with([' ', '\t']) {
                v.push_str(line);
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("from")
        {
            value = Some(rest.to_owned());
        }
    }
    let value = value?;
    // The angle-bracketed address if there is one, else the bare one.
    let address = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.split([',', ' ', '\t']).find(|w| w.contains('@'))?,
    };
    let domain = address.rsplit_once('@')?.1.trim().trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || !b.is_ascii());
    valid.then(|| domain.to_ascii_lowercase())
}

/// The `DKIM-Signature:` header (CRLF-terminated) for a canonical message.
pub fn sign(key: &DkimKey, message: &[u8]) -> Result<String, DkimError> {
    let bad_key = |message: String| DkimError::Key {
        domain: key.domain.clone(),
        message,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(key.private_key_pem.as_bytes())
        .map_err(|e| bad_key(e.to_string()))?;
    let signature = match key.algorithm.as_str() {
        "ed25519-sha256" => {
            let pk = Ed25519Key::from_pkcs8_der(der.secret_pkcs8_der())
                .map_err(|e| bad_key(e.to_string()))?;
            DkimSigner::from_key(pk)
                .domain(&key.domain)
                .selector(&key.selector)
                .headers(SIGNED_HEADERS)
                .sign(message)
        }
        "rsa-sha256" => {
            let pk = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der))
                .map_err(|e| bad_key(e.to_string()))?;
            DkimSigner::from_key(pk)
                .domain(&key.domain)
                .selector(&key.selector)
                .headers(SIGNED_HEADERS)
                .sign(message)
        }
        other => return Err(bad_key(format!("unknown algorithm {other:?}"))),
    }
    .map_err(|e| DkimError::Sign(e.to_string()))?;
    let mut header = signature.to_header();
    if !header.ends_with("\r\n") {
        header.push_str("\r\n");
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_header_domain() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (
                b"From: Alice <alice@Example.COM>\r\n\r\nbody",
                Some("example.com"),
            ),
            (b"Subject: x\r\nfrom: bob@b.test\r\n\r\n", Some("b.test")),
            (
                b"From:\r\n \"A, B\" <a@folded.test>\r\n\r\n",
                Some("folded.test"),
            ),
            (b"Subject: no from\r\n\r\nFrom: body@not.test\r\n", None),
            (b"From: nobody\r\n\r\n", None),
            (b"From: x@bad;domain\r\n\r\n", None),
        ];
        for (message, expected) in cases {
            assert_eq!(
                from_domain(message).as_deref(),
                expected,
                "{}",
                String::from_utf8_lossy(message)
            );
        }
    }

    #[test]
    fn generated_keys_sign() {
        for algorithm in ["ed25519", "rsa"] {
            let key = generate("Example.test", "s1", algorithm).unwrap();
            let (name, txt) = txt_record(&key);
            assert_eq!(name, "s1._domainkey.example.test");
            assert!(txt.starts_with("v=DKIM1; k="), "{txt}");
            let header = sign(&key, b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n").unwrap();
            assert!(header.starts_with("DKIM-Signature: v=1; a="), "{header}");
            assert!(header.contains("d=example.test"), "{header}");
            assert!(header.ends_with("\r\n"));
        }
        assert!(generate("example.test", "s1", "dsa").is_err());
    }

    #[test]
    fn bad_keys_are_errors() {
        let key = DkimKey {
            domain: "example.test".into(),
            selector: "s1".into(),
            algorithm: "rsa-sha256".into(),
            private_key_pem: "not a key".into(),
            ..DkimKey::default()
        };
        assert!(matches!(
            sign(&key, b"From: a@example.test\r\n\r\nx\r\n"),
            Err(DkimError::Key { .. })
        ));
    }
}
