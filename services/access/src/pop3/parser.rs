//! POP3 command parsing without I/O (RFC 1939 §3: a keyword, case
//! insensitive, and arguments separated by single spaces).

use std::fmt;

/// Longest command line accepted. RFC 2449 §4 allows 255 octets per command
/// line; be lenient with long user names and passwords.
pub const MAX_LINE_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    User(String),
    Pass(String),
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u32),
    Dele(u32),
    Rset,
    Noop,
    Quit,
    /// RFC 2595 §4
    Stls,
    /// RFC 5034: `AUTH mechanism [initial-response]`.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

impl Command {
    /// The keyword, for metrics and logs (a fixed set: never client text).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Capa => "CAPA",
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Uidl(_) => "UIDL",
            Command::Retr(_) => "RETR",
            Command::Top(..) => "TOP",
            Command::Dele(_) => "DELE",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Stls => "STLS",
            Command::Auth { .. } => "AUTH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Unknown,
    Syntax(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Unknown => f.write_str("unknown command"),
            ParseError::Syntax(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("invalid UTF-8"))?;
    let (keyword, rest) = match line.split_once(' ') {
        Some((keyword, rest)) => (keyword, Some(rest)),
        None => (line, None),
    };
    let keyword = keyword.to_ascii_uppercase();
    let args: Vec<&str> = rest
        .map(|r| r.split(' ').filter(|a| !a.is_empty()).collect())
        .unwrap_or_default();
    let command = match keyword.as_str() {
        "CAPA" => none(&args, Command::Capa)?,
        "STAT" => none(&args, Command::Stat)?,
        "RSET" => none(&args, Command::Rset)?,
        "NOOP" => none(&args, Command::Noop)?,
        "QUIT" => none(&args, Command::Quit)?,
        "STLS" => none(&args, Command::Stls)?,
        "AUTH" => match args.as_slice() {
            [mechanism] => Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial: None,
            },
            [mechanism, initial] => Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial: Some((*initial).to_owned()),
            },
            _ => return Err(ParseError::Syntax("AUTH takes a mechanism")),
        },
        "USER" => match args.as_slice() {
            [user] => Command::User((*user).to_owned()),
            _ => return Err(ParseError::Syntax("USER takes one argument")),
        },
        // RFC 1939 §7: the password is the rest of the line, spaces and all.
        "PASS" => match rest {
            Some(password) if !password.is_empty() => Command::Pass(password.to_owned()),
            _ => return Err(ParseError::Syntax("PASS takes a password")),
        },
        "LIST" => Command::List(optional_number(&args)?),
        "UIDL" => Command::Uidl(optional_number(&args)?),
        "RETR" => Command::Retr(one_number(&args)?),
        "DELE" => Command::Dele(one_number(&args)?),
        "TOP" => match args.as_slice() {
            [msg, lines] => Command::Top(message_number(msg)?, line_count(lines)?),
            _ => {
                return Err(ParseError::Syntax(
                    "TOP takes a message number and a line count",
                ));
            }
        },
        _ => return Err(ParseError::Unknown),
    };
    Ok(command)
}

fn none(args: &[&str], command: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(command)
    } else {
        Err(ParseError::Syntax("no arguments expected"))
    }
}

fn optional_number(args: &[&str]) -> Result<Option<u32>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => Ok(Some(message_number(n)?)),
        _ => Err(ParseError::Syntax("too many arguments")),
    }
}

fn one_number(args: &[&str]) -> Result<u32, ParseError> {
    match args {
        [n] => message_number(n),
        _ => Err(ParseError::Syntax("a message number is required")),
    }
}

fn message_number(arg: &str) -> Result<u32, ParseError> {
    match arg.parse::<u32>() {
        Ok(n) if n > 0 && arg.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ParseError::Syntax("invalid message number")),
    }
}

fn line_count(arg: &str) -> Result<u32, ParseError> {
    if !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax("invalid line count"));
    }
    // A huge count means the whole body.
    Ok(arg.parse::<u32>().unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(b"capa"), Ok(Command::Capa));
        assert_eq!(
            parse(b"USER alice@example.com"),
            Ok(Command::User("alice@example.com".into()))
        );
        assert_eq!(
            parse(b"PASS secret with spaces"),
            Ok(Command::Pass("secret with spaces".into()))
        );
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"list 2"), Ok(Command::List(Some(2))));
        assert_eq!(parse(b"UIDL 3"), Ok(Command::Uidl(Some(3))));
        assert_eq!(parse(b"RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse(b"DELE 4"), Ok(Command::Dele(4)));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
    }

    #[test]
    fn malformed() {
        assert_eq!(parse(b"FROB"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        for line in [
            &b"RETR"[..],
            b"RETR 0",
            b"RETR -1",
            b"RETR +1",
            b"RETR x",
            b"RETR 99999999999",
            b"TOP 1",
            b"TOP 1 x",
            b"LIST 1 2",
            b"STAT 1",
            b"USER",
            b"PASS",
            b"USER \xff",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
