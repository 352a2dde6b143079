//! The IMAP view of a message's MIME structure (RFC 9051 §6.4.5 section
//! numbers, §7.5.2 BODYSTRUCTURE, BODY and ENVELOPE), shared by mailstore,
//! which renders ENVELOPE and BODYSTRUCTURE once when a message is stored,
//! and access, which renders them for messages stored before that and
//! addresses sections on the raw bytes. One implementation, so that a
//! stored rendering and a computed one are the same bytes.
//!
//! Part boundaries are found on the raw bytes, so that every section is an
//! exact byte range of the stored message; header values of ENVELOPE are
//! decoded with `mail-parser`. Nothing here panics on malformed input: a
//! part that does not parse is a `text/plain` part holding its bytes,
//! nesting is bounded.

use mail_parser::{Address, HeaderValue, MessageParser};

/// Deeper multipart/message nesting is treated as opaque content.
pub const MAX_DEPTH: usize = 16;

/// One MIME entity: byte ranges into the raw message and its content type.
#[derive(Debug, Clone)]
pub struct Part {
    /// The header, blank line included.
    pub header: (usize, usize),
    pub body: (usize, usize),
    /// Lowercased type and subtype.
    pub media_type: String,
    pub subtype: String,
    /// Content-Type parameters, names lowercased.
    pub params: Vec<(String, String)>,
    /// The children of a multipart.
    pub children: Vec<Part>,
    /// The encapsulated message of a message/rfc822 part.
    pub message: Option<Box<Part>>,
}

impl Part {
    pub fn is_multipart(&self) -> bool {
        self.media_type == "multipart"
    }

    pub fn is_message(&self) -> bool {
        self.media_type == "message" && (self.subtype == "rfc822" || self.subtype == "global")
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the structure of a whole message.
pub fn parse(raw: &[u8]) -> Part {
    parse_entity(raw, 0, raw.len(), false, 0)
}

fn parse_entity(raw: &[u8], start: usize, end: usize, digest: bool, depth: usize) -> Part {
    let header_end = start + header_length(&raw[start..end]);
    let fields = header_fields(&raw[start..header_end]);
    let content_type = fields
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.as_str());
    let (media_type, subtype, params) = match content_type.and_then(parse_content_type) {
        Some(parsed) => parsed,
        // RFC 2046 §5.1.5: in a multipart/digest the default is message/rfc822.
        None if digest => ("message".into(), "rfc822".into(), Vec::new()),
        None => (
            "text".into(),
            "plain".into(),
            vec![("charset".into(), "us-ascii".into())],
        ),
    };
    let mut part = Part {
        header: (start, header_end),
        body: (header_end, end),
        media_type,
        subtype,
        params,
        children: Vec::new(),
        message: None,
    };
    if depth >= MAX_DEPTH {
        return part;
    }
    if part.is_multipart() {
        if let Some(boundary) = part.param("boundary").map(str::to_owned) {
            let digest = part.subtype == "digest";
            part.children = split_multipart(raw, header_end, end, boundary.as_bytes())
                .into_iter()
                .map(|(s, e)| parse_entity(raw, s, e, digest, depth + 1))
                .collect();
        }
    } else if part.is_message() {
        part.message = Some(Box::new(parse_entity(
            raw,
            header_end,
            end,
            false,
            depth + 1,
        )));
    }
    part
}

/// Length of the header of `entity`, blank line included; all of it when
/// there is no blank line. An entity starting with a blank line has an
/// empty header (the blank line is its header's end).
pub fn header_length(entity: &[u8]) -> usize {
    if entity.starts_with(b"\r\n") {
        return 2;
    }
    if entity.starts_with(b"\n") {
        return 1;
    }
    let crlf = find(entity, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(entity, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(entity.len()),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Unfolded `(name, value)` header fields, values trimmed.
pub fn header_fields(header: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    fields
}

/// Lowercased type, subtype and parameters.
type ContentType = (String, String, Vec<(String, String)>);

/// `type/subtype; name=value; name="quoted value"` (RFC 2045 §5.1),
/// lowercased type, subtype and parameter names.
fn parse_content_type(value: &str) -> Option<ContentType> {
    let mut pieces = split_params(value).into_iter();
    let full = pieces.next()?;
    let (media_type, subtype) = full.split_once('/')?;
    let (media_type, subtype) = (media_type.trim(), subtype.trim());
    if media_type.is_empty() || subtype.is_empty() {
        return None;
    }
    let params = pieces
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                .unwrap_or_else(|| value.to_owned());
            Some((name.trim().to_ascii_lowercase(), value))
        })
        .collect();
    Some((
        media_type.to_ascii_lowercase(),
        subtype.to_ascii_lowercase(),
        params,
    ))
}

/// Splits at `;` outside quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                current.push(c);
            }
            '\\' if quoted => {
                escaped = true;
                current.push(c);
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out.into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The byte ranges of the body parts of a multipart body (RFC 2046
/// §5.1.1): between delimiter lines `--boundary`, up to `--boundary--`.
/// The CRLF before a delimiter belongs to the delimiter.
fn split_multipart(raw: &[u8], start: usize, end: usize, boundary: &[u8]) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut open: Option<usize> = None;
    let mut line_start = start;
    while line_start < end {
        let line_end = raw[line_start..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |i| line_start + i + 1);
        let line = &raw[line_start..line_end];
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if let Some(rest) = content
            .strip_prefix(b"--")
            .and_then(|r| r.strip_prefix(boundary))
        {
            let closing = rest.starts_with(b"--");
            if closing || rest.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(part_start) = open.take() {
                    let mut part_end = line_start;
                    if part_end >= part_start + 2 && &raw[part_end - 2..part_end] == b"\r\n" {
                        part_end -= 2;
                    } else if part_end > part_start && raw[part_end - 1] == b'\n' {
                        part_end -= 1;
                    }
                    parts.push((part_start, part_end.max(part_start)));
                }
                if closing {
                    return parts;
                }
                open = Some(line_end);
            }
        }
        line_start = line_end;
    }
    // No closing delimiter: the last part runs to the end.
    if let Some(part_start) = open {
        parts.push((part_start, end));
    }
    parts
}

/// RFC 9051 §7.5.2 `body`: BODYSTRUCTURE with extension data when
/// `extended`, BODY without.
pub fn body_structure(raw: &[u8], part: &Part, extended: bool) -> Vec<u8> {
    let mut out = Vec::new();
    write_body(&mut out, raw, part, extended, 0);
    out
}

fn write_body(out: &mut Vec<u8>, raw: &[u8], part: &Part, extended: bool, depth: usize) {
    out.push(b'(');
    let fields = header_fields(raw.get(part.header.0..part.header.1).unwrap_or_default());
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if part.is_multipart() && !part.children.is_empty() && depth < MAX_DEPTH {
        for child in &part.children {
            write_body(out, raw, child, extended, depth + 1);
        }
        out.push(b' ');
        string(out, &part.subtype.to_ascii_uppercase());
        if extended {
            out.push(b' ');
            write_params(out, &part.params);
            write_extension(out, &field);
        }
        out.push(b')');
        return;
    }
    let (media_type, subtype) = if part.is_multipart() {
        // A multipart without parts is answered as text.
        ("text".to_owned(), "plain".to_owned())
    } else {
        (part.media_type.clone(), part.subtype.clone())
    };
    string(out, &media_type.to_ascii_uppercase());
    out.push(b' ');
    string(out, &subtype.to_ascii_uppercase());
    out.push(b' ');
    write_params(out, &part.params);
    out.push(b' ');
    nstring(out, field("content-id").as_deref());
    out.push(b' ');
    nstring(out, field("content-description").as_deref());
    out.push(b' ');
    let cte = field("content-transfer-encoding").unwrap_or_else(|| "7BIT".into());
    string(out, &cte.to_ascii_uppercase());
    let body = raw.get(part.body.0..part.body.1).unwrap_or_default();
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    if part.is_message()
        && let Some(message) = &part.message
    {
        out.push(b' ');
        out.extend_from_slice(&envelope(
            raw.get(message.header.0..message.header.1)
                .unwrap_or_default(),
        ));
        out.push(b' ');
        write_body(out, raw, message, extended, depth + 1);
        out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes());
    } else if media_type == "text" {
        out.extend_from_slice(format!(" {}", count_lines(body)).as_bytes());
    }
    if extended {
        // body-ext-1part: md5, then disposition, language, location.
        out.extend_from_slice(b" ");
        nstring(out, field("content-md5").as_deref());
        write_extension(out, &field);
    }
    out.push(b')');
}

fn count_lines(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'\n').count()
}

/// ` disposition language location` of the extension data.
fn write_extension(out: &mut Vec<u8>, field: &dyn Fn(&str) -> Option<String>) {
    out.push(b' ');
    match field("content-disposition").and_then(|v| {
        let mut pieces = split_params(&v).into_iter();
        let kind = pieces.next()?;
        let params = pieces
            .filter_map(|p| {
                let (n, v) = p.split_once('=')?;
                let v = v.trim().trim_matches('"').to_owned();
                Some((n.trim().to_ascii_lowercase(), v))
            })
            .collect::<Vec<_>>();
        Some((kind, params))
    }) {
        Some((kind, params)) => {
            out.push(b'(');
            string(out, &kind.to_ascii_uppercase());
            out.push(b' ');
            write_params(out, &params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, field("content-language").as_deref());
    out.push(b' ');
    nstring(out, field("content-location").as_deref());
}

/// `body-fld-param`: `("NAME" "value" ...)` or NIL.
fn write_params(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, &name.to_ascii_uppercase());
        out.push(b' ');
        string(out, value);
    }
    out.push(b')');
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => string(out, v),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// RFC 9051 §7.5.2 ENVELOPE of a message header: date, subject, from,
/// sender, reply-to, to, cc, bcc, in-reply-to, message-id. Sender and
/// reply-to default to from (RFC 3501 §7.4.2). Unstructured fields are
/// sent as they are in the header (unfolded); address names decoded and,
/// when not ASCII, re-encoded as RFC 2047 words so that IMAP4rev1 clients
/// get ASCII.
pub fn envelope(header: &[u8]) -> Vec<u8> {
    let fields = header_fields(header);
    let raw_field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let parsed = guarded(|| MessageParser::default().parse_headers(header));
    let addresses = |name: &str| -> Option<Vec<u8>> {
        let message = parsed.as_ref()?;
        let value = message
            .root_part()
            .headers
            .iter()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| &h.value)?;
        match value {
            HeaderValue::Address(address) => address_list(address),
            _ => None,
        }
    };
    let mut out = b"(".to_vec();
    nstring(&mut out, raw_field("date"));
    out.push(b' ');
    nstring(&mut out, raw_field("subject"));
    let from = addresses("from");
    for list in [
        from.clone(),
        addresses("sender").or_else(|| from.clone()),
        addresses("reply-to").or_else(|| from.clone()),
        addresses("to"),
        addresses("cc"),
        addresses("bcc"),
    ] {
        out.push(b' ');
        match list {
            Some(list) => out.extend_from_slice(&list),
            None => out.extend_from_slice(b"NIL"),
        }
    }
    out.push(b' ');
    nstring(&mut out, raw_field("in-reply-to"));
    out.push(b' ');
    nstring(&mut out, raw_field("message-id"));
    out.push(b')');
    out
}

/// `"(" 1*address ")"`, groups as RFC 9051 §7.5.2 describes them.
fn address_list(address: &Address<'_>) -> Option<Vec<u8>> {
    let mut out = b"(".to_vec();
    let mut any = false;
    match address {
        Address::List(list) => {
            for addr in list {
                any |= write_address(&mut out, addr.name.as_deref(), addr.address.as_deref());
            }
        }
        Address::Group(groups) => {
            for group in groups {
                if let Some(name) = &group.name {
                    out.extend_from_slice(b"(NIL NIL ");
                    string(&mut out, &ascii_word(name));
                    out.extend_from_slice(b" NIL)");
                    any = true;
                }
                for addr in &group.addresses {
                    any |= write_address(&mut out, addr.name.as_deref(), addr.address.as_deref());
                }
                if group.name.is_some() {
                    out.extend_from_slice(b"(NIL NIL NIL NIL)");
                }
            }
        }
    }
    out.push(b')');
    any.then_some(out)
}

/// `(name adl mailbox host)`; false when there is no address to write.
fn write_address(out: &mut Vec<u8>, name: Option<&str>, address: Option<&str>) -> bool {
    let Some(address) = address else {
        return false;
    };
    let (mailbox, host) = match address.rsplit_once('@') {
        Some((mailbox, host)) => (mailbox, Some(host)),
        None => (address, None),
    };
    out.push(b'(');
    nstring(out, name.map(ascii_word).as_deref());
    out.extend_from_slice(b" NIL ");
    string(out, mailbox);
    out.push(b' ');
    nstring(out, host);
    out.push(b')');
    true
}

/// A decoded phrase back as ASCII: as it is when it is, else one RFC 2047
/// `=?UTF-8?B?...?=` word.
fn ascii_word(text: &str) -> String {
    if text.is_ascii() {
        text.to_owned()
    } else {
        format!("=?UTF-8?B?{}?=", crate::base64::encode(text.as_bytes()))
    }
}

/// Runs a `mail-parser` call, taking a panic as "does not parse": its
/// `debug_assert!`s fire on some malformed MIME in debug builds (found by
/// the fuzz target), and one stored message must not end a session.
pub fn guarded<'x>(
    parse: impl FnOnce() -> Option<mail_parser::Message<'x>>,
) -> Option<mail_parser::Message<'x>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .ok()
        .flatten()
}

/// ENVELOPE, BODYSTRUCTURE and BODY of a message, rendered as FETCH sends
/// them (after the item name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub envelope: String,
    pub body_structure: String,
    pub body: String,
}

impl Rendered {
    /// Parses `raw` once and renders all three; `None` if a rendering is
    /// not UTF-8 (it never is today: every value passes through `String`).
    pub fn of(raw: &[u8]) -> Option<Rendered> {
        let structure = parse(raw);
        let header = raw
            .get(structure.header.0..structure.header.1)
            .unwrap_or_default();
        Some(Rendered {
            envelope: String::from_utf8(envelope(header)).ok()?,
            body_structure: String::from_utf8(body_structure(raw, &structure, true)).ok()?,
            body: String::from_utf8(body_structure(raw, &structure, false)).ok()?,
        })
    }
}

/// An IMAP `string`: quoted, or a literal when it holds CR, LF or NUL.
pub fn string(out: &mut Vec<u8>, value: &str) {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        out.extend_from_slice(format!("{{{}}}\r\n", value.len()).as_bytes());
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for b in value.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: a@b.c\r\nSubject: =?UTF-8?Q?caf=C3=A9?=\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nFrom: =?UTF-8?Q?J=C3=B6rg?= <j@x.y>\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n";

    #[test]
    fn rendered_is_what_fetch_sends() {
        let rendered = Rendered::of(MULTI).unwrap();
        let structure = parse(MULTI);
        assert_eq!(
            rendered.body_structure.as_bytes(),
            body_structure(MULTI, &structure, true)
        );
        assert_eq!(
            rendered.body.as_bytes(),
            body_structure(MULTI, &structure, false)
        );
        assert!(
            rendered
                .body
                .starts_with("((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\")")
        );
        assert!(rendered.body.ends_with(" \"MIXED\")"), "{}", rendered.body);
        // The inner message's sender, non-ASCII, comes back as an RFC 2047 word.
        assert!(
            rendered
                .body
                .contains("((\"=?UTF-8?B?SsO2cmc=?=\" NIL \"j\" \"x.y\"))"),
            "{}",
            rendered.body
        );
        assert!(
            rendered
                .envelope
                .starts_with("(NIL \"=?UTF-8?Q?caf=C3=A9?=\" ((NIL NIL \"a\" \"b.c\"))")
        );
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, "a \"b\" \\");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\\"");
        out.clear();
        string(&mut out, "x\r\ny");
        assert_eq!(out, b"{4}\r\nx\r\ny");
    }

    #[test]
    fn garbage_renders_without_panicking() {
        for raw in [
            &b""[..],
            b"\r\n",
            b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
            &[0xff; 64],
        ] {
            let rendered = Rendered::of(raw).unwrap();
            assert!(rendered.body_structure.starts_with('('));
        }
    }
}
