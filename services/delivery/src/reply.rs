//! SMTP replies as a client reads them (RFC 5321 §4.2), parsed without I/O:
//! a line at a time, so a hostile or broken server can only make us fail
//! the attempt, never panic or grow without bound.

use std::fmt;

/// More lines than any real server sends in one reply (EHLO lists a few
/// dozen extensions at most).
pub const MAX_REPLY_LINES: usize = 128;

/// One complete reply: the code and its text lines (code and separator
/// stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.to_owned()],
        }
    }

    /// 2xx (and 3xx where an intermediate reply is expected).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later (RFC 5321 §4.2.1).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not repeat the same request.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code of RFC 3463 at the start of the first line,
    /// when its class matches the reply code's first digit.
    pub fn enhanced_status(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let candidate = first.split_whitespace().next()?;
        let mut parts = candidate.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        let numeric = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        let code_class = (self.code / 100).to_string();
        (parts.next().is_none() && class == code_class && numeric(subject, 3) && numeric(detail, 3))
            .then_some(candidate)
    }

    /// The text as one line, for logs, queue state and DSNs.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply code changed within a multi-line reply")]
    CodeChanged,
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooLong,
}

/// Collects the lines of one reply. `push` returns the reply once its last
/// line (`ddd<SP>`) arrived.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// Feeds one line, CRLF (or a bare LF) included or not.
    pub fn push(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        // RFC 5321 §4.2: the first digit is 2..5; anything else is not SMTP.
        if !(b'2'..=b'5').contains(&line[0]) {
            return Err(malformed());
        }
        let code = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let (last, text) = match line.get(3) {
            None => (true, &[][..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        if self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::CodeChanged);
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooLong);
        }
        self.code = Some(code);
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if !last {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(Reply {
            code,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// What the server said it supports in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub starttls: bool,
    pub pipelining: bool,
    /// `SIZE` (RFC 1870); `Some(0)` means no fixed limit announced.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    /// SASL mechanisms of `AUTH` (RFC 4954), upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    /// The first line is the greeting; every later line one keyword with
    /// optional parameters, case-insensitive.
    pub fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => ext.starttls = true,
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "AUTH" => ext.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                "SIZE" => {
                    ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(lines: &[&str]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::default();
        let mut replies = Vec::new();
        for line in lines {
            if let Some(reply) = parser.push(line.as_bytes())? {
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    #[test]
    fn single_and_multi_line() {
        let replies = parse_all(&[
            "220 mx.example ESMTP\r\n",
            "250-mx.example hello\r\n",
            "250-PIPELINING\r\n",
            "250-SIZE 1000\r\n",
            "250 STARTTLS\r\n",
        ])
        .unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0], Reply::new(220, "mx.example ESMTP"));
        assert_eq!(replies[1].code, 250);
        let ext = Extensions::from_ehlo(&replies[1]);
        assert!(ext.pipelining && ext.starttls);
        assert_eq!(ext.size, Some(1000));
        assert!(!ext.smtputf8 && !ext.eight_bit_mime);
    }

    #[test]
    fn bare_code_and_bare_lf() {
        let replies = parse_all(&["250\n", "354 go\n"]).unwrap();
        assert_eq!(replies[0].lines, vec![String::new()]);
        assert_eq!(replies[1], Reply::new(354, "go"));
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for bad in [
            "",
            "2",
            "25",
            "abc def",
            "250x",
            "650 six",
            "099 low",
            "\u{e9}\u{e9}\u{e9}",
        ] {
            assert!(parse_all(&[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_all(&["250-a", "251 b"]).unwrap_err(),
            ReplyError::CodeChanged
        );
        let many: Vec<&str> = std::iter::repeat_n("250-x", MAX_REPLY_LINES + 1).collect();
        assert_eq!(parse_all(&many).unwrap_err(), ReplyError::TooLong);
    }

    #[test]
    fn enhanced_status_codes() {
        assert_eq!(
            Reply::new(550, "5.1.1 no such user").enhanced_status(),
            Some("5.1.1")
        );
        assert_eq!(
            Reply::new(451, "4.7.1 greylisted").enhanced_status(),
            Some("4.7.1")
        );
        // Class must match the reply code.
        assert_eq!(Reply::new(550, "4.1.1 odd").enhanced_status(), None);
        assert_eq!(Reply::new(550, "no such user").enhanced_status(), None);
        assert_eq!(Reply::new(550, "5.1 short").enhanced_status(), None);
        assert!(Reply::new(451, "x").is_transient());
        assert!(Reply::new(550, "x").is_permanent());
        assert!(Reply::new(354, "x").is_positive());
    }
}
