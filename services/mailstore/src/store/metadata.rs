//! Metadata parsed once when a message is stored, so that IMAP SEARCH on
//! header keys does not read and parse every blob: the decoded From, To,
//! Cc, Bcc and Subject and the Date, as `name: value` lines.

use mail_parser::{Address, HeaderValue, MessageParser};

/// Longest value kept per field; longer ones are cut at a char boundary.
const MAX_VALUE: usize = 1024;

/// The fields kept, lowercased.
pub const FIELDS: [&str; 5] = ["from", "to", "cc", "bcc", "subject"];

/// `from: Name <a@b>\nsubject: ...\ndate: <epoch seconds>\n` for a message;
/// fields it lacks are left out. Only the header is parsed.
pub fn search_header(message: &[u8]) -> String {
    let parsed = std::panic::catch_unwind(|| MessageParser::default().parse_headers(message));
    let Ok(Some(parsed)) = parsed else {
        return String::new();
    };
    let mut out = String::new();
    for header in &parsed.root_part().headers {
        let name = header.name.as_str().to_ascii_lowercase();
        if !FIELDS.contains(&name.as_str()) {
            continue;
        }
        let mut value = text(&header.value).replace(['\r', '\n'], " ");
        if value.len() > MAX_VALUE {
            let mut end = MAX_VALUE;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        out.push_str(&name);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
    }
    if let Some(date) = parsed.date() {
        out.push_str(&format!("date: {}\n", date.to_timestamp()));
    }
    out
}

fn addresses<'a>(list: impl Iterator<Item = &'a mail_parser::Addr<'a>>) -> String {
    list.map(|a| {
        format!(
            "{} <{}>",
            a.name.as_deref().unwrap_or(""),
            a.address.as_deref().unwrap_or("")
        )
    })
    .collect::<Vec<_>>()
    .join(", ")
}

fn text(value: &HeaderValue<'_>) -> String {
    match value {
        HeaderValue::Text(text) => text.to_string(),
        HeaderValue::TextList(list) => list.join(" "),
        HeaderValue::Address(Address::List(list)) => addresses(list.iter()),
        HeaderValue::Address(Address::Group(groups)) => {
            addresses(groups.iter().flat_map(|g| g.addresses.iter()))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_fields_and_date() {
        let header = search_header(
            b"From: =?UTF-8?Q?Ren=C3=A9?= <rene@example.org>\r\nTo: a@b.c, d@e.f\r\n\
              Subject: hello\r\n world\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\
              Received: from x\r\n\r\nbody\r\n",
        );
        assert_eq!(
            header,
            "from: René <rene@example.org>\nto:  <a@b.c>,  <d@e.f>\nsubject: hello world\n\
             date: 1704189600\n"
        );
        assert_eq!(search_header(b""), "");
    }
}
