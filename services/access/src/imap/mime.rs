//! The MIME structure of a message as IMAP addresses it (RFC 9051 §6.4.5
//! section numbers, §7.5.2 BODYSTRUCTURE and ENVELOPE), computed from the
//! raw bytes on each FETCH. Part boundaries are found here, on the raw
//! bytes, so that every section is an exact byte range of the stored
//! message; header values of ENVELOPE and SEARCH are decoded with
//! `mail-parser`.
//!
//! Nothing here panics on malformed input: a part that does not parse is a
//! `text/plain` part holding its bytes, nesting is bounded.

use std::borrow::Cow;

use mail_parser::{Address, HeaderValue, MessageParser};

use super::parser::{Section, SectionText};
use super::response;

/// Deeper multipart/message nesting is treated as opaque content.
const MAX_DEPTH: usize = 16;

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
    fn is_multipart(&self) -> bool {
        self.media_type == "multipart"
    }

    fn is_message(&self) -> bool {
        self.media_type == "message" && (self.subtype == "rfc822" || self.subtype == "global")
    }

    fn param(&self, name: &str) -> Option<&str> {
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
        "base64" => crate::base64::decode_lenient(body),
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
        response::string(out, &part.subtype.to_ascii_uppercase());
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
    response::string(out, &media_type.to_ascii_uppercase());
    out.push(b' ');
    response::string(out, &subtype.to_ascii_uppercase());
    out.push(b' ');
    write_params(out, &part.params);
    out.push(b' ');
    nstring(out, field("content-id").as_deref());
    out.push(b' ');
    nstring(out, field("content-description").as_deref());
    out.push(b' ');
    let cte = field("content-transfer-encoding").unwrap_or_else(|| "7BIT".into());
    response::string(out, &cte.to_ascii_uppercase());
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
            response::string(out, &kind.to_ascii_uppercase());
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
        response::string(out, &name.to_ascii_uppercase());
        out.push(b' ');
        response::string(out, value);
    }
    out.push(b')');
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => response::string(out, v),
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
                    response::string(&mut out, &ascii_word(name));
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
    response::string(out, mailbox);
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

/// Runs a `mail-parser` call, taking a panic as "does not parse": its
/// `debug_assert!`s fire on some malformed MIME in debug builds (found by
/// the fuzz target), and one stored message must not end a session.
fn guarded<'x>(
    parse: impl FnOnce() -> Option<mail_parser::Message<'x>>,
) -> Option<mail_parser::Message<'x>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .ok()
        .flatten()
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
