//! Command-line parsing, without I/O: one CRLF-terminated line in, one
//! [`Command`] or [`ParseError`] out. The grammar work (RFC 5321 §4.1 and
//! the ESMTP parameters) is done by `smtp-proto`; this module narrows its
//! output to what this server serves and refuses parameters it never
//! advertised (RFC 5321 §4.1.1.11: 555).

use smtp_proto::{Error as ProtoError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, Request};

/// A command this server understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo {
        host: String,
    },
    Helo {
        host: String,
    },
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// A command of SMTP or its extensions this server does not serve (yet):
    /// STARTTLS, AUTH, BDAT, EXPN, ETRN, ... (RFC 5321 §4.2.4: 502).
    NotImplemented {
        verb: &'static str,
    },
}

/// RFC 6152 / RFC 1652: the declared body type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

/// `MAIL FROM:<reverse-path> [parameters]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// Empty for the null reverse-path `<>` (RFC 5321 §4.5.5, bounces).
    pub address: String,
    /// RFC 1870 §3: the declared size, if given.
    pub size: Option<u64>,
    pub body: Body,
    /// RFC 6531 §3.4: the SMTPUTF8 parameter.
    pub smtputf8: bool,
}

/// `RCPT TO:<forward-path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command")]
    Unknown,
    #[error("syntax error, expected {0}")]
    Syntax(&'static str),
    #[error("bad sender address")]
    BadSender,
    #[error("bad recipient address")]
    BadRecipient,
    #[error("invalid value of parameter {0}")]
    InvalidParameter(&'static str),
    #[error("unsupported parameter {0}")]
    UnsupportedParameter(String),
}

/// Parses one command line. `line` should end with LF (CRLF or a bare LF:
/// commands are forgiving, DATA is not); a missing LF is added.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let mut owned;
    let line = if line.ends_with(b"\n") {
        line
    } else {
        owned = line.to_vec();
        owned.push(b'\n');
        &owned
    };
    if let Some(address) = postmaster(line) {
        return Ok(Command::Rcpt(RcptTo { address }));
    }
    let request = Request::parse(&mut line.iter()).map_err(map_error)?;
    Ok(match request {
        Request::Ehlo { host } => Command::Ehlo {
            host: host.into_owned(),
        },
        Request::Helo { host } => Command::Helo {
            host: host.into_owned(),
        },
        Request::Mail { from } => Command::Mail(mail_from(from)?),
        Request::Rcpt { to } => Command::Rcpt(rcpt_to(to)?),
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Noop { .. } => Command::Noop,
        Request::Quit => Command::Quit,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Help { .. } => Command::Help,
        other => Command::NotImplemented { verb: other.name() },
    })
}

fn map_error(error: ProtoError) -> ParseError {
    match error {
        ProtoError::UnknownCommand => ParseError::Unknown,
        ProtoError::SyntaxError { syntax } => ParseError::Syntax(syntax),
        ProtoError::InvalidSenderAddress => ParseError::BadSender,
        ProtoError::InvalidRecipientAddress => ParseError::BadRecipient,
        ProtoError::InvalidParameter { param } => ParseError::InvalidParameter(param),
        ProtoError::UnsupportedParameter { param } => ParseError::UnsupportedParameter(param),
        // Only reachable without a final LF, which parse_command adds, or
        // for reply parsing: report a plain syntax error either way.
        ProtoError::NeedsMoreData { .. }
        | ProtoError::ResponseTooLong
        | ProtoError::InvalidResponse { .. } => ParseError::Syntax("a complete command line"),
    }
}

fn mail_from(
    from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>,
) -> Result<MailFrom, ParseError> {
    let unsupported = from.flags & !(MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8);
    if unsupported != 0 {
        // BINARYMIME (needs CHUNKING), REQUIRETLS, DSN's RET, DELIVERBY:
        // none is advertised in EHLO.
        return Err(ParseError::UnsupportedParameter(format!(
            "flags {unsupported:#x}"
        )));
    }
    for (name, given) in [
        ("ENVID", from.env_id.is_some()),
        ("TRANSID", from.trans_id.is_some()),
        ("SOLICIT", from.solicit.is_some()),
        ("MTRK", from.mtrk.is_some()),
        ("AUTH", from.auth.is_some()),
        ("BY", from.by != 0),
        ("HOLDFOR", from.hold_for != 0),
        ("HOLDUNTIL", from.hold_until != 0),
        ("MT-PRIORITY", from.mt_priority != 0),
    ] {
        if given {
            return Err(ParseError::UnsupportedParameter(name.into()));
        }
    }
    let address = from.address.into_owned();
    // RFC 5321 §4.1.2: a non-null reverse-path is a mailbox, local@domain.
    if !address.is_empty() && !is_mailbox(&address) {
        return Err(ParseError::BadSender);
    }
    Ok(MailFrom {
        address,
        size: (from.size > 0).then_some(from.size as u64),
        body: if from.flags & MAIL_BODY_8BITMIME != 0 {
            Body::EightBitMime
        } else {
            Body::SevenBit
        },
        smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
    })
}

fn rcpt_to(to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> Result<RcptTo, ParseError> {
    if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
        // DSN's NOTIFY/ORCPT, RRVS, CONNEG: not advertised.
        return Err(ParseError::UnsupportedParameter("RCPT parameters".into()));
    }
    let address = to.address.into_owned();
    // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain must be accepted.
    if !(is_mailbox(&address) || address.eq_ignore_ascii_case("postmaster")) {
        return Err(ParseError::BadRecipient);
    }
    Ok(RcptTo { address })
}

/// RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` (no domain) must be
/// accepted; smtp-proto requires a domain, so it is recognised here.
fn postmaster(line: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"RCPT TO:<";
    let line = line.trim_ascii_end();
    let rest = line
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &line[PREFIX.len()..])?;
    let address = rest.strip_suffix(b">")?;
    address
        .eq_ignore_ascii_case(b"postmaster")
        .then(|| String::from_utf8_lossy(address).into_owned())
}

/// `local@domain` with both parts non-empty.
fn is_mailbox(address: &str) -> bool {
    match address.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, ParseError> {
        parse_command(line.as_bytes())
    }

    #[test]
    fn greetings() {
        assert_eq!(
            parse("EHLO client.example\r\n"),
            Ok(Command::Ehlo {
                host: "client.example".into()
            })
        );
        assert_eq!(
            parse("helo client.example\r\n"),
            Ok(Command::Helo {
                host: "client.example".into()
            })
        );
        assert!(matches!(parse("EHLO\r\n"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn mail_from_with_parameters() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n"),
            Ok(Command::Mail(MailFrom {
                address: "a@b.example".into(),
                size: Some(1000),
                body: Body::EightBitMime,
                smtputf8: true,
            }))
        );
        assert_eq!(
            parse("mail from:<a@b.example>\r\n"),
            Ok(Command::Mail(MailFrom {
                address: "a@b.example".into(),
                size: None,
                body: Body::SevenBit,
                smtputf8: false,
            }))
        );
    }

    #[test]
    fn null_reverse_path() {
        let Ok(Command::Mail(from)) = parse("MAIL FROM:<>\r\n") else {
            panic!("null sender refused");
        };
        assert_eq!(from.address, "");
    }

    #[test]
    fn bare_lf_and_missing_lf_are_tolerated_on_commands() {
        assert_eq!(parse("NOOP\n"), Ok(Command::Noop));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            parse("RCPT TO:<alice@example.org>\r\n"),
            Ok(Command::Rcpt(RcptTo {
                address: "alice@example.org".into()
            }))
        );
        assert_eq!(
            parse("RCPT TO:<Postmaster>\r\n"),
            Ok(Command::Rcpt(RcptTo {
                address: "Postmaster".into()
            }))
        );
        assert!(parse("RCPT TO:<>\r\n").is_err());
        assert!(parse("RCPT TO:<nodomain>\r\n").is_err());
        assert!(parse("RCPT TO:alice@example.org\r\n").is_err());
    }

    #[test]
    fn syntax_errors() {
        assert!(parse("MAIL FROM:a@b.example\r\n").is_err());
        assert!(parse("MAIL TO:<a@b.example>\r\n").is_err());
        assert!(parse("MAIL FROM:<a@b.example\r\n").is_err());
        assert!(parse("MAIL FROM:<a@b.example> SIZE=abc\r\n").is_err());
        assert!(parse("MAIL FROM:<a@b.example> BODY=9BIT\r\n").is_err());
    }

    #[test]
    fn parameters_never_advertised_are_refused() {
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n"),
            Err(ParseError::UnsupportedParameter(_))
        ));
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> RET=FULL\r\n"),
            Err(ParseError::UnsupportedParameter(_))
        ));
        assert!(matches!(
            parse("RCPT TO:<a@b.example> NOTIFY=NEVER\r\n"),
            Err(ParseError::UnsupportedParameter(_))
        ));
        assert!(parse("MAIL FROM:<a@b.example> FOO=BAR\r\n").is_err());
    }

    #[test]
    fn other_verbs() {
        assert_eq!(parse("DATA\r\n"), Ok(Command::Data));
        assert_eq!(parse("RSET\r\n"), Ok(Command::Rset));
        assert_eq!(parse("NOOP hello\r\n"), Ok(Command::Noop));
        assert_eq!(parse("QUIT\r\n"), Ok(Command::Quit));
        assert_eq!(parse("VRFY alice\r\n"), Ok(Command::Vrfy));
        assert_eq!(parse("HELP\r\n"), Ok(Command::Help));
        assert_eq!(parse("HELP MAIL\r\n"), Ok(Command::Help));
        assert_eq!(
            parse("STARTTLS\r\n"),
            Ok(Command::NotImplemented { verb: "STARTTLS" })
        );
        assert_eq!(parse("FOO\r\n"), Err(ParseError::Unknown));
        assert_eq!(parse("\r\n"), Err(ParseError::Unknown));
        assert_eq!(parse("MAILX FROM:<a@b>\r\n"), Err(ParseError::Unknown));
    }

    /// Never a panic on input: a deterministic stream of junk lines, some
    /// built from command prefixes so the deeper parsers are reached.
    #[test]
    fn random_lines_never_panic() {
        let prefixes: [&[u8]; 8] = [
            b"",
            b"MAIL FROM:<",
            b"RCPT TO:<",
            b"EHLO ",
            b"MAIL FROM:<a@b> ",
            b"BDAT ",
            b"AUTH ",
            b"RCPT TO:<a@b> ",
        ];
        let alphabet = b"<>@:=\" \\\r\t.aZ09-+,;[]\x00\xff\xc3\xa9SIZEBODY";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut line = prefixes[(next() % prefixes.len() as u64) as usize].to_vec();
            for _ in 0..(next() % 40) {
                line.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            line.extend_from_slice(b"\r\n");
            let _ = parse_command(&line);
        }
    }
}
