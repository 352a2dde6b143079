//! The bytes of a relayed message on the wire, as pure functions.
//!
//! A message we relay must never be able to end the DATA phase early or
//! smuggle a second transaction (the 2023 "SMTP smuggling" class of bugs
//! exploits servers that take a bare LF or bare CR as a line end). So
//! before anything else, every bare CR and bare LF becomes CRLF
//! ([`canonical`]); the DKIM signature is computed over that form, and
//! [`dot_stuff`] then doubles every leading dot (RFC 5321 §4.5.2) and adds
//! the terminating `.` line.

/// Every line ending (CRLF, bare LF, bare CR) as CRLF, and a final CRLF
/// when the message does not end with one.
pub fn canonical(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                // CRLF counts once.
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            byte => out.push(byte),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The DATA payload of a [`canonical`] message: leading dots doubled
/// (RFC 5321 §4.5.2) and `.` CRLF appended, so no line of the message can
/// end it. Input that is not canonical is made so first.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let canonical = canonical(message);
    let mut out = Vec::with_capacity(canonical.len() + canonical.len() / 64 + 8);
    let mut at_line_start = true;
    for &byte in &canonical {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Whether any byte is outside 7-bit ASCII: the body then needs
/// `BODY=8BITMIME` (RFC 6152) or it may be mangled or refused.
pub fn is_eight_bit(message: &[u8]) -> bool {
    !message.is_ascii()
}

/// Whether an address needs SMTPUTF8 (RFC 6531): non-ASCII in the envelope.
pub fn needs_smtputf8(mail_from: &str, recipients: &[String]) -> bool {
    !mail_from.is_ascii() || recipients.iter().any(|r| !r.is_ascii())
}

/// The header section of a message (everything before the first empty
/// line), for DSNs that return headers only.
pub fn headers(message: &[u8]) -> &[u8] {
    let canonical_end = find(message, b"\r\n\r\n").map(|i| i + 2);
    let lf_end = find(message, b"\n\n").map(|i| i + 1);
    let end = match (canonical_end, lf_end) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => message.len(),
    };
    &message[..end]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_line_endings() {
        assert_eq!(canonical(b"a\r\nb\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(canonical(b"a\r\n"), b"a\r\n");
        assert_eq!(canonical(b"a\n\r\n"), b"a\r\n\r\n");
        assert_eq!(canonical(b""), b"");
    }

    #[test]
    fn a_dot_line_never_ends_the_message() {
        assert_eq!(
            dot_stuff(b"Subject: x\r\n\r\n.\r\n..a\r\nb.\r\n"),
            b"Subject: x\r\n\r\n..\r\n...a\r\nb.\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".starts"), b"..starts\r\n.\r\n");
        // Smuggling attempts: a dot after a bare LF or a bare CR.
        assert_eq!(
            dot_stuff(b"a\n.\nMAIL FROM:<x>\n"),
            b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"a\r.\r\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    /// Unstuffing what we send gives the canonical message back, and the
    /// terminator appears exactly once, at the end.
    #[test]
    fn stuffing_round_trips() {
        let samples: [&[u8]; 5] = [
            b"x\r\n.\r\n.\r\n",
            b"\r\n.\r\n",
            b"..\n.\r.",
            b"\r\r\n\n.",
            b"plain",
        ];
        for sample in samples {
            let wire = dot_stuff(sample);
            let end = find(&wire, b"\r\n.\r\n")
                .map(|i| i + 5)
                .or_else(|| wire.starts_with(b".\r\n").then_some(3));
            assert_eq!(end, Some(wire.len()), "{sample:?} -> {wire:?}");
            let body = &wire[..wire.len() - 3];
            let mut unstuffed = Vec::new();
            for line in body.split_inclusive(|b| *b == b'\n') {
                unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            assert_eq!(unstuffed, canonical(sample));
        }
    }

    #[test]
    fn header_section() {
        assert_eq!(headers(b"A: 1\r\nB: 2\r\n\r\nbody"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(headers(b"A: 1\n\nbody"), b"A: 1\n");
        assert_eq!(headers(b"A: 1\r\n"), b"A: 1\r\n");
    }

    #[test]
    fn eight_bit_and_utf8() {
        assert!(!is_eight_bit(b"ascii"));
        assert!(is_eight_bit("caf\u{e9}".as_bytes()));
        assert!(needs_smtputf8("", &["j\u{f6}rg@example.de".into()]));
        assert!(!needs_smtputf8("a@b", &["c@d".into()]));
    }
}
