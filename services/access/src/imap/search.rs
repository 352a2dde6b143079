//! SEARCH evaluation (RFC 9051 §6.4.4): a search key against one message's
//! metadata and, for header and body keys, its parsed content.

use super::mime::Searchable;
use super::parser::SearchKey;
use crate::store::MessageInfo;

/// What a key is evaluated against.
pub struct Candidate<'a> {
    pub seq: u32,
    /// The largest sequence number and UID of the mailbox, for `*`.
    pub max_seq: u32,
    pub max_uid: u32,
    pub info: &'a MessageInfo,
    /// Present when the key needs the message content.
    pub content: Option<&'a Searchable>,
}

fn has(info: &MessageInfo, flag: &str) -> bool {
    info.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
}

fn internal_day(info: &MessageInfo) -> i64 {
    info.internal_date_ms.div_euclid(86_400_000)
}

/// Whether the message matches `key`.
pub fn matches(key: &SearchKey, m: &Candidate<'_>) -> bool {
    let info = m.info;
    let header =
        |field: &str, needle: &str| m.content.is_some_and(|c| c.header_contains(field, needle));
    let sent = |f: &dyn Fn(i64) -> bool| m.content.and_then(|c| c.sent_date_days).is_some_and(f);
    match key {
        SearchKey::All => true,
        SearchKey::Answered => has(info, "\\Answered"),
        SearchKey::Deleted => has(info, "\\Deleted"),
        SearchKey::Draft => has(info, "\\Draft"),
        SearchKey::Flagged => has(info, "\\Flagged"),
        SearchKey::Seen => has(info, "\\Seen"),
        // No \Recent in this server (RFC 9051 dropped it): NEW is unseen
        // and recent, so nothing; OLD is everything.
        SearchKey::Recent | SearchKey::New => false,
        SearchKey::Old => true,
        SearchKey::Unanswered => !has(info, "\\Answered"),
        SearchKey::Undeleted => !has(info, "\\Deleted"),
        SearchKey::Undraft => !has(info, "\\Draft"),
        SearchKey::Unflagged => !has(info, "\\Flagged"),
        SearchKey::Unseen => !has(info, "\\Seen"),
        SearchKey::Keyword(k) => has(info, k),
        SearchKey::Unkeyword(k) => !has(info, k),
        SearchKey::Bcc(s) => header("bcc", s),
        SearchKey::Cc(s) => header("cc", s),
        SearchKey::From(s) => header("from", s),
        SearchKey::To(s) => header("to", s),
        SearchKey::Subject(s) => header("subject", s),
        SearchKey::Header(field, s) => header(field, s),
        SearchKey::Body(s) => m.content.is_some_and(|c| c.body_contains(s)),
        SearchKey::Text(s) => m.content.is_some_and(|c| c.text_contains(s)),
        SearchKey::Before(day) => internal_day(info) < *day,
        SearchKey::On(day) => internal_day(info) == *day,
        SearchKey::Since(day) => internal_day(info) >= *day,
        SearchKey::SentBefore(day) => sent(&|d| d < *day),
        SearchKey::SentOn(day) => sent(&|d| d == *day),
        SearchKey::SentSince(day) => sent(&|d| d >= *day),
        SearchKey::Larger(n) => info.size > *n,
        SearchKey::Smaller(n) => info.size < *n,
        SearchKey::Uid(set) => set.contains(info.uid, m.max_uid),
        SearchKey::Sequence(set) => set.contains(m.seq, m.max_seq),
        SearchKey::ModSeq(n) => info.modseq >= *n,
        SearchKey::Not(k) => !matches(k, m),
        SearchKey::Or(a, b) => matches(a, m) || matches(b, m),
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::parser::{SeqNumber, SequenceSet, parse_date};

    fn info(uid: u32, flags: &[&str], size: u64) -> MessageInfo {
        MessageInfo {
            uid,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            size,
            internal_date_ms: 1_709_211_909_000, // 2024-02-29
            modseq: u64::from(uid) * 10,
            search_header: String::new(),
        }
    }

    fn eval(key: &SearchKey, info: &MessageInfo, content: Option<&Searchable>) -> bool {
        matches(
            key,
            &Candidate {
                seq: 1,
                max_seq: 3,
                max_uid: 30,
                info,
                content,
            },
        )
    }

    #[test]
    fn flags_sizes_dates_and_logic() {
        let seen = info(10, &["\\Seen", "$Work"], 500);
        assert!(eval(&SearchKey::Seen, &seen, None));
        assert!(!eval(&SearchKey::Unseen, &seen, None));
        assert!(eval(&SearchKey::Keyword("$work".into()), &seen, None));
        assert!(eval(&SearchKey::Larger(499), &seen, None));
        assert!(!eval(&SearchKey::Smaller(500), &seen, None));
        let day = parse_date(b"29-Feb-2024").unwrap();
        assert!(eval(&SearchKey::On(day), &seen, None));
        assert!(eval(&SearchKey::Since(day), &seen, None));
        assert!(!eval(&SearchKey::Before(day), &seen, None));
        let uid_star = SearchKey::Uid(SequenceSet(vec![(SeqNumber::Value(5), SeqNumber::Star)]));
        assert!(eval(&uid_star, &seen, None));
        let either = SearchKey::Or(
            Box::new(SearchKey::Deleted),
            Box::new(SearchKey::Not(Box::new(SearchKey::Flagged))),
        );
        assert!(eval(&either, &seen, None));
        assert!(eval(&SearchKey::ModSeq(100), &seen, None));
        assert!(!eval(&SearchKey::ModSeq(101), &seen, None));
    }

    #[test]
    fn which_keys_the_stored_header_answers() {
        use crate::imap::parser::parse_command;
        let key = |text: &str| match parse_command(format!("a SEARCH {text}").as_bytes())
            .unwrap()
            .body
        {
            crate::imap::parser::CommandBody::Search { key, .. } => key,
            _ => unreachable!(),
        };
        assert!(key("FROM x SUBJECT y SENTSINCE 1-Jan-2024 UNSEEN").header_only());
        assert!(key("OR HEADER Cc a NOT TO b").header_only());
        assert!(!key("BODY x").header_only());
        assert!(!key("OR FROM a TEXT b").header_only());
        assert!(!key("HEADER X-Spam yes").header_only());
    }

    #[test]
    fn headers_and_body() {
        let raw = b"From: Bob <bob@example.org>\r\nSubject: Quarterly report\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\nNumbers inside.\r\n";
        let content = Searchable::new(raw);
        let m = info(1, &[], raw.len() as u64);
        assert!(eval(&SearchKey::From("bob@".into()), &m, Some(&content)));
        assert!(eval(
            &SearchKey::Subject("QUARTERLY".into()),
            &m,
            Some(&content)
        ));
        assert!(eval(&SearchKey::Body("numbers".into()), &m, Some(&content)));
        assert!(!eval(&SearchKey::Body("report".into()), &m, Some(&content)));
        assert!(eval(&SearchKey::Text("report".into()), &m, Some(&content)));
        assert!(!eval(
            &SearchKey::Header("X-Missing".into(), String::new()),
            &m,
            Some(&content)
        ));
        let jan2 = parse_date(b"2-Jan-2024").unwrap();
        assert!(eval(&SearchKey::SentOn(jan2), &m, Some(&content)));
    }
}
