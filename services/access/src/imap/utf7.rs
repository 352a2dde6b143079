//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3). IMAP4rev1 clients send
//! and expect non-ASCII mailbox names in this form (`&AMk-t&AOk-` is
//! "Été"); IMAP4rev2 clients (RFC 9051 §5.1) and rev1 clients after `ENABLE
//! UTF8=ACCEPT` (RFC 6855 §3) use UTF-8. The mailstore keeps UTF-8 names:
//! the session decodes names on the way in ([`decode_names`]) and encodes
//! them on the way out ([`wire_name`]) for sessions that did not enable
//! UTF-8.
//!
//! Decoding is strict: a name is accepted only in its one canonical
//! encoding (printable ASCII never base64-encoded, no adjacent encoded
//! runs, no stray bits, paired surrogates), so two spellings never name
//! one mailbox. Pure functions over strings, fuzzed with the IMAP parser.

use std::borrow::Cow;

use super::parser::CommandBody;

/// RFC 3501 §5.1.3: RFC 2045 base64 with `,` in place of `/`.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Why a name is not modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mailbox name is not valid modified UTF-7 (RFC 3501 section 5.1.3)")
    }
}

/// Printable US-ASCII stands for itself (RFC 3501 §5.1.3), `&` aside.
fn is_direct(c: char) -> bool {
    matches!(c, '\x20'..='\x7e')
}

/// The modified UTF-7 form of a UTF-8 name.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_direct(c) {
            flush(&mut out, &mut run);
            out.push(c);
            if c == '&' {
                out.push('-');
            }
        } else {
            let mut units = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Writes `&<modified base64 of UTF-16BE>-` for a run of non-direct
/// characters, without `=` padding.
fn flush(out: &mut String, run: &mut Vec<u16>) {
    if run.is_empty() {
        return;
    }
    let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out.push('-');
    run.clear();
}

/// The UTF-8 name of a modified UTF-7 one; [`Malformed`] unless `name` is
/// the canonical encoding of what it decodes to.
pub fn decode(name: &str) -> Result<String, Malformed> {
    if !name.contains('&') {
        // The common case: plain ASCII (or 8-bit, refused below).
        return if name.chars().all(is_direct) {
            Ok(name.to_owned())
        } else {
            Err(Malformed)
        };
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(start) = rest.find('&') {
        let (direct, tail) = rest.split_at(start);
        if !direct.chars().all(is_direct) {
            return Err(Malformed);
        }
        out.push_str(direct);
        let tail = &tail[1..];
        let end = tail.find('-').ok_or(Malformed)?;
        let encoded = &tail[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            out.push_str(&decode_run(encoded)?);
        }
        rest = &tail[end + 1..];
    }
    if !rest.chars().all(is_direct) {
        return Err(Malformed);
    }
    out.push_str(rest);
    // Canonical form only: this rejects base64-encoded ASCII, adjacent
    // encoded runs and anything else that would give one mailbox two names.
    if encode(&out) != name {
        return Err(Malformed);
    }
    Ok(out)
}

/// One `&...-` run: modified base64 of UTF-16BE.
fn decode_run(encoded: &str) -> Result<String, Malformed> {
    let mut bytes = Vec::with_capacity(encoded.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for b in encoded.bytes() {
        let value = ALPHABET.iter().position(|&a| a == b).ok_or(Malformed)? as u32;
        acc = (acc << 6 | value) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    // Leftover bits are padding: fewer than 6 of them, all zero.
    if bits >= 6 || acc & ((1 << bits) - 1) != 0 || bytes.len() % 2 != 0 {
        return Err(Malformed);
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    char::decode_utf16(units)
        .collect::<Result<String, _>>()
        .map_err(|_| Malformed)
}

/// A stored (UTF-8) name as this session writes it: unchanged after UTF-8
/// was enabled, modified UTF-7 otherwise.
pub fn wire_name(name: &str, utf8: bool) -> Cow<'_, str> {
    if utf8 || name.chars().all(|c| is_direct(c) && c != '&') {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(encode(name))
    }
}

/// The mailbox names (and LIST references and patterns) of `body` in
/// UTF-8: decoded from modified UTF-7 unless the session enabled UTF-8.
pub fn decode_names(body: CommandBody, utf8: bool) -> Result<CommandBody, Malformed> {
    if utf8 {
        return Ok(body);
    }
    let d = |name: String| decode(&name);
    Ok(match body {
        CommandBody::List {
            reference,
            patterns,
            options,
        } => CommandBody::List {
            reference: d(reference)?,
            patterns: patterns.into_iter().map(d).collect::<Result<_, _>>()?,
            options,
        },
        CommandBody::Lsub { reference, pattern } => CommandBody::Lsub {
            reference: d(reference)?,
            pattern: d(pattern)?,
        },
        CommandBody::Select { mailbox, condstore } => CommandBody::Select {
            mailbox: d(mailbox)?,
            condstore,
        },
        CommandBody::Examine { mailbox, condstore } => CommandBody::Examine {
            mailbox: d(mailbox)?,
            condstore,
        },
        CommandBody::Create { mailbox } => CommandBody::Create {
            mailbox: d(mailbox)?,
        },
        CommandBody::Delete { mailbox } => CommandBody::Delete {
            mailbox: d(mailbox)?,
        },
        CommandBody::Rename { from, to } => CommandBody::Rename {
            from: d(from)?,
            to: d(to)?,
        },
        CommandBody::Subscribe { mailbox } => CommandBody::Subscribe {
            mailbox: d(mailbox)?,
        },
        CommandBody::Unsubscribe { mailbox } => CommandBody::Unsubscribe {
            mailbox: d(mailbox)?,
        },
        CommandBody::Status { mailbox, items } => CommandBody::Status {
            mailbox: d(mailbox)?,
            items,
        },
        CommandBody::Append {
            mailbox,
            flags,
            date_ms,
            message,
        } => CommandBody::Append {
            mailbox: d(mailbox)?,
            flags,
            date_ms,
            message,
        },
        CommandBody::Copy {
            uid,
            set,
            mailbox,
            move_messages,
        } => CommandBody::Copy {
            uid,
            set,
            mailbox: d(mailbox)?,
            move_messages,
        },
        CommandBody::GetQuotaRoot { mailbox } => CommandBody::GetQuotaRoot {
            mailbox: d(mailbox)?,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_3501_examples_and_common_names() {
        // RFC 3501 §5.1.3's example, and what Thunderbird and Outlook send.
        let cases = [
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("Été", "&AMk-t&AOk-"),
            ("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"),
            ("Tom & Jerry", "Tom &- Jerry"),
            ("INBOX", "INBOX"),
            ("", ""),
            ("😀", "&2D3eAA-"),
        ];
        for (utf8, utf7) in cases {
            assert_eq!(encode(utf8), utf7, "{utf8}");
            assert_eq!(decode(utf7).as_deref(), Ok(utf8), "{utf7}");
        }
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "&",          // unterminated
            "&AMk",       // unterminated run
            "&AMk=-",     // padding is not part of modified base64
            "&AEEAQgBD-", // "ABC": printable ASCII must not be encoded
            "&AMk-&AOk-", // adjacent runs: one run is the canonical form
            "&AM-",       // 12 bits: not a whole UTF-16 unit
            "&AMl-",      // non-zero padding bits
            "&2D0-",      // a lone high surrogate
            "&3gA-",      // a lone low surrogate
            "&AM/-",      // `/` is not in the modified alphabet
            "Été",        // 8-bit without ENABLE UTF8=ACCEPT
            "a\u{7f}b",   // DEL is not printable
        ] {
            assert_eq!(decode(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn round_trips_every_kind_of_character() {
        let name = "a&b/ü€𝄞-&-x";
        assert_eq!(decode(&encode(name)).as_deref(), Ok(name));
        assert_eq!(wire_name("Sent", false), "Sent");
        assert_eq!(wire_name("Été", false), "&AMk-t&AOk-");
        assert_eq!(wire_name("Été", true), "Été");
        assert_eq!(wire_name("R&D", false), "R&-D");
    }
}
