//! RFC 4648 base64 for every protocol that needs it: SASL (SMTP AUTH, IMAP
//! AUTHENTICATE, POP3 AUTH), RFC 2047 encoded words, DKIM public keys and
//! MIME bodies. One place, over the `base64` crate.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};

/// MIME bodies in the wild lack padding or leave stray bits in the last
/// character; a mail client still shows them, so we decode them too.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Strict decoding (SASL): the standard alphabet, canonical padding, no
/// whitespace; `None` on anything else.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decoding of a MIME body: line breaks and other whitespace skipped,
/// padding optional.
pub fn decode_lenient(text: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    LENIENT.decode(clean).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4648_vectors_round_trip() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded.as_bytes()).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn strict_decoding_refuses_what_sasl_must_refuse() {
        for bad in ["Zm9", "Z===", "Zg==Zm9v", "Zm9!", "a", "Zm9v\r\n", "Zg"] {
            assert!(decode(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn lenient_decoding_reads_mime_bodies() {
        assert_eq!(decode_lenient(b"aGVs\r\nbG8=\r\n").unwrap(), b"hello");
        assert_eq!(decode_lenient(b"aGVsbG8").unwrap(), b"hello");
        assert!(decode_lenient(b"a!bc").is_none());
    }
}
