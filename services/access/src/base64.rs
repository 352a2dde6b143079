//! RFC 4648 base64, for SASL (RFC 4422 via IMAP AUTHENTICATE and POP3
//! AUTH), RFC 2047 words and BINARY fetches.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Encoding lives with the RFC 2047 words that need it; the tests here check
// that the two agree.
#[cfg(test)]
use mailfleet_runtime::imap_mime::base64 as encode;

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|v| v as u32)
}

/// Strict decoding: only the alphabet and final padding.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = text.iter().rev().take_while(|&&c| c == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let data = &text[..text.len() - padding];
    for (i, &c) in data.iter().enumerate() {
        acc = acc << 6 | value(c)?;
        if i % 4 == 3 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
        }
    }
    match data.len() % 4 {
        0 => {}
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => return None,
    }
    Some(out)
}

/// Decoding that skips whitespace and line breaks (MIME bodies).
pub fn decode_lenient(text: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    decode(&clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\0alice\0pw"] {
            assert_eq!(decode(encode(data).as_bytes()).unwrap(), data);
        }
        assert_eq!(encode(b"hello"), "aGVsbG8=");
        assert!(decode(b"a").is_none());
        assert!(decode(b"a===").is_none());
        assert!(decode(b"a!bc").is_none());
        assert_eq!(decode_lenient(b"aGVs\r\nbG8=\r\n").unwrap(), b"hello");
    }
}
