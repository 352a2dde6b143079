//! SMTP replies as values: a code, an enhanced status code and text. Every
//! handler returns one; only the session loop turns them into bytes.
//!
//! The constants name each reply the server gives, with the RFC that
//! defines its code. RFC 3463 defines the enhanced codes; RFC 2034 §3 says
//! they prefix every reply except the greeting and the EHLO/HELO reply.

use std::borrow::Cow;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `"5.1.1"`; `None` only for the greeting and EHLO/HELO (RFC 2034 §3).
    pub enhanced: Option<Cow<'static, str>>,
    /// One line per `\n`: a multi-line reply (RFC 5321 §4.2.1).
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            enhanced: Some(Cow::Borrowed(enhanced)),
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, enhanced: impl Into<Cow<'static, str>>, text: String) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced.into()),
            text: Cow::Owned(text),
        }
    }

    /// A reply without an enhanced code (greeting, EHLO, HELO).
    pub fn plain(code: u16, text: String) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: Cow::Owned(text),
        }
    }

    /// RFC 5321 §3.8: after a 421 the server closes the channel; after a
    /// 221 (QUIT) as well.
    pub fn closes_session(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// 2xx or 3xx: the command succeeded (or DATA may go on).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply on the wire: `250-...` continuation lines, `250 ...` last,
    /// each line CRLF-terminated. Control characters in the text (which may
    /// come from a verdict) are replaced so a reply is never split or
    /// smuggled.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let _ = write!(out, "{}{}", self.code, sep);
            if let Some(enhanced) = &self.enhanced {
                out.push_str(&clean(enhanced));
                out.push(' ');
            }
            out.push_str(&clean(line));
            out.push_str("\r\n");
        }
        out
    }
}

fn clean(text: &str) -> Cow<'_, str> {
    if text.chars().any(|c| c.is_control()) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

// RFC 5321 §4.2.2 codes by meaning; RFC 3463 enhanced codes.

pub const OK: Reply = Reply::new(250, "2.0.0", "ok");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "sender ok");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "recipient ok");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "reset");
pub const BYE: Reply = Reply::new(221, "2.0.0", "bye");
pub const START_DATA: Reply = Reply::new(354, "2.0.0", "end data with <CR><LF>.<CR><LF>");
/// RFC 5321 §3.5.3: 252 when the server will not verify but will try.
pub const CANNOT_VRFY: Reply = Reply::new(
    252,
    "2.5.0",
    "cannot verify user, but will accept message and attempt delivery",
);
/// RFC 5321 §4.1.1.8.
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
);
/// RFC 3207 §4.
pub const READY_FOR_TLS: Reply = Reply::new(220, "2.0.0", "ready to start TLS");
pub const TLS_ALREADY_ACTIVE: Reply = Reply::new(503, "5.5.1", "TLS already active");
/// RFC 3207 §4: 530 until STARTTLS when the policy needs TLS.
pub const STARTTLS_FIRST: Reply = Reply::new(530, "5.7.0", "must issue a STARTTLS command first");

// RFC 4954 §6 (AUTH) and RFC 3463/RFC 5248 enhanced codes.
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "authentication successful");
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "authentication required");
pub const AUTH_INVALID: Reply = Reply::new(535, "5.7.8", "authentication credentials invalid");
pub const ENCRYPTION_REQUIRED: Reply = Reply::new(
    538,
    "5.7.11",
    "encryption required for requested authentication mechanism",
);
pub const AUTH_TEMPORARY_FAILURE: Reply =
    Reply::new(454, "4.7.0", "temporary authentication failure");
pub const AUTH_TOO_MANY_FAILURES: Reply = Reply::new(
    454,
    "4.7.0",
    "too many authentication failures, try again later",
);
pub const AUTH_MECHANISM_UNSUPPORTED: Reply =
    Reply::new(504, "5.5.4", "unrecognized authentication type");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0", "authentication cancelled");
pub const AUTH_BAD_RESPONSE: Reply = Reply::new(501, "5.5.2", "cannot decode response");
pub const ALREADY_AUTHENTICATED: Reply = Reply::new(503, "5.5.1", "already authenticated");
pub const AUTH_IN_TRANSACTION: Reply =
    Reply::new(503, "5.5.1", "AUTH not permitted during a mail transaction");
/// RFC 6409 §6.1: the submission server checks the sender.
pub const SENDER_NOT_OWNED: Reply = Reply::new(
    553,
    "5.7.1",
    "sender address not owned by the authenticated user",
);
/// RFC 6531 §3.5.
pub const SENDER_NEEDS_SMTPUTF8: Reply = Reply::new(
    553,
    "5.6.7",
    "non-ASCII sender address needs the SMTPUTF8 parameter",
);
pub const RECIPIENT_NEEDS_SMTPUTF8: Reply = Reply::new(
    553,
    "5.6.7",
    "non-ASCII recipient address needs the SMTPUTF8 parameter",
);
/// RFC 5321 §4.5.3.1.6: 1000 octets per text line, CRLF included.
pub const LINE_TOO_LONG_IN_DATA: Reply =
    Reply::new(550, "5.6.0", "message has a line longer than 1000 bytes");
/// RFC 5321 §6.3, RFC 3463 §3.5 (5.4.6: routing loop detected).
pub const TOO_MANY_HOPS: Reply = Reply::new(554, "5.4.6", "too many hops, mail loop detected");

pub const BAD_SEQUENCE: Reply = Reply::new(503, "5.5.1", "bad sequence of commands");
pub const NEED_EHLO: Reply = Reply::new(503, "5.5.1", "send EHLO or HELO first");
pub const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "need MAIL before RCPT");
pub const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "need RCPT before DATA");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "sender already given");
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.1", "command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "line too long");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "command not implemented");
pub const SYNTAX: Reply = Reply::new(501, "5.5.4", "syntax error");
pub const BAD_SENDER_SYNTAX: Reply = Reply::new(501, "5.1.7", "bad sender address syntax");
pub const BAD_RECIPIENT_SYNTAX: Reply = Reply::new(501, "5.1.3", "bad recipient address syntax");
/// RFC 5321 §4.1.1.11: parameters not recognized or not implemented.
pub const UNSUPPORTED_PARAMETER: Reply =
    Reply::new(555, "5.5.4", "parameter not recognized or not implemented");
/// RFC 1870 §6.1: declared SIZE above the limit.
pub const SIZE_DECLARED_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "message size exceeds fixed maximum message size",
);
/// RFC 1870 §6.3: the message itself went above the limit.
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "message size exceeds fixed maximum message size",
);
/// RFC 5321 §2.3.8: CR and LF only ever occur together as CRLF. A bare LF
/// is refused rather than normalised: servers that end DATA at `\n.\n`
/// would otherwise see a different message boundary (SMTP smuggling).
pub const BARE_LF: Reply = Reply::new(
    550,
    "5.6.0",
    "bare LF in message not allowed, lines must end with CRLF",
);
pub const USER_UNKNOWN: Reply = Reply::new(550, "5.1.1", "user unknown");
pub const RELAY_DENIED: Reply = Reply::new(554, "5.7.1", "relay access denied");
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "too many recipients");
pub const LOOKUP_FAILED: Reply = Reply::new(
    451,
    "4.4.3",
    "directory temporarily unavailable, try again later",
);
pub const RATE_LIMITED: Reply = Reply::new(450, "4.7.1", "too many messages, slow down");
pub const LOCAL_ERROR: Reply =
    Reply::new(451, "4.3.0", "local error in processing, try again later");
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "too many errors, closing");
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "too many connections, try again later");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "timeout, closing");
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "service shutting down");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(USER_UNKNOWN.to_wire(), "550 5.1.1 user unknown\r\n");
    }

    #[test]
    fn multi_line_uses_dashes_until_the_last() {
        let r = Reply::plain(250, "mx.example\nPIPELINING\nSIZE 10".into());
        assert_eq!(
            r.to_wire(),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn control_characters_never_reach_the_wire() {
        let r = Reply::owned(554, "5.7.1", "bad\r\n250 ok".into());
        assert_eq!(r.to_wire(), "554-5.7.1 bad \r\n554 5.7.1 250 ok\r\n");
        let r = Reply::owned(554, "5.7.1", "bad\rx\x00y".into());
        assert_eq!(r.to_wire(), "554 5.7.1 bad x y\r\n");
    }
}
