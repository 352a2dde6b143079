//! IMAP command parsing without I/O (RFC 9051 §9 / RFC 3501 §9 formal
//! syntax). The session collects one complete command — the first line, and
//! for each literal announced at a line's end the literal's bytes and the
//! following line — and hands the bytes to [`parse_command`]. Bad input is an
//! [`ParseError`] carrying the tag when one was read, never a panic.

use std::fmt;

/// Longest command accepted, literals included (RFC 9051 §4 leaves the limit
/// to the server; RFC 7162 §4 recommends at least 8192 octets per line).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Largest single literal accepted in a command (no APPEND yet, so literals
/// only carry user names, passwords and mailbox names).
pub const MAX_LITERAL_BYTES: usize = 64 * 1024;

/// A parsed command: its tag and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub body: CommandBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    Capability,
    Noop,
    Logout,
    Login {
        user: String,
        password: String,
    },
    List {
        reference: String,
        pattern: String,
    },
    Select {
        mailbox: String,
    },
    Examine {
        mailbox: String,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchItem>,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
    },
    Expunge,
    Close,
    Unselect,
    Check,
    Idle,
}

impl CommandBody {
    /// The verb, for metrics and logs (a fixed set: never client text).
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::List { .. } => "LIST",
            CommandBody::Select { .. } => "SELECT",
            CommandBody::Examine { .. } => "EXAMINE",
            CommandBody::Fetch { uid: false, .. } => "FETCH",
            CommandBody::Fetch { uid: true, .. } => "UID FETCH",
            CommandBody::Store { uid: false, .. } => "STORE",
            CommandBody::Store { uid: true, .. } => "UID STORE",
            CommandBody::Expunge => "EXPUNGE",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Check => "CHECK",
            CommandBody::Idle => "IDLE",
        }
    }
}

/// One element of a sequence set: a number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNumber {
    Value(u32),
    Star,
}

/// RFC 9051 §9 `sequence-set`: ranges may be given in either order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNumber, SeqNumber)>);

impl SequenceSet {
    /// Whether `n` is in the set, `*` standing for `largest`
    /// (RFC 9051 §9: `*` is the largest number in use).
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let resolve = |s: SeqNumber| match s {
            SeqNumber::Value(v) => v,
            SeqNumber::Star => largest,
        };
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (resolve(a), resolve(b));
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            (low..=high).contains(&n)
        })
    }
}

/// The part of a message a `BODY[...]` item names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `BODY[]`: the whole message.
    Full,
    /// `BODY[HEADER]`: the header, with the blank line that ends it.
    Header,
    /// `BODY[TEXT]`: what follows the header.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchItem {
    Flags,
    Uid,
    Rfc822Size,
    InternalDate,
    /// `RFC822`: like `BODY[]`, answered as `RFC822`.
    Rfc822,
    /// `RFC822.HEADER`: like `BODY.PEEK[HEADER]`.
    Rfc822Header,
    /// `RFC822.TEXT`: like `BODY[TEXT]`.
    Rfc822Text,
    Body {
        section: Section,
        peek: bool,
        /// `<offset.length>`
        partial: Option<(u32, u32)>,
    },
}

impl FetchItem {
    /// Whether fetching this item sets `\Seen` (RFC 9051 §6.4.5).
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchItem::Rfc822 | FetchItem::Rfc822Text | FetchItem::Body { peek: false, .. }
        )
    }

    /// Whether answering needs the message's bytes.
    pub fn needs_body(&self) -> bool {
        matches!(
            self,
            FetchItem::Rfc822
                | FetchItem::Rfc822Header
                | FetchItem::Rfc822Text
                | FetchItem::Body { .. }
        )
    }
}

/// `FLAGS`, `+FLAGS` or `-FLAGS` in STORE (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// A command could not be parsed: answered `tag BAD message`, or
/// `* BAD message` when not even a tag was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub tag: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

/// A literal announced at the end of a command line: `{n}` (synchronising:
/// the server answers `+` before the client sends the bytes) or `{n+}`
/// (RFC 7888 LITERAL+: sent at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteralHeader {
    pub length: u64,
    pub synchronizing: bool,
}

/// Does `line` (without its CRLF) end with a literal announcement?
/// RFC 9051 §4.3: a literal is `{` number `}` CRLF followed by its octets.
pub fn trailing_literal(line: &[u8]) -> Option<LiteralHeader> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let mut synchronizing = true;
    if let Some(rest) = digits.strip_suffix(b"+") {
        digits = rest;
        synchronizing = false;
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Saturate: an absurd length is refused by the caller all the same.
    let length = digits.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(LiteralHeader {
        length,
        synchronizing,
    })
}

/// The tag at the start of a line, if it has one (for answering lines that
/// cannot be parsed, such as one with a refused literal).
pub fn leading_tag(line: &[u8]) -> Option<String> {
    let mut cursor = Cursor::new(line);
    cursor.tag().ok()
}

/// Parses one complete command (literals inlined, final CRLF removed).
pub fn parse_command(input: &[u8]) -> Result<Command, ParseError> {
    let mut cursor = Cursor::new(input);
    let tag = cursor
        .tag()
        .map_err(|message| ParseError { tag: None, message })?;
    let body = parse_body(&mut cursor).map_err(|message| ParseError {
        tag: Some(tag.clone()),
        message,
    })?;
    Ok(Command { tag, body })
}

type Parsed<T> = Result<T, String>;

fn parse_body(c: &mut Cursor<'_>) -> Parsed<CommandBody> {
    c.space()?;
    let verb = c.atom()?.to_ascii_uppercase();
    let body = match verb.as_slice() {
        b"CAPABILITY" => CommandBody::Capability,
        b"NOOP" => CommandBody::Noop,
        b"LOGOUT" => CommandBody::Logout,
        b"EXPUNGE" => CommandBody::Expunge,
        b"CLOSE" => CommandBody::Close,
        b"UNSELECT" => CommandBody::Unselect,
        b"CHECK" => CommandBody::Check,
        b"IDLE" => CommandBody::Idle,
        b"LOGIN" => {
            c.space()?;
            let user = c.astring_utf8()?;
            c.space()?;
            let password = c.astring_utf8()?;
            CommandBody::Login { user, password }
        }
        b"SELECT" => {
            c.space()?;
            CommandBody::Select {
                mailbox: c.mailbox()?,
            }
        }
        b"EXAMINE" => {
            c.space()?;
            CommandBody::Examine {
                mailbox: c.mailbox()?,
            }
        }
        b"LIST" => {
            c.space()?;
            if c.peek() == Some(b'(') {
                return Err("LIST selection options are not supported".into());
            }
            let reference = c.mailbox()?;
            c.space()?;
            let pattern = c.list_mailbox()?;
            CommandBody::List { reference, pattern }
        }
        b"FETCH" => parse_fetch(c, false)?,
        b"STORE" => parse_store(c, false)?,
        b"UID" => {
            c.space()?;
            let sub = c.atom()?.to_ascii_uppercase();
            match sub.as_slice() {
                b"FETCH" => parse_fetch(c, true)?,
                b"STORE" => parse_store(c, true)?,
                _ => return Err("unknown UID command".into()),
            }
        }
        _ => return Err("unknown command".into()),
    };
    if !c.at_end() {
        return Err("unexpected characters after command".into());
    }
    Ok(body)
}

/// RFC 9051 §6.4.5: `FETCH sequence-set SP ("ALL" / "FULL" / "FAST" /
/// fetch-att / "(" fetch-att *(SP fetch-att) ")")`.
fn parse_fetch(c: &mut Cursor<'_>, uid: bool) -> Parsed<CommandBody> {
    c.space()?;
    let set = c.sequence_set()?;
    c.space()?;
    let mut items = Vec::new();
    if c.eat(b'(') {
        loop {
            items.push(parse_fetch_att(c)?);
            if c.eat(b')') {
                break;
            }
            c.space()?;
        }
    } else {
        let save = c.pos;
        let word = c.fetch_word().to_ascii_uppercase();
        match word.as_slice() {
            // ENVELOPE is part of ALL and FULL but comes in a later issue;
            // answer what we can rather than refuse common clients.
            b"ALL" | b"FAST" => items.extend([
                FetchItem::Flags,
                FetchItem::InternalDate,
                FetchItem::Rfc822Size,
            ]),
            b"FULL" => return Err("FETCH FULL is not supported yet".into()),
            _ => {
                c.pos = save;
                items.push(parse_fetch_att(c)?);
            }
        }
    }
    Ok(CommandBody::Fetch { uid, set, items })
}

fn parse_fetch_att(c: &mut Cursor<'_>) -> Parsed<FetchItem> {
    let word = c.fetch_word().to_ascii_uppercase();
    let item = match word.as_slice() {
        b"FLAGS" => FetchItem::Flags,
        b"UID" => FetchItem::Uid,
        b"RFC822.SIZE" => FetchItem::Rfc822Size,
        b"INTERNALDATE" => FetchItem::InternalDate,
        b"RFC822" => FetchItem::Rfc822,
        b"RFC822.HEADER" => FetchItem::Rfc822Header,
        b"RFC822.TEXT" => FetchItem::Rfc822Text,
        b"BODY" | b"BODY.PEEK" if c.peek() == Some(b'[') => {
            let peek = word == b"BODY.PEEK";
            c.pos += 1;
            let name = c.take_while(|b| b != b']').to_ascii_uppercase();
            if !c.eat(b']') {
                return Err("missing ] after section".into());
            }
            let section = match name.as_slice() {
                b"" => Section::Full,
                b"HEADER" => Section::Header,
                b"TEXT" => Section::Text,
                _ => return Err("this body section is not supported yet".into()),
            };
            let partial = if c.eat(b'<') {
                let offset = c.number()?;
                if !c.eat(b'.') {
                    return Err("expected . in partial".into());
                }
                let length = c.number()?;
                if length == 0 {
                    return Err("partial length must not be zero".into());
                }
                if !c.eat(b'>') {
                    return Err("expected > after partial".into());
                }
                Some((offset, length))
            } else {
                None
            };
            FetchItem::Body {
                section,
                peek,
                partial,
            }
        }
        b"" => return Err("expected a fetch item".into()),
        b"ENVELOPE" | b"BODYSTRUCTURE" | b"BODY" => {
            return Err("ENVELOPE and BODYSTRUCTURE are not supported yet".into());
        }
        _ => return Err("unknown fetch item".into()),
    };
    Ok(item)
}

/// RFC 9051 §6.4.6: `STORE sequence-set SP (["+" / "-"] "FLAGS"
/// [".SILENT"]) SP (flag-list / (flag *(SP flag)))`.
fn parse_store(c: &mut Cursor<'_>, uid: bool) -> Parsed<CommandBody> {
    c.space()?;
    let set = c.sequence_set()?;
    c.space()?;
    let mode = if c.eat(b'+') {
        StoreMode::Add
    } else if c.eat(b'-') {
        StoreMode::Remove
    } else {
        StoreMode::Replace
    };
    let item = c.atom()?.to_ascii_uppercase();
    let silent = match item.as_slice() {
        b"FLAGS" => false,
        b"FLAGS.SILENT" => true,
        _ => return Err("expected FLAGS, +FLAGS or -FLAGS".into()),
    };
    c.space()?;
    let mut flags = Vec::new();
    if c.eat(b'(') {
        if !c.eat(b')') {
            loop {
                flags.push(c.flag()?);
                if c.eat(b')') {
                    break;
                }
                c.space()?;
            }
        }
    } else {
        loop {
            flags.push(c.flag()?);
            if c.at_end() {
                break;
            }
            c.space()?;
        }
    }
    Ok(CommandBody::Store {
        uid,
        set,
        mode,
        silent,
        flags,
    })
}

/// RFC 9051 §9 `atom-specials`: `(` `)` `{` SP CTL `%` `*` `"` `\` `]`.
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b)
}

/// `ASTRING-CHAR = ATOM-CHAR / resp-specials`
fn is_astring_char(b: u8) -> bool {
    is_atom_char(b) || b == b']'
}

/// `list-char = ATOM-CHAR / list-wildcards / resp-specials`
fn is_list_char(b: u8) -> bool {
    is_astring_char(b) || b == b'%' || b == b'*'
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a [u8]) -> Self {
        Cursor { input, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn space(&mut self) -> Parsed<()> {
        if self.eat(b' ') {
            Ok(())
        } else if self.at_end() {
            Err("missing arguments".into())
        } else {
            Err("expected a space".into())
        }
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    /// `tag = 1*<any ASTRING-CHAR except "+">`
    fn tag(&mut self) -> Parsed<String> {
        let tag = self.take_while(|b| is_astring_char(b) && b != b'+');
        if tag.is_empty() {
            return Err("missing or invalid tag".into());
        }
        Ok(String::from_utf8_lossy(tag).into_owned())
    }

    fn atom(&mut self) -> Parsed<&'a [u8]> {
        let atom = self.take_while(is_atom_char);
        if atom.is_empty() {
            return Err("expected an atom".into());
        }
        Ok(atom)
    }

    /// A fetch attribute name: stops before `[`, SP and parentheses.
    fn fetch_word(&mut self) -> &'a [u8] {
        self.take_while(|b| is_atom_char(b) && b != b'[')
    }

    /// `number`: 32-bit unsigned (RFC 9051 §9).
    fn number(&mut self) -> Parsed<u32> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err("expected a number".into());
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| "number out of range".into())
    }

    fn nz_number(&mut self) -> Parsed<u32> {
        match self.number()? {
            0 => Err("zero is not a valid message number".into()),
            n => Ok(n),
        }
    }

    fn seq_number(&mut self) -> Parsed<SeqNumber> {
        if self.eat(b'*') {
            Ok(SeqNumber::Star)
        } else {
            Ok(SeqNumber::Value(self.nz_number()?))
        }
    }

    fn sequence_set(&mut self) -> Parsed<SequenceSet> {
        let mut ranges = Vec::new();
        loop {
            let first = self.seq_number()?;
            let last = if self.eat(b':') {
                self.seq_number()?
            } else {
                first
            };
            ranges.push((first, last));
            if !self.eat(b',') {
                break;
            }
        }
        Ok(SequenceSet(ranges))
    }

    /// `quoted = DQUOTE *QUOTED-CHAR DQUOTE`, with `\\` and `\"` escapes;
    /// UTF-8 is allowed (RFC 9051 §4.3).
    fn quoted(&mut self) -> Parsed<Vec<u8>> {
        if !self.eat(b'"') {
            return Err("expected a quoted string".into());
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".into()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b @ (b'\\' | b'"')) => {
                            out.push(b);
                            self.pos += 1;
                        }
                        _ => return Err("invalid escape in quoted string".into()),
                    }
                }
                Some(b'\r' | b'\n' | 0) => {
                    return Err("CR, LF or NUL in quoted string".into());
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    /// `literal = "{" number ["+"] "}" CRLF *CHAR8`; the session has already
    /// placed the octets after the CRLF.
    fn literal(&mut self) -> Parsed<Vec<u8>> {
        if !self.eat(b'{') {
            return Err("expected a literal".into());
        }
        let length = self.number()? as usize;
        self.eat(b'+');
        if !self.eat(b'}') {
            return Err("invalid literal announcement".into());
        }
        if !(self.eat(b'\r') && self.eat(b'\n')) {
            return Err("expected CRLF after literal announcement".into());
        }
        let end = self
            .pos
            .checked_add(length)
            .filter(|&end| end <= self.input.len())
            .ok_or_else(|| "literal shorter than announced".to_owned())?;
        let data = self.input[self.pos..end].to_vec();
        if data.contains(&0) {
            return Err("NUL in literal".into());
        }
        self.pos = end;
        Ok(data)
    }

    fn string(&mut self) -> Parsed<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => Err("expected a string".into()),
        }
    }

    /// `astring = 1*ASTRING-CHAR / string`
    fn astring(&mut self) -> Parsed<Vec<u8>> {
        match self.peek() {
            Some(b'"' | b'{') => self.string(),
            _ => {
                let atom = self.take_while(is_astring_char);
                if atom.is_empty() {
                    return Err("expected a string or atom".into());
                }
                Ok(atom.to_vec())
            }
        }
    }

    fn astring_utf8(&mut self) -> Parsed<String> {
        String::from_utf8(self.astring()?).map_err(|_| "invalid UTF-8".into())
    }

    /// `mailbox = "INBOX" / astring`; INBOX is case-insensitive
    /// (RFC 9051 §5.1).
    fn mailbox(&mut self) -> Parsed<String> {
        let name = self.astring_utf8()?;
        Ok(normalize_mailbox(name))
    }

    /// `list-mailbox = 1*list-char / string`
    fn list_mailbox(&mut self) -> Parsed<String> {
        let raw = match self.peek() {
            Some(b'"' | b'{') => self.string()?,
            _ => {
                let chars = self.take_while(is_list_char);
                if chars.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                chars.to_vec()
            }
        };
        String::from_utf8(raw).map_err(|_| "invalid UTF-8".into())
    }

    /// `flag = "\Answered" / ... / flag-keyword / flag-extension`; both are
    /// an atom, the system ones after a backslash.
    fn flag(&mut self) -> Parsed<String> {
        let backslash = self.eat(b'\\');
        let atom = self.atom()?;
        let name = String::from_utf8_lossy(atom).into_owned();
        if !backslash {
            return Ok(name);
        }
        // System flags are case-insensitive; keep the RFC's spelling.
        let canonical = ["Answered", "Flagged", "Deleted", "Seen", "Draft"]
            .into_iter()
            .find(|f| f.eq_ignore_ascii_case(&name))
            .map(str::to_owned)
            .unwrap_or(name);
        Ok(format!("\\{canonical}"))
    }
}

/// `INBOX` in any case is the inbox (RFC 9051 §5.1); other names are kept.
pub fn normalize_mailbox(name: String) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, ParseError> {
        parse_command(s.as_bytes())
    }

    fn body(s: &str) -> CommandBody {
        parse(s).unwrap().body
    }

    #[test]
    fn simple_commands_are_case_insensitive() {
        let cmd = parse("a1 capability").unwrap();
        assert_eq!(cmd.tag, "a1");
        assert_eq!(cmd.body, CommandBody::Capability);
        assert_eq!(body("x NoOp"), CommandBody::Noop);
        assert_eq!(body("x IDLE"), CommandBody::Idle);
    }

    #[test]
    fn login_with_atoms_quotes_and_escapes() {
        assert_eq!(
            body(r#"a LOGIN alice@example.com "p a\"s\\s""#),
            CommandBody::Login {
                user: "alice@example.com".into(),
                password: r#"p a"s\s"#.into()
            }
        );
    }

    #[test]
    fn login_with_literals() {
        assert_eq!(
            body("a LOGIN {5}\r\nalice {3+}\r\nx y"),
            CommandBody::Login {
                user: "alice".into(),
                password: "x y".into()
            }
        );
    }

    #[test]
    fn literal_shorter_than_announced_is_bad() {
        let err = parse("a LOGIN {10}\r\nalice").unwrap_err();
        assert_eq!(err.tag.as_deref(), Some("a"));
    }

    #[test]
    fn trailing_literal_detection() {
        assert_eq!(
            trailing_literal(b"a LOGIN {5}"),
            Some(LiteralHeader {
                length: 5,
                synchronizing: true
            })
        );
        assert_eq!(
            trailing_literal(b"a LOGIN {12+}"),
            Some(LiteralHeader {
                length: 12,
                synchronizing: false
            })
        );
        assert_eq!(
            trailing_literal(b"a LOGIN {99999999999999999999999}")
                .unwrap()
                .length,
            u64::MAX
        );
        assert_eq!(trailing_literal(b"a LOGIN {}"), None);
        assert_eq!(trailing_literal(b"a LOGIN {x}"), None);
        assert_eq!(trailing_literal(b"a NOOP"), None);
        assert_eq!(trailing_literal(b"}"), None);
    }

    #[test]
    fn sequence_sets() {
        let CommandBody::Fetch { set, .. } = body("a FETCH 2,4:6,9:* FLAGS") else {
            panic!()
        };
        assert_eq!(
            set.0,
            vec![
                (SeqNumber::Value(2), SeqNumber::Value(2)),
                (SeqNumber::Value(4), SeqNumber::Value(6)),
                (SeqNumber::Value(9), SeqNumber::Star),
            ]
        );
        assert!(set.contains(2, 20));
        assert!(!set.contains(3, 20));
        assert!(set.contains(5, 20));
        assert!(set.contains(20, 20));
        // Reversed ranges are the same range; `*` alone is the largest.
        let CommandBody::Fetch { set, .. } = body("a FETCH 6:4 UID") else {
            panic!()
        };
        assert!(set.contains(5, 10));
        let CommandBody::Fetch { set, .. } = body("a FETCH * UID") else {
            panic!()
        };
        assert!(set.contains(7, 7) && !set.contains(6, 7));
    }

    #[test]
    fn bad_sequence_sets() {
        for input in [
            "a FETCH 0 FLAGS",
            "a FETCH 1: FLAGS",
            "a FETCH ,1 FLAGS",
            "a FETCH 1,,2 FLAGS",
            "a FETCH 99999999999 FLAGS",
            "a FETCH x FLAGS",
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(err.tag.as_deref(), Some("a"), "{input}");
        }
    }

    #[test]
    fn fetch_items_and_macros() {
        assert_eq!(
            body(
                "a UID FETCH 1:* (FLAGS UID RFC822.SIZE BODY.PEEK[] BODY[HEADER] body[text]<0.10>)"
            ),
            CommandBody::Fetch {
                uid: true,
                set: SequenceSet(vec![(SeqNumber::Value(1), SeqNumber::Star)]),
                items: vec![
                    FetchItem::Flags,
                    FetchItem::Uid,
                    FetchItem::Rfc822Size,
                    FetchItem::Body {
                        section: Section::Full,
                        peek: true,
                        partial: None
                    },
                    FetchItem::Body {
                        section: Section::Header,
                        peek: false,
                        partial: None
                    },
                    FetchItem::Body {
                        section: Section::Text,
                        peek: false,
                        partial: Some((0, 10))
                    },
                ]
            }
        );
        let CommandBody::Fetch { items, .. } = body("a FETCH 1 FAST") else {
            panic!()
        };
        assert_eq!(items.len(), 3);
        let CommandBody::Fetch { items, .. } = body("a FETCH 1 rfc822") else {
            panic!()
        };
        assert_eq!(items, vec![FetchItem::Rfc822]);
    }

    #[test]
    fn unsupported_fetch_items_are_bad() {
        for input in [
            "a FETCH 1 ENVELOPE",
            "a FETCH 1 (FLAGS BODYSTRUCTURE)",
            "a FETCH 1 BODY[HEADER.FIELDS (From)]",
            "a FETCH 1 (FLAGS",
            "a FETCH 1 ()",
            "a FETCH 1 BODY[",
            "a FETCH 1 FULL",
        ] {
            assert!(parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn store_variants() {
        assert_eq!(
            body(r"a STORE 1:2 +FLAGS.SILENT (\seen \Deleted $Junk)"),
            CommandBody::Store {
                uid: false,
                set: SequenceSet(vec![(SeqNumber::Value(1), SeqNumber::Value(2))]),
                mode: StoreMode::Add,
                silent: true,
                flags: vec!["\\Seen".into(), "\\Deleted".into(), "$Junk".into()],
            }
        );
        let CommandBody::Store {
            mode, flags, uid, ..
        } = body(r"a UID STORE 5 -FLAGS \Flagged")
        else {
            panic!()
        };
        assert_eq!((mode, uid), (StoreMode::Remove, true));
        assert_eq!(flags, vec!["\\Flagged".to_owned()]);
        let CommandBody::Store { flags, .. } = body("a STORE 1 FLAGS ()") else {
            panic!()
        };
        assert!(flags.is_empty());
        assert!(parse("a STORE 1 LABELS (x)").is_err());
    }

    #[test]
    fn list_and_select_arguments() {
        assert_eq!(
            body(r#"a LIST "" *"#),
            CommandBody::List {
                reference: String::new(),
                pattern: "*".into()
            }
        );
        assert_eq!(
            body(r#"a list "" "%""#),
            CommandBody::List {
                reference: String::new(),
                pattern: "%".into()
            }
        );
        assert_eq!(
            body("a SELECT inbox"),
            CommandBody::Select {
                mailbox: "INBOX".into()
            }
        );
        assert_eq!(
            body(r#"a EXAMINE "Sent Items""#),
            CommandBody::Examine {
                mailbox: "Sent Items".into()
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error_with_the_tag_when_known() {
        let err = parse("").unwrap_err();
        assert_eq!(err.tag, None);
        let err = parse("+ NOOP").unwrap_err();
        assert_eq!(err.tag, None);
        let err = parse("a").unwrap_err();
        assert_eq!(err.tag.as_deref(), Some("a"));
        let err = parse("a FROBNICATE").unwrap_err();
        assert_eq!(err.message, "unknown command");
        assert!(parse("a NOOP extra").is_err());
        assert!(parse("a LOGIN alice").is_err());
        assert!(parse("a LOGIN \"unterminated").is_err());
        assert!(parse("a LOGIN \"bad\\escape\" x").is_err());
        assert!(parse("a LOGIN {x}\r\nabc def").is_err());
        assert!(parse("a UID EXPUNGE 1").is_err());
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A tiny deterministic fuzz: every prefix of tricky inputs, and
        // pseudo-random bytes.
        let samples: &[&[u8]] = &[
            b"a FETCH 1:* (BODY.PEEK[HEADER]<0.5> FLAGS)",
            b"a LOGIN {5+}\r\nalice {3}\r\npwd",
            b"a STORE 1 +FLAGS (\\Seen)",
            b"a LIST \"\" \"*\"",
            b"a FETCH 1 BODY[]<4294967295.4294967295>",
        ];
        for sample in samples {
            for end in 0..=sample.len() {
                let _ = parse_command(&sample[..end]);
                let _ = trailing_literal(&sample[..end]);
            }
        }
        let mut state: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut input = b"a ".to_vec();
            for _ in 0..(state % 40) {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let alphabet = b"{}()[]<>*%:,.+\\\"\r\n 0123 FETCH LOGIN";
                input.push(alphabet[(state >> 16) as usize % alphabet.len()]);
            }
            let _ = parse_command(&input);
        }
    }
}
