//! Command-line parsing, without I/O: one CRLF-terminated line in, one
//! [`Command`] or [`ParseError`] out. The grammar work (RFC 5321 §4.1 and
//! the ESMTP parameters) is done by `smtp-proto`; this module narrows its
//! output to what this server serves and refuses parameters it never
//! advertised (RFC 5321 §4.1.1.11: 555).

use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ProtoError, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER,
    RCPT_NOTIFY_SUCCESS, Request,
};

use crate::auth::Mechanism;

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
    /// RFC 3207.
    StartTls,
    /// RFC 4954 §4: `AUTH mechanism [initial-response]`; `mechanism` is
    /// `None` for one this server does not offer.
    Auth {
        mechanism: Option<Mechanism>,
        initial_response: Option<String>,
    },
    /// RFC 3030 §2: `BDAT chunk-size [LAST]`; the chunk follows the line.
    Bdat {
        size: u64,
        last: bool,
    },
    /// A command of SMTP or its extensions this server does not serve:
    /// EXPN, ETRN, BURL, ... (RFC 5321 §4.2.4: 502).
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
    /// RFC 3461 §4.3: `RET=FULL` or `RET=HDRS`.
    pub ret: Option<&'static str>,
    /// RFC 3461 §4.4: `ENVID`, xtext-decoded.
    pub envid: Option<String>,
}

/// `RCPT TO:<forward-path> [parameters]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptTo {
    pub address: String,
    /// RFC 3461 §4.1: `NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY`.
    pub notify: Option<String>,
    /// RFC 3461 §4.2: `rfc822;address`, xtext-decoded.
    pub orcpt: Option<String>,
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
        return Ok(Command::Rcpt(RcptTo {
            address,
            ..RcptTo::default()
        }));
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
        Request::StartTls => Command::StartTls,
        Request::Auth {
            mechanism,
            initial_response,
        } => Command::Auth {
            mechanism: match mechanism {
                AUTH_PLAIN => Some(Mechanism::Plain),
                AUTH_LOGIN => Some(Mechanism::Login),
                _ => None,
            },
            initial_response: Some(initial_response.into_owned()).filter(|r| !r.is_empty()),
        },
        Request::Bdat {
            chunk_size,
            is_last,
        } => Command::Bdat {
            size: chunk_size as u64,
            last: is_last,
        },
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
    let known = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8 | MAIL_RET_FULL | MAIL_RET_HDRS;
    let unsupported = from.flags & !known;
    if unsupported != 0 {
        // BINARYMIME, REQUIRETLS, DELIVERBY: none is advertised in EHLO.
        return Err(ParseError::UnsupportedParameter(format!(
            "flags {unsupported:#x}"
        )));
    }
    // RFC 4954 §5: `AUTH=<mailbox>` is accepted and ignored (we do not
    // trust other servers' claims), as submission clients send `AUTH=<>`.
    for (name, given) in [
        ("TRANSID", from.trans_id.is_some()),
        ("SOLICIT", from.solicit.is_some()),
        ("MTRK", from.mtrk.is_some()),
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
        ret: if from.flags & MAIL_RET_FULL != 0 {
            Some("FULL")
        } else if from.flags & MAIL_RET_HDRS != 0 {
            Some("HDRS")
        } else {
            None
        },
        envid: from.env_id.map(|e| e.into_owned()),
    })
}

fn rcpt_to(to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) -> Result<RcptTo, ParseError> {
    let notify_flags = RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY;
    if to.flags & !(notify_flags | RCPT_NOTIFY_NEVER) != 0 || to.rrvs != 0 {
        // RRVS, CONNEG: not advertised.
        return Err(ParseError::UnsupportedParameter("RCPT parameters".into()));
    }
    // RFC 3461 §4.1: NEVER stands alone.
    if to.flags & RCPT_NOTIFY_NEVER != 0 && to.flags & notify_flags != 0 {
        return Err(ParseError::InvalidParameter("NOTIFY"));
    }
    let notify = if to.flags & RCPT_NOTIFY_NEVER != 0 {
        Some("NEVER".to_owned())
    } else if to.flags & notify_flags != 0 {
        let names: Vec<&str> = [
            (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
            (RCPT_NOTIFY_FAILURE, "FAILURE"),
            (RCPT_NOTIFY_DELAY, "DELAY"),
        ]
        .iter()
        .filter(|(flag, _)| to.flags & flag != 0)
        .map(|(_, name)| *name)
        .collect();
        Some(names.join(","))
    } else {
        None
    };
    // smtp-proto accepts only the rfc822 address type and drops its name.
    let orcpt = to.orcpt.map(|o| format!("rfc822;{o}"));
    let address = to.address.into_owned();
    // RFC 5321 §4.1.1.3: `<Postmaster>` without a domain must be accepted.
    if !(is_mailbox(&address) || address.eq_ignore_ascii_case("postmaster")) {
        return Err(ParseError::BadRecipient);
    }
    Ok(RcptTo {
        address,
        notify,
        orcpt,
    })
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
                ret: None,
                envid: None,
            }))
        );
        assert_eq!(
            parse("mail from:<a@b.example>\r\n"),
            Ok(Command::Mail(MailFrom {
                address: "a@b.example".into(),
                size: None,
                body: Body::SevenBit,
                smtputf8: false,
                ret: None,
                envid: None,
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
                address: "alice@example.org".into(),
                ..RcptTo::default()
            }))
        );
        assert_eq!(
            parse("RCPT TO:<Postmaster>\r\n"),
            Ok(Command::Rcpt(RcptTo {
                address: "Postmaster".into(),
                ..RcptTo::default()
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
            parse("MAIL FROM:<a@b.example> REQUIRETLS\r\n"),
            Err(ParseError::UnsupportedParameter(_))
        ));
        assert!(matches!(
            parse("RCPT TO:<a@b.example> RRVS=2014-04-03T23:01:00Z\r\n"),
            Err(ParseError::UnsupportedParameter(_))
        ));
        assert!(parse("MAIL FROM:<a@b.example> FOO=BAR\r\n").is_err());
    }

    #[test]
    fn dsn_parameters() {
        let Ok(Command::Mail(from)) =
            parse("MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ314159+2Bx\r\n")
        else {
            panic!("DSN MAIL parameters refused");
        };
        assert_eq!(from.ret, Some("HDRS"));
        assert_eq!(from.envid.as_deref(), Some("QQ314159+x"));
        let Ok(Command::Rcpt(to)) =
            parse("RCPT TO:<c@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;C+40d.example\r\n")
        else {
            panic!("DSN RCPT parameters refused");
        };
        assert_eq!(to.notify.as_deref(), Some("SUCCESS,DELAY"));
        assert_eq!(to.orcpt.as_deref(), Some("rfc822;C@d.example"));
        let Ok(Command::Rcpt(to)) = parse("RCPT TO:<c@d.example> NOTIFY=NEVER\r\n") else {
            panic!("NOTIFY=NEVER refused");
        };
        assert_eq!(to.notify.as_deref(), Some("NEVER"));
        assert!(parse("RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS\r\n").is_err());
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
        assert_eq!(parse("STARTTLS\r\n"), Ok(Command::StartTls));
        assert_eq!(
            parse("EXPN staff\r\n"),
            Ok(Command::NotImplemented { verb: "EXPN" })
        );
        assert_eq!(
            parse("BDAT 100 LAST\r\n"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 0\r\n"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert!(parse("BDAT x\r\n").is_err());
        assert_eq!(
            parse("AUTH PLAIN AGEAYg==\r\n"),
            Ok(Command::Auth {
                mechanism: Some(Mechanism::Plain),
                initial_response: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse("auth login\r\n"),
            Ok(Command::Auth {
                mechanism: Some(Mechanism::Login),
                initial_response: None
            })
        );
        assert!(matches!(
            parse("AUTH CRAM-MD5\r\n"),
            Ok(Command::Auth {
                mechanism: None,
                ..
            })
        ));
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
