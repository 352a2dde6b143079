//! The MIME structure of a message as IMAP addresses it (RFC 9051 §6.4.5
//! section numbers): sections and BINARY on the raw bytes, and what SEARCH
//! matches. The structure itself and the ENVELOPE, BODYSTRUCTURE and BODY
//! renderings live in `mailfleet_runtime::imap_mime`, shared with
//! mailstore, which stores them at delivery; FETCH computes them here only
//! for messages stored before that.
//!
//! Nothing here panics on malformed input: a part that does not parse is a
//! `text/plain` part holding its bytes, nesting is bounded.

use std::borrow::Cow;

use mail_parser::{Address, HeaderValue, MessageParser};
pub use mailfleet_runtime::imap_mime::{
    Part, body_structure, envelope, guarded, header_fields, header_length, nstring, parse,
};

use super::parser::{Section, SectionText};

/// The part a section path names (RFC 9051 §6.4.5): in a multipart, `n` is
/// its n-th child; a non-multipart entity's only part is `1`; after a
/// message/rfc822 part, numbers continue in the encapsulated message.
pub fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let mut current = root;
    for (i, &n) in path.iter().enumerate() {
        let container = if i > 0 && current.is_message() {
            current.message.as_deref()?
        } else {
            current
        };
        current = if container.is_multipart() {
            container
                .children
                .get(usize::try_from(n).ok()?.checked_sub(1)?)?
        } else if n == 1 {
            container
        } else {
            return None;
        };
    }
    Some(current)
}

/// The bytes of a `BODY[section]`; `None` when the section does not exist
/// (answered as an empty string, like other servers do).
pub fn section<'a>(raw: &'a [u8], root: &Part, section: &Section) -> Option<Cow<'a, [u8]>> {
    let part = resolve(root, &section.part)?;
    let numbered = !section.part.is_empty();
    // HEADER / TEXT / HEADER.FIELDS of a numbered part address the
    // message/rfc822 it encapsulates.
    let message = if numbered {
        part.message.as_deref()
    } else {
        Some(part)
    };
    let slice = |(s, e): (usize, usize)| raw.get(s..e).map(Cow::Borrowed);
    match &section.text {
        SectionText::Full if numbered => slice(part.body),
        SectionText::Full => Some(Cow::Borrowed(raw)),
        SectionText::Mime => slice(part.header),
        SectionText::Header => slice(message?.header),
        SectionText::Text => slice(message?.body),
        SectionText::HeaderFields { not, fields } => {
            let header = raw.get(message?.header.0..message?.header.1)?;
            Some(Cow::Owned(header_subset(header, fields, *not)))
        }
    }
}

/// RFC 9051 §6.4.5 HEADER.FIELDS (.NOT): the matching fields as they are,
/// folding included, and the blank line.
fn header_subset(header: &[u8], fields: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !(line[0] == b' ' || line[0] == b'\t') {
            let name = line.iter().position(|&b| b == b':').map(|i| {
                String::from_utf8_lossy(&line[..i])
                    .trim()
                    .to_ascii_lowercase()
            });
            keep = match name {
                Some(name) => fields.contains(&name) != not,
                None => false,
            };
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The decoded content of a part for `BINARY[...]` (RFC 3516): base64 and
/// quoted-printable undone; `None` for an unknown encoding or a bad part.
pub fn binary(raw: &[u8], root: &Part, path: &[u32]) -> Option<Vec<u8>> {
    if path.is_empty() {
        return Some(raw.to_vec());
    }
    let part = resolve(root, path)?;
    if part.is_multipart() {
        return None;
    }
    let body = raw.get(part.body.0..part.body.1)?;
    match encoding(raw, part).as_str() {
        "base64" => mailfleet_runtime::base64::decode_lenient(body),
        "quoted-printable" => Some(decode_quoted_printable(body)),
        "7bit" | "8bit" | "binary" | "" => Some(body.to_vec()),
        _ => None,
    }
}

fn encoding(raw: &[u8], part: &Part) -> String {
    header_fields(raw.get(part.header.0..part.header.1).unwrap_or_default())
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-transfer-encoding"))
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default()
}

/// RFC 2045 §6.7
fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        // Soft line break.
        if body.get(i + 1..i + 3) == Some(b"\r\n") {
            i += 3;
            continue;
        }
        if body.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        let hex = body
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(value) => {
                out.push(value);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// What SEARCH matches header and body keys against: decoded header values
/// and decoded text of the body parts (RFC 9051 §6.4.4: substring,
/// case-insensitive).
pub struct Searchable {
    header: Vec<(String, String)>,
    body: String,
    pub sent_date_days: Option<i64>,
}

impl Searchable {
    pub fn new(raw: &[u8]) -> Searchable {
        let Some(message) = guarded(|| MessageParser::default().parse(raw)) else {
            return Searchable {
                header: header_fields(&raw[..header_length(raw)]),
                body: String::new(),
                sent_date_days: None,
            };
        };
        let header = message
            .root_part()
            .headers
            .iter()
            .map(|h| (h.name.as_str().to_ascii_lowercase(), header_text(&h.value)))
            .collect();
        let mut body = String::new();
        for part in &message.parts {
            match &part.body {
                mail_parser::PartType::Text(text) | mail_parser::PartType::Html(text) => {
                    body.push_str(&text.to_lowercase());
                    body.push('\n');
                }
                _ => {}
            }
        }
        let sent_date_days = message.date().map(|d| d.to_timestamp().div_euclid(86_400));
        Searchable {
            header,
            body,
            sent_date_days,
        }
    }

    /// From the mailstore's search header (`name: value` lines, the date as
    /// `date: <epoch seconds>`); no body text.
    pub fn from_search_header(text: &str) -> Searchable {
        let mut header = Vec::new();
        let mut sent_date_days = None;
        for line in text.lines() {
            let Some((name, value)) = line.split_once(": ") else {
                continue;
            };
            if name == "date" {
                sent_date_days = value.parse::<i64>().ok().map(|s| s.div_euclid(86_400));
            } else {
                header.push((name.to_owned(), value.to_owned()));
            }
        }
        Searchable {
            header,
            body: String::new(),
            sent_date_days,
        }
    }

    /// `HEADER field string`, and FROM/TO/CC/BCC/SUBJECT. An empty string
    /// matches every message that has the field.
    pub fn header_contains(&self, field: &str, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.header.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case(field) && value.to_lowercase().contains(&needle)
        })
    }

    pub fn body_contains(&self, needle: &str) -> bool {
        self.body.contains(&needle.to_lowercase())
    }

    pub fn text_contains(&self, needle: &str) -> bool {
        let needle_lower = needle.to_lowercase();
        self.body_contains(needle)
            || self
                .header
                .iter()
                .any(|(_, value)| value.to_lowercase().contains(&needle_lower))
    }
}

fn header_text(value: &HeaderValue<'_>) -> String {
    match value {
        HeaderValue::Text(text) => text.to_string(),
        HeaderValue::TextList(list) => list.join(" "),
        HeaderValue::Address(Address::List(list)) => list
            .iter()
            .map(|a| {
                format!(
                    "{} <{}>",
                    a.name.as_deref().unwrap_or(""),
                    a.address.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        HeaderValue::Address(Address::Group(groups)) => groups
            .iter()
            .flat_map(|g| g.addresses.iter())
            .map(|a| {
                format!(
                    "{} <{}>",
                    a.name.as_deref().unwrap_or(""),
                    a.address.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        HeaderValue::DateTime(date) => date.to_rfc822(),
        HeaderValue::ContentType(ct) => format!(
            "{}/{}",
            ct.c_type,
            ct.c_subtype.as_deref().unwrap_or_default()
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE: &[u8] = b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n\r\nHello\r\nthere\r\n";

    const MULTI: &[u8] = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\r\naGVsbG8=\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\nepilogue\r\n";

    fn sec(part: &[u32], text: SectionText) -> Section {
        Section {
            part: part.to_vec(),
            text,
        }
    }

    #[test]
    fn simple_message_sections() {
        let root = parse(SIMPLE);
        assert_eq!(root.media_type, "text");
        let body = section(SIMPLE, &root, &sec(&[1], SectionText::Full)).unwrap();
        assert_eq!(&*body, b"Hello\r\nthere\r\n");
        let header = section(SIMPLE, &root, &sec(&[], SectionText::Header)).unwrap();
        assert!(header.ends_with(b"<1@x>\r\n\r\n"));
        let fields = section(
            SIMPLE,
            &root,
            &sec(
                &[],
                SectionText::HeaderFields {
                    not: false,
                    fields: vec!["subject".into(), "to".into()],
                },
            ),
        )
        .unwrap();
        assert_eq!(&*fields, b"To: alice@example.com\r\nSubject: hi\r\n\r\n");
        assert!(section(SIMPLE, &root, &sec(&[2], SectionText::Full)).is_none());
    }

    #[test]
    fn multipart_sections_and_structure() {
        let root = parse(MULTI);
        assert_eq!(root.children.len(), 3);
        let first = section(MULTI, &root, &sec(&[1], SectionText::Full)).unwrap();
        assert_eq!(&*first, b"first");
        let mime = section(MULTI, &root, &sec(&[1], SectionText::Mime)).unwrap();
        assert_eq!(&*mime, b"Content-Type: text/plain; charset=utf-8\r\n\r\n");
        let inner = section(MULTI, &root, &sec(&[3], SectionText::Header)).unwrap();
        assert_eq!(&*inner, b"Subject: inner\r\n\r\n");
        let inner_body = section(MULTI, &root, &sec(&[3, 1], SectionText::Full)).unwrap();
        assert_eq!(&*inner_body, b"inner body");
        assert_eq!(binary(MULTI, &root, &[2]).unwrap(), b"hello");

        let structure = String::from_utf8(body_structure(MULTI, &root, true)).unwrap();
        assert!(
            structure.starts_with(
                "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)"
            ),
            "{structure}"
        );
        assert!(
            structure.contains("(\"ATTACHMENT\" (\"FILENAME\" \"a.bin\"))"),
            "{structure}"
        );
        assert!(structure.contains("\"MESSAGE\" \"RFC822\""), "{structure}");
        assert!(
            structure.ends_with(" \"MIXED\" (\"BOUNDARY\" \"XX\") NIL NIL NIL)"),
            "{structure}"
        );
        let simple = String::from_utf8(body_structure(MULTI, &root, false)).unwrap();
        assert!(simple.ends_with(" \"MIXED\")"), "{simple}");
    }

    #[test]
    fn envelope_fields() {
        let header = &SIMPLE[..header_length(SIMPLE)];
        let env = String::from_utf8(envelope(header)).unwrap();
        assert_eq!(
            env,
            "(\"Mon, 1 Jan 2024 10:00:00 +0000\" \"hi\" ((\"Bob\" NIL \"bob\" \"example.org\")) \
             ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) \
             ((NIL NIL \"alice\" \"example.com\")) NIL NIL NIL \"<1@x>\")"
        );
        assert_eq!(
            String::from_utf8(envelope(b"")).unwrap(),
            "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn search_text() {
        let s = Searchable::new(SIMPLE);
        assert!(s.header_contains("from", "BOB@example"));
        assert!(s.header_contains("subject", "HI"));
        assert!(!s.header_contains("cc", ""));
        assert!(s.body_contains("THERE"));
        assert!(s.text_contains("alice"));
    }

    /// Found by the fuzz target: mail-parser 0.11.9 hits a `debug_assert!`
    /// on this one; the guard turns it into "not parsed".
    #[test]
    fn mail_parser_debug_assertion_is_contained() {
        let input = include_bytes!("../../fuzz/seeds/imap_command/mail_parser_debug_assert");
        let root = parse(input);
        let _ = body_structure(input, &root, true);
        let _ = Searchable::new(input);
        let _ = envelope(&input[..header_length(input)]);
    }

    #[test]
    fn search_from_the_stored_header() {
        let s = Searchable::from_search_header(
            "from: René <rene@example.org>\nsubject: Hello World\ndate: 1704189600\n",
        );
        assert!(s.header_contains("from", "rené"));
        assert!(s.header_contains("subject", "hello w"));
        assert!(!s.header_contains("to", ""));
        assert_eq!(s.sent_date_days, Some(19724));
        assert!(!s.body_contains("hello"));
    }

    #[test]
    fn garbage_never_panics() {
        for input in [
            &b""[..],
            b"\r\n",
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
            b"Content-Type: multipart/mixed; boundary=\"\r\n\r\n--\r\n--\r\n",
            b"Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\n",
            b"Content-Type: /\r\n\r\nx",
        ] {
            let root = parse(input);
            let _ = body_structure(input, &root, true);
            let _ = section(input, &root, &sec(&[1, 1, 1], SectionText::Header));
            let _ = binary(input, &root, &[1]);
            let _ = Searchable::new(input);
        }
    }
}
