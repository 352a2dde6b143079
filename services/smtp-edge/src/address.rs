//! Address checks without I/O: the classic relay tricks (RFC 5321 §3.6,
//! RFC 2505 §2.6.1) and SMTPUTF8 (RFC 6531).
//!
//! An MX that judges "local or not" on the domain alone, and then hands the
//! address to something that reads it differently, relays for strangers:
//! `user%victim@ours` (the `%`-hack), `victim!user@ours` (UUCP bang paths),
//! `"victim@elsewhere"@ours` (a quoted `@`), `user@ours.` (trailing dot, a
//! different name to some resolvers) and `user@[192.0.2.1]` (an address
//! literal that may be our own IP). Clients that may not relay get none of
//! them. Source routes (`<@a,@b:user@d>`) are stripped by the parser, as
//! RFC 5321 §4.1.1.3 advises, and the rest is judged as any address.

/// The trick `address` (as given in RCPT TO, quotes removed) plays, if any.
pub fn relay_trick(address: &str) -> Option<&'static str> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.contains('@') || local.contains('"') {
        return Some("quoted local part with @");
    }
    if local.contains('%') {
        return Some("percent hack");
    }
    if local.contains('!') {
        return Some("bang path");
    }
    if domain.ends_with('.') {
        return Some("trailing dot");
    }
    if domain.starts_with('[') {
        return Some("address literal");
    }
    if domain.contains(':') || domain.contains(',') || local.starts_with('@') {
        return Some("source route");
    }
    None
}

/// RFC 6531 §3.2: addresses outside ASCII need the SMTPUTF8 parameter.
pub fn needs_smtputf8(address: &str) -> bool {
    !address.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricks() {
        assert_eq!(relay_trick("alice@example.org"), None);
        assert_eq!(relay_trick("first.last+tag@example.org"), None);
        assert!(relay_trick("victim%elsewhere.example@example.org").is_some());
        assert!(relay_trick("elsewhere.example!victim@example.org").is_some());
        assert!(relay_trick("victim@elsewhere.example@example.org").is_some());
        assert!(relay_trick("\"victim@elsewhere\"@example.org").is_some());
        assert!(relay_trick("alice@example.org.").is_some());
        assert!(relay_trick("alice@[192.0.2.1]").is_some());
        assert!(relay_trick("alice@[IPv6:::1]").is_some());
    }

    #[test]
    fn utf8() {
        assert!(!needs_smtputf8("alice@example.org"));
        assert!(needs_smtputf8("jösé@example.org"));
    }
}
