//! Pure normalisation of what clients send: addresses, domain names, mailbox
//! names and IMAP flags. No I/O, so every rule is unit-tested here.

use super::StoreError;

/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
const MAX_DOMAIN: usize = 255;

/// The mailboxes every new account gets, with their RFC 6154 SPECIAL-USE
/// attribute (empty for INBOX, which needs none).
pub const DEFAULT_MAILBOXES: [(&str, &str); 6] = [
    ("INBOX", ""),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
];

/// RFC 3501 §2.3.2: the system flags a client may set (`\Recent` is
/// session state and never stored).
const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen"];

pub const SEEN: &str = "\\Seen";
pub const DELETED: &str = "\\Deleted";

/// A domain name, lowercased. Only LDH labels: internationalised names must
/// arrive as A-labels (`xn--...`).
pub fn domain(raw: &str) -> Result<String, StoreError> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let invalid = || StoreError::Invalid(format!("invalid domain name {raw:?}"));
    if name.is_empty() || name.len() > MAX_DOMAIN {
        return Err(invalid());
    }
    for label in name.split('.') {
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !ldh
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(invalid());
        }
    }
    Ok(name)
}

/// An address as `(address, domain)`, both lowercased. The local part is
/// compared case-insensitively for now (RFC 5321 §2.4 allows a server to),
/// so it is stored lowercased too.
pub fn address(raw: &str) -> Result<(String, String), StoreError> {
    let invalid = || StoreError::Invalid(format!("invalid address {raw:?}"));
    let trimmed = raw.trim();
    let (local, domain_part) = trimmed.rsplit_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= MAX_LOCAL_PART
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>()[]\\,;:@\"".contains(&b))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err(invalid());
    }
    let domain = domain(domain_part).map_err(|_| invalid())?;
    Ok((format!("{}@{domain}", local.to_ascii_lowercase()), domain))
}

/// A mailbox name as stored: `INBOX` is case-insensitive (RFC 3501 §5.1),
/// every other name is taken as given. Empty means INBOX.
pub fn mailbox(raw: &str) -> Result<String, StoreError> {
    if raw.is_empty() || raw.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".into());
    }
    if raw.len() > 255 || raw.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!("invalid mailbox name {raw:?}")));
    }
    Ok(raw.to_owned())
}

/// A name a client may create or rename to (RFC 9051 §5.1): a valid
/// mailbox name without empty hierarchy levels (`a//b`, `/a`, `a/`).
pub fn new_mailbox(raw: &str) -> Result<String, StoreError> {
    let name = mailbox(raw)?;
    if name.split('/').any(str::is_empty) {
        return Err(StoreError::Invalid(format!("invalid mailbox name {raw:?}")));
    }
    Ok(name)
}

/// The superior names of a hierarchical name, outermost first:
/// `a/b/c` has `a` and `a/b`.
pub fn parents(name: &str) -> Vec<String> {
    name.match_indices('/')
        .map(|(i, _)| name[..i].to_owned())
        .collect()
}

/// Checks and canonicalises flags: system flags get their RFC spelling,
/// keywords must be IMAP atoms; the result is sorted and free of duplicates.
pub fn flags(raw: &[String]) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::with_capacity(raw.len());
    for flag in raw {
        if let Some(system) = SYSTEM_FLAGS.iter().find(|f| f.eq_ignore_ascii_case(flag)) {
            out.push((*system).to_owned());
        } else if flag.eq_ignore_ascii_case("\\Recent") {
            continue;
        } else if is_keyword(flag) {
            out.push(flag.clone());
        } else {
            return Err(StoreError::Invalid(format!("invalid flag {flag:?}")));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// RFC 3501 §9: `flag-keyword = atom`; atom-specials are excluded.
fn is_keyword(flag: &str) -> bool {
    !flag.is_empty()
        && flag.len() <= 255
        && flag
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

/// Flags as stored: space-separated in canonical order.
pub fn join_flags(flags: &[String]) -> String {
    flags.join(" ")
}

pub fn split_flags(stored: &str) -> Vec<String> {
    stored.split_whitespace().map(str::to_owned).collect()
}

/// How StoreFlags combines the requested flags with the current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagMode {
    Replace,
    Add,
    Remove,
}

/// The flag set after a STORE; both inputs canonical, so is the output.
pub fn apply_flags(current: &[String], mode: FlagMode, requested: &[String]) -> Vec<String> {
    let mut out: Vec<String> = match mode {
        FlagMode::Replace => requested.to_vec(),
        FlagMode::Add => current.iter().chain(requested).cloned().collect(),
        FlagMode::Remove => current
            .iter()
            .filter(|f| !requested.contains(f))
            .cloned()
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lowercased_and_checked() {
        assert_eq!(
            address(" Bob.Smith@Example.COM ").unwrap(),
            ("bob.smith@example.com".into(), "example.com".into())
        );
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@",
            "bo b@example.com",
            "bob@exa_mple.com",
            "bob@-example.com",
            "<bob@example.com>",
            ".bob@example.com",
            "bob..x@example.com",
        ] {
            assert!(address(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        assert!(address(&long).is_err());
    }

    #[test]
    fn domains_drop_the_root_dot() {
        assert_eq!(domain("Example.ORG.").unwrap(), "example.org");
        assert!(domain("a..b").is_err());
        assert!(domain("").is_err());
    }

    #[test]
    fn inbox_is_case_insensitive_and_the_default() {
        assert_eq!(mailbox("").unwrap(), "INBOX");
        assert_eq!(mailbox("inbox").unwrap(), "INBOX");
        assert_eq!(mailbox("Junk").unwrap(), "Junk");
        assert!(mailbox("a\nb").is_err());
    }

    #[test]
    fn new_names_and_parents() {
        assert_eq!(new_mailbox("a/b").unwrap(), "a/b");
        for bad in ["a//b", "/a", "a/"] {
            assert!(new_mailbox(bad).is_err(), "{bad}");
        }
        assert_eq!(parents("a/b/c"), vec!["a", "a/b"]);
        assert!(parents("a").is_empty());
    }

    #[test]
    fn flags_are_canonical() {
        let got = flags(&[
            "\\seen".into(),
            "$Junk".into(),
            "\\SEEN".into(),
            "\\Recent".into(),
        ])
        .unwrap();
        assert_eq!(got, vec!["$Junk".to_string(), "\\Seen".to_string()]);
        assert!(flags(&["\\Bogus".into()]).is_err());
        assert!(flags(&["two words".into()]).is_err());
    }

    #[test]
    fn store_modes() {
        let cur = vec!["\\Flagged".to_string(), "\\Seen".to_string()];
        let seen = vec!["\\Seen".to_string()];
        let del = vec!["\\Deleted".to_string()];
        assert_eq!(
            apply_flags(&cur, FlagMode::Remove, &seen),
            vec!["\\Flagged"]
        );
        assert_eq!(
            apply_flags(&cur, FlagMode::Add, &del),
            vec!["\\Deleted", "\\Flagged", "\\Seen"]
        );
        assert_eq!(
            apply_flags(&cur, FlagMode::Replace, &del),
            vec!["\\Deleted"]
        );
    }
}
