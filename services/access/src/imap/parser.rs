//! IMAP command parsing without I/O (RFC 9051 §9 / RFC 3501 §9 formal
//! syntax). The session collects one complete command — the first line, and
//! for each literal announced at a line's end the literal's bytes and the
//! following line — and hands the bytes to [`parse_command`]. Bad input is an
//! [`ParseError`] carrying the tag when one was read, never a panic.

use std::fmt;

/// Longest command accepted, literals included (RFC 9051 §4 leaves the limit
/// to the server; RFC 7162 §4 recommends at least 8192 octets per line).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Largest single literal accepted in a command other than APPEND (user
/// names, passwords, mailbox names, search strings).
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
    /// RFC 9051 §6.2.1
    StartTls,
    /// RFC 9051 §6.2.2; `initial` is the SASL-IR initial response (RFC 4959).
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: String,
        password: String,
    },
    /// RFC 5161
    Enable {
        capabilities: Vec<String>,
    },
    /// RFC 2971; the client's parameters are only logged.
    Id {
        parameters: Vec<(String, String)>,
    },
    /// RFC 2342
    Namespace,
    List {
        reference: String,
        patterns: Vec<String>,
        options: ListOptions,
    },
    Lsub {
        reference: String,
        pattern: String,
    },
    Select {
        mailbox: String,
        condstore: bool,
    },
    Examine {
        mailbox: String,
        condstore: bool,
    },
    Create {
        mailbox: String,
    },
    Delete {
        mailbox: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Subscribe {
        mailbox: String,
    },
    Unsubscribe {
        mailbox: String,
    },
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    Append {
        mailbox: String,
        flags: Vec<String>,
        /// The date-time argument, as ms since the epoch.
        date_ms: Option<i64>,
        message: Vec<u8>,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchItem>,
        /// RFC 7162 §3.1.4 CHANGEDSINCE modifier.
        changed_since: Option<u64>,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        /// RFC 7162 §3.1.3 UNCHANGEDSINCE modifier.
        unchanged_since: Option<u64>,
    },
    /// COPY (RFC 9051 §6.4.7) or MOVE (RFC 6851 §3.1).
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
        move_messages: bool,
    },
    Search {
        uid: bool,
        /// RFC 4731 ESEARCH `RETURN (...)` options; `None` for a plain
        /// SEARCH.
        returns: Option<Vec<SearchReturn>>,
        key: SearchKey,
    },
    Expunge,
    /// RFC 4315 §2.1 UID EXPUNGE
    UidExpunge {
        set: SequenceSet,
    },
    /// RFC 9208 §4.2
    GetQuota {
        root: String,
    },
    /// RFC 9208 §4.3
    GetQuotaRoot {
        mailbox: String,
    },
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
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Enable { .. } => "ENABLE",
            CommandBody::Id { .. } => "ID",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::List { .. } => "LIST",
            CommandBody::Lsub { .. } => "LSUB",
            CommandBody::Select { .. } => "SELECT",
            CommandBody::Examine { .. } => "EXAMINE",
            CommandBody::Create { .. } => "CREATE",
            CommandBody::Delete { .. } => "DELETE",
            CommandBody::Rename { .. } => "RENAME",
            CommandBody::Subscribe { .. } => "SUBSCRIBE",
            CommandBody::Unsubscribe { .. } => "UNSUBSCRIBE",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Fetch { uid: false, .. } => "FETCH",
            CommandBody::Fetch { uid: true, .. } => "UID FETCH",
            CommandBody::Store { uid: false, .. } => "STORE",
            CommandBody::Store { uid: true, .. } => "UID STORE",
            CommandBody::Copy {
                uid: false,
                move_messages: false,
                ..
            } => "COPY",
            CommandBody::Copy {
                uid: true,
                move_messages: false,
                ..
            } => "UID COPY",
            CommandBody::Copy {
                uid: false,
                move_messages: true,
                ..
            } => "MOVE",
            CommandBody::Copy {
                uid: true,
                move_messages: true,
                ..
            } => "UID MOVE",
            CommandBody::Search { uid: false, .. } => "SEARCH",
            CommandBody::Search { uid: true, .. } => "UID SEARCH",
            CommandBody::Expunge => "EXPUNGE",
            CommandBody::UidExpunge { .. } => "UID EXPUNGE",
            CommandBody::GetQuota { .. } => "GETQUOTA",
            CommandBody::GetQuotaRoot { .. } => "GETQUOTAROOT",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Check => "CHECK",
            CommandBody::Idle => "IDLE",
        }
    }
}

/// RFC 5258 LIST-EXTENDED selection and return options, and RFC 6154
/// SPECIAL-USE, RFC 5819 LIST-STATUS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Selection `SUBSCRIBED`: only subscribed mailboxes.
    pub subscribed_only: bool,
    /// Selection `SPECIAL-USE`: only mailboxes with a special use.
    pub special_use_only: bool,
    /// Return `SUBSCRIBED`: add `\Subscribed`.
    pub return_subscribed: bool,
    /// Return `SPECIAL-USE`: add the special-use attributes.
    pub return_special_use: bool,
    /// Return `STATUS (...)`: a STATUS response per listed mailbox.
    pub return_status: Vec<StatusItem>,
    /// Any extended syntax was used (selection or return options, or a
    /// pattern list): the reply follows RFC 5258 rules.
    pub extended: bool,
}

/// RFC 9051 §6.3.11 status data items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    Recent,
    HighestModSeq,
}

/// RFC 4731 §3.1 ESEARCH return options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
    /// RFC 5182 SEARCHRES
    Save,
}

/// RFC 9051 §6.4.4 search keys. Dates are days since 1970-01-01.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Deleted,
    Draft,
    Flagged,
    Seen,
    New,
    Old,
    Recent,
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unseen,
    Keyword(String),
    Unkeyword(String),
    Bcc(String),
    Cc(String),
    From(String),
    To(String),
    Subject(String),
    Body(String),
    Text(String),
    Header(String, String),
    Before(i64),
    On(i64),
    Since(i64),
    SentBefore(i64),
    SentOn(i64),
    SentSince(i64),
    Larger(u64),
    Smaller(u64),
    Uid(SequenceSet),
    Sequence(SequenceSet),
    /// RFC 7162 §3.1.5
    ModSeq(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

impl SearchKey {
    /// Whether evaluating the key needs the message's bytes.
    pub fn needs_body(&self) -> bool {
        match self {
            SearchKey::Bcc(_)
            | SearchKey::Cc(_)
            | SearchKey::From(_)
            | SearchKey::To(_)
            | SearchKey::Subject(_)
            | SearchKey::Body(_)
            | SearchKey::Text(_)
            | SearchKey::Header(..)
            | SearchKey::SentBefore(_)
            | SearchKey::SentOn(_)
            | SearchKey::SentSince(_) => true,
            SearchKey::Not(k) => k.needs_body(),
            SearchKey::Or(a, b) => a.needs_body() || b.needs_body(),
            SearchKey::And(keys) => keys.iter().any(SearchKey::needs_body),
            _ => false,
        }
    }

    /// Whether the message content the key needs is only what the mailstore
    /// keeps per message at delivery (decoded From/To/Cc/Bcc/Subject and the
    /// Date): then SEARCH does not read the blobs.
    pub fn header_only(&self) -> bool {
        const STORED: [&str; 5] = ["from", "to", "cc", "bcc", "subject"];
        match self {
            SearchKey::Body(_) | SearchKey::Text(_) => false,
            SearchKey::Header(field, _) => STORED.iter().any(|f| f.eq_ignore_ascii_case(field)),
            SearchKey::Not(k) => k.header_only(),
            SearchKey::Or(a, b) => a.header_only() && b.header_only(),
            SearchKey::And(keys) => keys.iter().all(SearchKey::header_only),
            _ => true,
        }
    }

    /// Whether the key mentions MODSEQ (RFC 7162 §3.1.5: the answer then
    /// carries `(MODSEQ n)`).
    pub fn uses_modseq(&self) -> bool {
        match self {
            SearchKey::ModSeq(_) => true,
            SearchKey::Not(k) => k.uses_modseq(),
            SearchKey::Or(a, b) => a.uses_modseq() || b.uses_modseq(),
            SearchKey::And(keys) => keys.iter().any(SearchKey::uses_modseq),
            _ => false,
        }
    }
}

/// One element of a sequence set: a number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNumber {
    Value(u32),
    Star,
    /// RFC 5182 `$`: the result saved by `SEARCH RETURN (SAVE)`; the session
    /// replaces it before use, and unreplaced it matches nothing.
    Saved,
}

/// RFC 9051 §9 `sequence-set`: ranges may be given in either order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNumber, SeqNumber)>);

impl SequenceSet {
    /// RFC 5182: the set is `$`.
    pub fn is_saved(&self) -> bool {
        self.0
            .iter()
            .any(|&(a, b)| a == SeqNumber::Saved || b == SeqNumber::Saved)
    }

    /// Whether `n` is in the set, `*` standing for `largest`
    /// (RFC 9051 §9: `*` is the largest number in use).
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        let resolve = |s: SeqNumber| match s {
            SeqNumber::Value(v) => v,
            SeqNumber::Star => largest,
            SeqNumber::Saved => 0,
        };
        self.0.iter().any(|&(a, b)| {
            if a == SeqNumber::Saved || b == SeqNumber::Saved {
                return false;
            }
            let (a, b) = (resolve(a), resolve(b));
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            (low..=high).contains(&n)
        })
    }
}

/// What a section names inside its part (RFC 9051 §6.4.5 `section-text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// No text specifier: the whole part (`BODY[]`, `BODY[1.2]`).
    Full,
    Header,
    /// `HEADER.FIELDS (...)` or, with `not`, `HEADER.FIELDS.NOT (...)`.
    HeaderFields {
        not: bool,
        fields: Vec<String>,
    },
    Text,
    /// `MIME`: the MIME header of a numbered part.
    Mime,
}

/// A `BODY[...]` section: a part path (empty for the message) and a text
/// specifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: SectionText,
}

impl Section {
    pub fn full() -> Self {
        Section {
            part: Vec::new(),
            text: SectionText::Full,
        }
    }

    pub fn text(text: SectionText) -> Self {
        Section {
            part: Vec::new(),
            text,
        }
    }

    /// The section as the client should see it echoed back.
    pub fn spec(&self) -> String {
        let mut out: Vec<String> = self.part.iter().map(u32::to_string).collect();
        match &self.text {
            SectionText::Full => {}
            SectionText::Header => out.push("HEADER".into()),
            SectionText::Text => out.push("TEXT".into()),
            SectionText::Mime => out.push("MIME".into()),
            SectionText::HeaderFields { not, fields } => out.push(format!(
                "HEADER.FIELDS{} ({})",
                if *not { ".NOT" } else { "" },
                fields.join(" ")
            )),
        }
        out.join(".")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    Flags,
    Uid,
    Rfc822Size,
    InternalDate,
    Envelope,
    BodyStructure,
    /// `BODY` without a section: BODYSTRUCTURE without extension data.
    BodySimple,
    /// RFC 7162 §3.1.4.1
    ModSeq,
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
    /// RFC 3516 / RFC 9051 `BINARY[part]`: the decoded content.
    Binary {
        part: Vec<u32>,
        peek: bool,
        partial: Option<(u32, u32)>,
    },
    BinarySize {
        part: Vec<u32>,
    },
}

impl FetchItem {
    /// Whether fetching this item sets `\Seen` (RFC 9051 §6.4.5).
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchItem::Rfc822
                | FetchItem::Rfc822Text
                | FetchItem::Body { peek: false, .. }
                | FetchItem::Binary { peek: false, .. }
        )
    }

    /// Whether answering needs the message's bytes.
    pub fn needs_body(&self) -> bool {
        !matches!(
            self,
            FetchItem::Flags
                | FetchItem::Uid
                | FetchItem::Rfc822Size
                | FetchItem::InternalDate
                | FetchItem::ModSeq
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

/// Whether a command line is an APPEND, whose literal is a message and may
/// be far larger than other literals.
pub fn is_append(line: &[u8]) -> bool {
    let mut cursor = Cursor::new(line);
    cursor.tag().is_ok()
        && cursor.space().is_ok()
        && cursor
            .atom()
            .is_ok_and(|verb| verb.eq_ignore_ascii_case(b"APPEND"))
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
        b"NAMESPACE" => CommandBody::Namespace,
        b"STARTTLS" => CommandBody::StartTls,
        b"LOGIN" => {
            c.space()?;
            let user = c.astring_utf8()?;
            c.space()?;
            let password = c.astring_utf8()?;
            CommandBody::Login { user, password }
        }
        b"AUTHENTICATE" => {
            c.space()?;
            let mechanism = String::from_utf8_lossy(c.atom()?).to_ascii_uppercase();
            let initial = if c.eat(b' ') {
                let response = c.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                if response.is_empty() {
                    return Err("invalid initial response".into());
                }
                Some(String::from_utf8_lossy(response).into_owned())
            } else {
                None
            };
            CommandBody::Authenticate { mechanism, initial }
        }
        b"ENABLE" => {
            let mut capabilities = Vec::new();
            while c.eat(b' ') {
                capabilities.push(String::from_utf8_lossy(c.atom()?).to_ascii_uppercase());
            }
            if capabilities.is_empty() {
                return Err("ENABLE needs a capability".into());
            }
            CommandBody::Enable { capabilities }
        }
        b"ID" => {
            c.space()?;
            CommandBody::Id {
                parameters: parse_id_params(c)?,
            }
        }
        b"SELECT" | b"EXAMINE" => {
            c.space()?;
            let mailbox = c.mailbox()?;
            let mut condstore = false;
            if c.eat(b' ') {
                // RFC 4466 §2.1 select parameters; RFC 7162 §3.1.8 CONDSTORE.
                for param in parse_atom_list(c)? {
                    match param.as_str() {
                        "CONDSTORE" => condstore = true,
                        _ => return Err(format!("unknown select parameter {param}")),
                    }
                }
            }
            if verb == b"SELECT" {
                CommandBody::Select { mailbox, condstore }
            } else {
                CommandBody::Examine { mailbox, condstore }
            }
        }
        b"CREATE" => {
            c.space()?;
            CommandBody::Create {
                mailbox: c.mailbox()?,
            }
        }
        b"DELETE" => {
            c.space()?;
            CommandBody::Delete {
                mailbox: c.mailbox()?,
            }
        }
        b"RENAME" => {
            c.space()?;
            let from = c.mailbox()?;
            c.space()?;
            let to = c.mailbox()?;
            CommandBody::Rename { from, to }
        }
        b"SUBSCRIBE" => {
            c.space()?;
            CommandBody::Subscribe {
                mailbox: c.mailbox()?,
            }
        }
        b"UNSUBSCRIBE" => {
            c.space()?;
            CommandBody::Unsubscribe {
                mailbox: c.mailbox()?,
            }
        }
        b"LIST" => parse_list(c)?,
        b"LSUB" => {
            c.space()?;
            let reference = c.mailbox()?;
            c.space()?;
            let pattern = c.list_mailbox()?;
            CommandBody::Lsub { reference, pattern }
        }
        b"STATUS" => {
            c.space()?;
            let mailbox = c.mailbox()?;
            c.space()?;
            CommandBody::Status {
                mailbox,
                items: parse_status_items(c)?,
            }
        }
        b"APPEND" => parse_append(c)?,
        b"GETQUOTA" => {
            c.space()?;
            CommandBody::GetQuota {
                root: c.astring_utf8()?,
            }
        }
        b"GETQUOTAROOT" => {
            c.space()?;
            CommandBody::GetQuotaRoot {
                mailbox: c.mailbox()?,
            }
        }
        b"FETCH" => parse_fetch(c, false)?,
        b"STORE" => parse_store(c, false)?,
        b"COPY" => parse_copy(c, false, false)?,
        b"MOVE" => parse_copy(c, false, true)?,
        b"SEARCH" => parse_search(c, false)?,
        b"UID" => {
            c.space()?;
            let sub = c.atom()?.to_ascii_uppercase();
            match sub.as_slice() {
                b"FETCH" => parse_fetch(c, true)?,
                b"STORE" => parse_store(c, true)?,
                b"COPY" => parse_copy(c, true, false)?,
                b"MOVE" => parse_copy(c, true, true)?,
                b"SEARCH" => parse_search(c, true)?,
                b"EXPUNGE" => {
                    c.space()?;
                    CommandBody::UidExpunge {
                        set: c.sequence_set()?,
                    }
                }
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

/// `"(" atom *(SP atom) ")"`, uppercased.
fn parse_atom_list(c: &mut Cursor<'_>) -> Parsed<Vec<String>> {
    if !c.eat(b'(') {
        return Err("expected (".into());
    }
    let mut out = Vec::new();
    if c.eat(b')') {
        return Ok(out);
    }
    loop {
        out.push(String::from_utf8_lossy(c.atom()?).to_ascii_uppercase());
        if c.eat(b')') {
            return Ok(out);
        }
        c.space()?;
    }
}

/// RFC 2971: `id_params_list ::= "(" #(string SPACE nstring) ")" / nil`
fn parse_id_params(c: &mut Cursor<'_>) -> Parsed<Vec<(String, String)>> {
    if c.eat_word(b"NIL") {
        return Ok(Vec::new());
    }
    if !c.eat(b'(') {
        return Err("expected ( or NIL".into());
    }
    let mut out = Vec::new();
    if c.eat(b')') {
        return Ok(out);
    }
    loop {
        let key = String::from_utf8_lossy(&c.string()?).into_owned();
        c.space()?;
        let value = if c.eat_word(b"NIL") {
            String::new()
        } else {
            String::from_utf8_lossy(&c.string()?).into_owned()
        };
        out.push((key, value));
        if out.len() > 30 {
            return Err("too many ID parameters".into());
        }
        if c.eat(b')') {
            return Ok(out);
        }
        c.space()?;
    }
}

/// RFC 5258 §3: `LIST [SP list-select-opts] SP mailbox SP mbox-or-pat
/// [SP list-return-opts]`.
fn parse_list(c: &mut Cursor<'_>) -> Parsed<CommandBody> {
    c.space()?;
    let mut options = ListOptions::default();
    if c.peek() == Some(b'(') {
        options.extended = true;
        for option in parse_atom_list(c)? {
            match option.as_str() {
                "SUBSCRIBED" => {
                    options.subscribed_only = true;
                    options.return_subscribed = true;
                }
                "SPECIAL-USE" => {
                    options.special_use_only = true;
                    options.return_special_use = true;
                }
                // We have no remote mailboxes, and RECURSIVEMATCH only
                // changes which CHILDINFO is reported.
                "REMOTE" | "RECURSIVEMATCH" => {}
                _ => return Err(format!("unknown LIST selection option {option}")),
            }
        }
        c.space()?;
    }
    let reference = c.mailbox()?;
    c.space()?;
    let mut patterns = Vec::new();
    if c.eat(b'(') {
        options.extended = true;
        loop {
            patterns.push(c.list_mailbox()?);
            if c.eat(b')') {
                break;
            }
            c.space()?;
        }
    } else {
        patterns.push(c.list_mailbox()?);
    }
    if c.eat(b' ') {
        options.extended = true;
        if !c.eat_word(b"RETURN") {
            return Err("expected RETURN".into());
        }
        c.space()?;
        if !c.eat(b'(') {
            return Err("expected ( after RETURN".into());
        }
        if !c.eat(b')') {
            loop {
                let option = c.atom()?.to_ascii_uppercase();
                match option.as_slice() {
                    b"SUBSCRIBED" => options.return_subscribed = true,
                    b"SPECIAL-USE" => options.return_special_use = true,
                    // Always sent (\HasChildren / \HasNoChildren).
                    b"CHILDREN" => {}
                    b"STATUS" => {
                        c.space()?;
                        options.return_status = parse_status_items(c)?;
                    }
                    _ => return Err("unknown LIST return option".into()),
                }
                if c.eat(b')') {
                    break;
                }
                c.space()?;
            }
        }
    }
    Ok(CommandBody::List {
        reference,
        patterns,
        options,
    })
}

/// `"(" status-att *(SP status-att) ")"` (RFC 9051 §6.3.11).
fn parse_status_items(c: &mut Cursor<'_>) -> Parsed<Vec<StatusItem>> {
    let names = parse_atom_list(c)?;
    if names.is_empty() {
        return Err("STATUS needs at least one item".into());
    }
    names
        .iter()
        .map(|name| {
            Ok(match name.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "RECENT" => StatusItem::Recent,
                "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                _ => return Err(format!("unknown status item {name}")),
            })
        })
        .collect()
}

/// RFC 9051 §6.3.12: `APPEND mailbox [SP flag-list] [SP date-time] SP
/// literal`.
fn parse_append(c: &mut Cursor<'_>) -> Parsed<CommandBody> {
    c.space()?;
    let mailbox = c.mailbox()?;
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
        c.space()?;
    }
    let mut date_ms = None;
    if c.peek() == Some(b'"') {
        let raw = c.quoted()?;
        date_ms = Some(parse_date_time(&raw).ok_or("invalid date-time")?);
        c.space()?;
    }
    // RFC 3516 §4.2 (BINARY): the message may be a literal8, `~{n}`.
    c.eat(b'~');
    let message = c.literal_raw()?;
    Ok(CommandBody::Append {
        mailbox,
        flags,
        date_ms,
        message,
    })
}

const MONTHS: [&[u8]; 12] = [
    b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC",
];

/// RFC 9051 §9 `date-text`: `d-Mon-yyyy`, as days since 1970-01-01.
pub fn parse_date(raw: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    let mut parts = text.split('-');
    let day: i64 = parts.next()?.trim().parse().ok()?;
    let month = parts.next()?.to_ascii_uppercase();
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=31).contains(&day) || !(1..=9999).contains(&year) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month.as_bytes())? as i64 + 1;
    Some(days_from_civil(year, month, day))
}

/// RFC 9051 §9 `date-time`: `dd-Mon-yyyy hh:mm:ss +zzzz` (day may be
/// space-padded), as ms since the epoch.
pub fn parse_date_time(raw: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(raw).ok()?.trim_start();
    let (date, rest) = text.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    let days = parse_date(date.as_bytes())?;
    let mut hms = time.split(':').map(|v| v.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if h > 23 || m > 59 || s > 60 || hms.next().is_some() {
        return None;
    }
    let zone = zone.as_bytes();
    if zone.len() != 5 || !matches!(zone[0], b'+' | b'-') {
        return None;
    }
    let digits: i64 = std::str::from_utf8(&zone[1..]).ok()?.parse().ok()?;
    let offset = (digits / 100 * 60 + digits % 100) * 60;
    let offset = if zone[0] == b'-' { -offset } else { offset };
    let secs = days * 86_400 + h * 3600 + m * 60 + s - offset;
    Some(secs * 1000)
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// RFC 9051 §6.4.7 `COPY sequence-set SP mailbox`, RFC 6851 MOVE.
fn parse_copy(c: &mut Cursor<'_>, uid: bool, move_messages: bool) -> Parsed<CommandBody> {
    c.space()?;
    let set = c.sequence_set()?;
    c.space()?;
    let mailbox = c.mailbox()?;
    Ok(CommandBody::Copy {
        uid,
        set,
        mailbox,
        move_messages,
    })
}

/// RFC 9051 §6.4.4 / RFC 4731: `SEARCH [SP "RETURN" SP "(" ... ")"]
/// [SP "CHARSET" SP charset] 1*(SP search-key)`.
fn parse_search(c: &mut Cursor<'_>, uid: bool) -> Parsed<CommandBody> {
    c.space()?;
    let mut returns = None;
    if c.eat_word(b"RETURN") {
        c.space()?;
        let mut options = Vec::new();
        for option in parse_atom_list(c)? {
            options.push(match option.as_str() {
                "MIN" => SearchReturn::Min,
                "MAX" => SearchReturn::Max,
                "ALL" => SearchReturn::All,
                "COUNT" => SearchReturn::Count,
                "SAVE" => SearchReturn::Save,
                _ => return Err(format!("unknown search return option {option}")),
            });
        }
        // RFC 4731 §3.1: an empty list means ALL.
        if options.is_empty() {
            options.push(SearchReturn::All);
        }
        returns = Some(options);
        c.space()?;
    }
    if c.eat_word(b"CHARSET") {
        c.space()?;
        let charset = c.astring()?;
        if !(charset.eq_ignore_ascii_case(b"UTF-8") || charset.eq_ignore_ascii_case(b"US-ASCII")) {
            return Err("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset".into());
        }
        c.space()?;
    }
    let mut keys = vec![parse_search_key(c, 0)?];
    while c.eat(b' ') {
        keys.push(parse_search_key(c, 0)?);
    }
    let key = if keys.len() == 1 {
        keys.remove(0)
    } else {
        SearchKey::And(keys)
    };
    Ok(CommandBody::Search { uid, returns, key })
}

/// Nesting bound for NOT/OR/parentheses: no stack overflow on hostile input.
const MAX_SEARCH_DEPTH: usize = 32;

fn parse_search_key(c: &mut Cursor<'_>, depth: usize) -> Parsed<SearchKey> {
    if depth > MAX_SEARCH_DEPTH {
        return Err("search keys nested too deeply".into());
    }
    if c.eat(b'(') {
        let mut keys = vec![parse_search_key(c, depth + 1)?];
        while c.eat(b' ') {
            keys.push(parse_search_key(c, depth + 1)?);
        }
        if !c.eat(b')') {
            return Err("expected ) in search".into());
        }
        return Ok(if keys.len() == 1 {
            keys.remove(0)
        } else {
            SearchKey::And(keys)
        });
    }
    if matches!(c.peek(), Some(b'0'..=b'9' | b'*' | b'$')) {
        return Ok(SearchKey::Sequence(c.sequence_set()?));
    }
    let word = c.atom()?.to_ascii_uppercase();
    let arg = |c: &mut Cursor<'_>| -> Parsed<String> {
        c.space()?;
        c.astring_utf8()
    };
    let key = match word.as_slice() {
        b"ALL" => SearchKey::All,
        b"ANSWERED" => SearchKey::Answered,
        b"DELETED" => SearchKey::Deleted,
        b"DRAFT" => SearchKey::Draft,
        b"FLAGGED" => SearchKey::Flagged,
        b"SEEN" => SearchKey::Seen,
        b"NEW" => SearchKey::New,
        b"OLD" => SearchKey::Old,
        b"RECENT" => SearchKey::Recent,
        b"UNANSWERED" => SearchKey::Unanswered,
        b"UNDELETED" => SearchKey::Undeleted,
        b"UNDRAFT" => SearchKey::Undraft,
        b"UNFLAGGED" => SearchKey::Unflagged,
        b"UNSEEN" => SearchKey::Unseen,
        b"KEYWORD" => SearchKey::Keyword(arg(c)?),
        b"UNKEYWORD" => SearchKey::Unkeyword(arg(c)?),
        b"BCC" => SearchKey::Bcc(arg(c)?),
        b"CC" => SearchKey::Cc(arg(c)?),
        b"FROM" => SearchKey::From(arg(c)?),
        b"TO" => SearchKey::To(arg(c)?),
        b"SUBJECT" => SearchKey::Subject(arg(c)?),
        b"BODY" => SearchKey::Body(arg(c)?),
        b"TEXT" => SearchKey::Text(arg(c)?),
        b"HEADER" => {
            let field = arg(c)?;
            SearchKey::Header(field, arg(c)?)
        }
        b"BEFORE" | b"ON" | b"SINCE" | b"SENTBEFORE" | b"SENTON" | b"SENTSINCE" => {
            c.space()?;
            let raw = c.astring()?;
            let day = parse_date(&raw).ok_or("invalid date")?;
            match word.as_slice() {
                b"BEFORE" => SearchKey::Before(day),
                b"ON" => SearchKey::On(day),
                b"SINCE" => SearchKey::Since(day),
                b"SENTBEFORE" => SearchKey::SentBefore(day),
                b"SENTON" => SearchKey::SentOn(day),
                _ => SearchKey::SentSince(day),
            }
        }
        b"LARGER" => {
            c.space()?;
            SearchKey::Larger(c.number64()?)
        }
        b"SMALLER" => {
            c.space()?;
            SearchKey::Smaller(c.number64()?)
        }
        b"UID" => {
            c.space()?;
            SearchKey::Uid(c.sequence_set()?)
        }
        b"MODSEQ" => {
            c.space()?;
            // RFC 7162 §3.1.5: an optional entry name and type come first.
            if c.peek() == Some(b'"') {
                c.quoted()?;
                c.space()?;
                c.atom()?;
                c.space()?;
            }
            SearchKey::ModSeq(c.number64()?)
        }
        b"NOT" => {
            c.space()?;
            SearchKey::Not(Box::new(parse_search_key(c, depth + 1)?))
        }
        b"OR" => {
            c.space()?;
            let a = parse_search_key(c, depth + 1)?;
            c.space()?;
            let b = parse_search_key(c, depth + 1)?;
            SearchKey::Or(Box::new(a), Box::new(b))
        }
        _ => return Err("unknown search key".into()),
    };
    Ok(key)
}

/// RFC 9051 §6.4.5: `FETCH sequence-set SP ("ALL" / "FULL" / "FAST" /
/// fetch-att / "(" fetch-att *(SP fetch-att) ")") [SP fetch-modifiers]`.
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
        let fast = [
            FetchItem::Flags,
            FetchItem::InternalDate,
            FetchItem::Rfc822Size,
        ];
        match word.as_slice() {
            b"FAST" => items.extend(fast),
            b"ALL" => {
                items.extend(fast);
                items.push(FetchItem::Envelope);
            }
            b"FULL" => {
                items.extend(fast);
                items.extend([FetchItem::Envelope, FetchItem::BodySimple]);
            }
            _ => {
                c.pos = save;
                items.push(parse_fetch_att(c)?);
            }
        }
    }
    let mut changed_since = None;
    if c.eat(b' ') {
        // RFC 7162 §3.1.4: `(CHANGEDSINCE mod-sequence-value)`.
        if !c.eat(b'(') || !c.eat_word(b"CHANGEDSINCE") {
            return Err("expected (CHANGEDSINCE n)".into());
        }
        c.space()?;
        changed_since = Some(c.number64()?);
        if !c.eat(b')') {
            return Err("expected ) after CHANGEDSINCE".into());
        }
        if !items.contains(&FetchItem::ModSeq) {
            items.push(FetchItem::ModSeq);
        }
    }
    Ok(CommandBody::Fetch {
        uid,
        set,
        items,
        changed_since,
    })
}

/// `<offset.length>` after a section.
fn parse_partial(c: &mut Cursor<'_>) -> Parsed<Option<(u32, u32)>> {
    if !c.eat(b'<') {
        return Ok(None);
    }
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
    Ok(Some((offset, length)))
}

/// `section-part = nz-number *("." nz-number)`, as far as it goes.
fn parse_part_path(c: &mut Cursor<'_>) -> Parsed<Vec<u32>> {
    let mut part = Vec::new();
    while matches!(c.peek(), Some(b'1'..=b'9')) {
        part.push(c.nz_number()?);
        if part.len() > 32 {
            return Err("section nested too deeply".into());
        }
        if !c.eat(b'.') {
            break;
        }
    }
    Ok(part)
}

/// RFC 9051 §9 `section-spec` between the brackets.
fn parse_section(c: &mut Cursor<'_>) -> Parsed<Section> {
    let part = parse_part_path(c)?;
    let ends_with_dot = c.input.get(c.pos.wrapping_sub(1)) == Some(&b'.') && !part.is_empty();
    if c.peek() == Some(b']') {
        if ends_with_dot {
            return Err("section ends with a dot".into());
        }
        return Ok(Section {
            part,
            text: SectionText::Full,
        });
    }
    if !part.is_empty() && !ends_with_dot {
        return Err("invalid section".into());
    }
    let word = c
        .take_while(|b| b.is_ascii_alphanumeric() || b == b'.')
        .to_ascii_uppercase();
    let text = match word.as_slice() {
        b"HEADER" => SectionText::Header,
        b"TEXT" => SectionText::Text,
        b"MIME" if !part.is_empty() => SectionText::Mime,
        b"HEADER.FIELDS" | b"HEADER.FIELDS.NOT" => {
            c.space()?;
            if !c.eat(b'(') {
                return Err("expected ( after HEADER.FIELDS".into());
            }
            let mut fields = Vec::new();
            loop {
                fields.push(c.astring_utf8()?.to_ascii_lowercase());
                if c.eat(b')') {
                    break;
                }
                c.space()?;
            }
            SectionText::HeaderFields {
                not: word == b"HEADER.FIELDS.NOT",
                fields,
            }
        }
        _ => return Err("invalid section".into()),
    };
    Ok(Section { part, text })
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
        b"ENVELOPE" => FetchItem::Envelope,
        b"BODYSTRUCTURE" => FetchItem::BodyStructure,
        b"MODSEQ" => FetchItem::ModSeq,
        b"BODY" | b"BODY.PEEK" if c.peek() == Some(b'[') => {
            let peek = word == b"BODY.PEEK";
            c.pos += 1;
            let section = parse_section(c)?;
            if !c.eat(b']') {
                return Err("missing ] after section".into());
            }
            FetchItem::Body {
                section,
                peek,
                partial: parse_partial(c)?,
            }
        }
        b"BODY" => FetchItem::BodySimple,
        b"BINARY" | b"BINARY.PEEK" | b"BINARY.SIZE" if c.peek() == Some(b'[') => {
            c.pos += 1;
            let part = parse_part_path(c)?;
            if !c.eat(b']') {
                return Err("missing ] after binary section".into());
            }
            if word == b"BINARY.SIZE" {
                FetchItem::BinarySize { part }
            } else {
                FetchItem::Binary {
                    part,
                    peek: word == b"BINARY.PEEK",
                    partial: parse_partial(c)?,
                }
            }
        }
        b"" => return Err("expected a fetch item".into()),
        _ => return Err("unknown fetch item".into()),
    };
    Ok(item)
}

/// RFC 9051 §6.4.6: `STORE sequence-set [SP "(UNCHANGEDSINCE" SP n ")"] SP
/// (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))`.
fn parse_store(c: &mut Cursor<'_>, uid: bool) -> Parsed<CommandBody> {
    c.space()?;
    let set = c.sequence_set()?;
    c.space()?;
    let mut unchanged_since = None;
    if c.eat(b'(') {
        // RFC 7162 §3.1.3
        if !c.eat_word(b"UNCHANGEDSINCE") {
            return Err("expected UNCHANGEDSINCE".into());
        }
        c.space()?;
        unchanged_since = Some(c.number64()?);
        if !c.eat(b')') {
            return Err("expected ) after UNCHANGEDSINCE".into());
        }
        c.space()?;
    }
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
        unchanged_since,
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

    /// A word (case-insensitive) followed by a delimiter or the end.
    fn eat_word(&mut self, word: &[u8]) -> bool {
        let end = self.pos + word.len();
        let matches = self
            .input
            .get(self.pos..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(word));
        let delimited = self
            .input
            .get(end)
            .is_none_or(|&b| matches!(b, b' ' | b'(' | b')'));
        if matches && delimited {
            self.pos = end;
        }
        matches && delimited
    }

    /// `mod-sequence-value` and other 63-bit numbers (RFC 7162 §7).
    fn number64(&mut self) -> Parsed<u64> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() {
            return Err("expected a number".into());
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| "number out of range".into())
    }

    /// A literal's raw octets, NUL included (APPEND's message).
    fn literal_raw(&mut self) -> Parsed<Vec<u8>> {
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
        self.pos = end;
        Ok(data)
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
        if self.eat(b'$') {
            return Ok(SeqNumber::Saved);
        }
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
                        section: Section::full(),
                        peek: true,
                        partial: None
                    },
                    FetchItem::Body {
                        section: Section::text(SectionText::Header),
                        peek: false,
                        partial: None
                    },
                    FetchItem::Body {
                        section: Section::text(SectionText::Text),
                        peek: false,
                        partial: Some((0, 10))
                    },
                ],
                changed_since: None,
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
    fn bad_fetch_items() {
        for input in [
            "a FETCH 1 (FLAGS",
            "a FETCH 1 ()",
            "a FETCH 1 BODY[",
            "a FETCH 1 BODY[1.]",
            "a FETCH 1 BODY[MIME]",
            "a FETCH 1 BODY[HEADER.FIELDS ()]",
            "a FETCH 1 FROB",
            "a FETCH 1 FLAGS (CHANGEDSINCE x)",
        ] {
            assert!(parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn append_forms() {
        assert_eq!(
            body("a APPEND Drafts (\\Draft) \"07-Feb-2024 10:00:00 +0100\" {3+}\r\nx\0y"),
            CommandBody::Append {
                mailbox: "Drafts".into(),
                flags: vec!["\\Draft".into()],
                date_ms: Some(1_707_296_400_000),
                message: b"x\0y".to_vec(),
            }
        );
        let CommandBody::Append { message, .. } = body("a APPEND INBOX ~{2}\r\nhi") else {
            panic!()
        };
        assert_eq!(message, b"hi");
        assert!(parse("a APPEND INBOX \"32-Feb-2024 10:00:00 +0100\" {1}\r\nx").is_err());
        assert!(parse("a APPEND INBOX").is_err());
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
                unchanged_since: None,
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
                patterns: vec!["*".into()],
                options: ListOptions::default(),
            }
        );
        assert_eq!(
            body(r#"a list "" "%""#),
            CommandBody::List {
                reference: String::new(),
                patterns: vec!["%".into()],
                options: ListOptions::default(),
            }
        );
        assert_eq!(
            body("a SELECT inbox"),
            CommandBody::Select {
                mailbox: "INBOX".into(),
                condstore: false,
            }
        );
        assert_eq!(
            body(r#"a EXAMINE "Sent Items" (CONDSTORE)"#),
            CommandBody::Examine {
                mailbox: "Sent Items".into(),
                condstore: true,
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
        assert!(parse("a UID EXPUNGE").is_err());
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
