//! Fuzzes the IMAP command parser and the MIME code FETCH and SEARCH run on
//! stored messages. The input is parsed as one complete command (literals
//! inline, as the session hands them over) and line by line, so one input
//! replays a dialog; then the same bytes are taken as a message and its
//! structure, sections, BODYSTRUCTURE, ENVELOPE, BINARY and search text are
//! computed. Mailbox names go through modified UTF-7 (RFC 3501 §5.1.3):
//! whatever decodes re-encodes to the same bytes, and any text round-trips.
//! Nothing may panic.

#![no_main]

// The modules below call into `mailfleet_runtime` for pure helpers; the
// fuzz crate compiles those files itself under that name rather than
// building the whole runtime (databases, NATS, TLS) with sanitizers.
extern crate self as mailfleet_runtime;
#[allow(dead_code)]
#[path = "../../../runtime/src/dates.rs"]
mod dates;
#[allow(dead_code)]
#[path = "../../../runtime/src/imap_mime.rs"]
mod imap_mime;

#[allow(dead_code)]
#[path = "../../../runtime/src/base64.rs"]
mod base64;
#[allow(dead_code)]
#[path = "../../src/imap/mime.rs"]
mod mime;
#[allow(dead_code)]
#[path = "../../src/imap/parser.rs"]
mod parser;
#[allow(dead_code)]
#[path = "../../src/imap/response.rs"]
mod response;
#[allow(dead_code)]
#[path = "../../src/imap/utf7.rs"]
mod utf7;

use libfuzzer_sys::fuzz_target;
use parser::{CommandBody, FetchItem, Section, SectionText};

fuzz_target!(|data: &[u8]| {
    let _ = parser::trailing_literal(data);
    let _ = parser::is_append(data);
    let mut sections = Vec::new();
    for input in std::iter::once(data).chain(data.split(|&b| b == b'\n')) {
        let Ok(command) = parser::parse_command(input) else {
            continue;
        };
        let _ = utf7::decode_names(command.body.clone(), false);
        if let CommandBody::Fetch { items, .. } = command.body {
            for item in items {
                if let FetchItem::Body { section, .. } = item {
                    sections.push(section);
                }
            }
        }
    }
    sections.push(Section::full());
    sections.push(Section {
        part: vec![1, 2],
        text: SectionText::Header,
    });
    let root = mime::parse(data);
    let _ = mime::body_structure(data, &root, true);
    let _ = mime::envelope(&data[..mime::header_length(data)]);
    for section in &sections {
        let _ = mime::section(data, &root, section);
    }
    let _ = mime::binary(data, &root, &[1]);
    let _ = mime::Searchable::new(data);
    let _ = base64::decode_lenient(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(decoded) = utf7::decode(text) {
            assert_eq!(utf7::encode(&decoded), text, "decoding is canonical");
        }
        let encoded = utf7::encode(text);
        assert_eq!(utf7::decode(&encoded).as_deref(), Ok(text), "round trip");
    }
});
