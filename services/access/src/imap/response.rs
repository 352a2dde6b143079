//! IMAP response values and their encoding (RFC 9051 §7): handlers build
//! these, the session loop writes them.

use std::fmt::Write as _;

/// The status of a tagged completion (RFC 9051 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::No => "NO",
            Status::Bad => "BAD",
        }
    }
}

/// What a command handler answers: untagged data, then the tagged status.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Complete untagged responses, each with its CRLF (they may contain
    /// literals, hence bytes).
    pub untagged: Vec<Vec<u8>>,
    pub status: Status,
    /// A response code such as `AUTHENTICATIONFAILED` (without brackets).
    pub code: Option<String>,
    pub text: String,
    /// The session ends after this reply (LOGOUT).
    pub close: bool,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Self {
        Reply {
            untagged: Vec::new(),
            status: Status::Ok,
            code: None,
            text: text.into(),
            close: false,
        }
    }

    pub fn no(text: impl Into<String>) -> Self {
        Reply {
            status: Status::No,
            ..Reply::ok(text)
        }
    }

    pub fn bad(text: impl Into<String>) -> Self {
        Reply {
            status: Status::Bad,
            ..Reply::ok(text)
        }
    }

    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn untagged(mut self, lines: Vec<Vec<u8>>) -> Self {
        self.untagged = lines;
        self
    }

    /// The tagged line, CRLF included.
    pub fn tagged_line(&self, tag: &str) -> Vec<u8> {
        tagged(tag, self.status, self.code.as_deref(), &self.text)
    }
}

/// `tag SP status SP [ "[" code "]" SP ] text CRLF`
pub fn tagged(tag: &str, status: Status, code: Option<&str>, text: &str) -> Vec<u8> {
    let mut line = format!("{tag} {}", status.as_str());
    if let Some(code) = code {
        let _ = write!(line, " [{code}]");
    }
    let _ = write!(line, " {text}\r\n");
    line.into_bytes()
}

/// An untagged response from text: `* text CRLF`.
pub fn untagged(text: &str) -> Vec<u8> {
    format!("* {text}\r\n").into_bytes()
}

/// A string as an IMAP `string`: quoted when it can be, a literal when it
/// holds CR, LF or NUL (RFC 9051 §4.3). UTF-8 stays as it is (IMAP4rev2).
pub fn string(out: &mut Vec<u8>, value: &str) {
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        literal(out, value.as_bytes());
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

/// `{n}` CRLF and the bytes.
pub fn literal(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
}

/// A parenthesised flag list: `(\Seen $Junk)`.
pub fn flag_list(flags: &[String]) -> String {
    format!("({})", flags.join(" "))
}

/// RFC 9051 §9 `date-time`: `"dd-Mon-yyyy hh:mm:ss +zzzz"`, in UTC.
pub fn internal_date(epoch_ms: i64) -> String {
    format!(
        "\"{}\"",
        mailfleet_runtime::dates::imap(epoch_ms.div_euclid(1000))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(internal_date(0), "\"01-Jan-1970 00:00:00 +0000\"");
        // 2024-02-29T13:05:09Z
        assert_eq!(
            internal_date(1_709_211_909_000),
            "\"29-Feb-2024 13:05:09 +0000\""
        );
    }

    #[test]
    fn strings_are_quoted_or_literal() {
        let mut out = Vec::new();
        string(&mut out, r#"a "b" \c"#);
        assert_eq!(out, br#""a \"b\" \\c""#);
        out.clear();
        string(&mut out, "two\r\nlines");
        assert_eq!(out, b"{10}\r\ntwo\r\nlines");
    }

    #[test]
    fn tagged_lines() {
        let reply = Reply::no("invalid credentials").code("AUTHENTICATIONFAILED");
        assert_eq!(
            reply.tagged_line("a1"),
            b"a1 NO [AUTHENTICATIONFAILED] invalid credentials\r\n"
        );
    }
}
