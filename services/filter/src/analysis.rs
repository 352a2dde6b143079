//! One message taken apart once (mail-parser) into the owned facts every
//! rule reads: addresses, bodies, links, attachments, and the results of
//! the DNS checks. Rules stay pure functions over an [`Analysis`].

use std::net::IpAddr;
use std::sync::LazyLock;

use mail_parser::{MessageParser, MimeHeaders};
use mailfleet_proto::filter::CheckRequest;
use regex::Regex;

use crate::auth::AuthSummary;
use crate::reputation::Listing;

/// Body text kept for the rules and the classifier; the rest of a large
/// message is not scanned (GTUBE still scans the raw message).
pub const MAX_TEXT: usize = 256 * 1024;

/// An `<a href>` in an HTML body.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub href: String,
    /// The visible text, tags removed.
    pub text: String,
}

#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub client_ip: Option<IpAddr>,
    pub helo: String,
    pub mail_from: String,
    /// Domains of the recipients, lowercase: the local domains for this message.
    pub rcpt_domains: Vec<String>,
    pub authenticated: bool,
    /// The message as received.
    pub raw: Vec<u8>,
    /// Every header as (name, unfolded value).
    pub headers: Vec<(String, String)>,
    /// From: display name and address, when there is one address.
    pub from_name: Option<String>,
    pub from_address: Option<String>,
    /// Number of From: header fields (RFC 5322 §3.6 allows exactly one).
    pub from_fields: usize,
    pub reply_to: Option<String>,
    pub subject: String,
    pub has_date: bool,
    pub has_message_id: bool,
    /// Text of the text/plain parts (or of HTML turned to text).
    pub text: String,
    /// The HTML parts as they are.
    pub html: String,
    pub has_plain_text: bool,
    pub has_html: bool,
    pub links: Vec<Link>,
    /// Host names linked from the body (http/https), lowercase, unique.
    pub body_domains: Vec<String>,
    pub attachments: Vec<String>,
    // Filled by the engine after the DNS checks:
    pub auth: Option<AuthSummary>,
    pub dnsbl: Vec<Listing>,
    pub uribl: Vec<Listing>,
    /// Spam probability from the Bayesian classifier, when trained.
    pub bayes: Option<f64>,
}

static ANCHOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?is)<a\s[^>]*?href\s*=\s*["']?([^"'\s>]+)[^>]*>(.*?)</a\s*>"#)
        .expect("static regex")
});
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?s)<[^>]*>").expect("static regex"));
static URL_HOST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\bhttps?://([a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+)",
    )
    .expect("static regex")
});

impl Analysis {
    /// Parses the request's message. Never fails: an unparsable message
    /// simply has no headers or bodies, which rules score.
    pub fn new(request: &CheckRequest) -> Analysis {
        let mut analysis = Analysis {
            client_ip: request.client_ip.parse().ok(),
            helo: request.helo.clone(),
            mail_from: request.mail_from.clone(),
            rcpt_domains: request
                .rcpt_to
                .iter()
                .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
                .collect(),
            authenticated: request.authenticated,
            raw: request.message.clone(),
            ..Analysis::default()
        };
        analysis.rcpt_domains.sort();
        analysis.rcpt_domains.dedup();

        let Some(message) = MessageParser::default().parse(&request.message) else {
            return analysis;
        };
        analysis.headers = message
            .headers_raw()
            .map(|(name, value)| (name.to_string(), unfold(value)))
            .collect();
        analysis.from_fields = analysis
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("From"))
            .count();
        if let Some(from) = message.from()
            && let Some(first) = from.first()
        {
            analysis.from_name = first.name().map(str::to_string);
            analysis.from_address = first.address().map(str::to_ascii_lowercase);
        }
        analysis.reply_to = message
            .reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_ascii_lowercase);
        analysis.subject = message.subject().unwrap_or_default().to_string();
        analysis.has_date = message.date().is_some();
        analysis.has_message_id = message.message_id().is_some();

        for part in message.text_bodies() {
            if part.is_text_html() {
                continue;
            }
            analysis.has_plain_text = true;
            if let Some(text) = part.text_contents() {
                push_limited(&mut analysis.text, text);
            }
        }
        for part in message.html_bodies() {
            if !part.is_text_html() {
                continue;
            }
            analysis.has_html = true;
            if let Some(html) = part.text_contents() {
                push_limited(&mut analysis.html, html);
            }
        }
        if !analysis.has_plain_text && analysis.has_html {
            analysis.text = mail_parser::decoders::html::html_to_text(&analysis.html);
        }
        for part in message.attachments() {
            if let Some(name) = part.attachment_name() {
                analysis.attachments.push(name.to_string());
            }
        }

        analysis.links = ANCHOR
            .captures_iter(&analysis.html)
            .map(|c| Link {
                href: c[1].to_string(),
                text: TAG.replace_all(&c[2], "").trim().to_string(),
            })
            .collect();
        let mut domains: Vec<String> = URL_HOST
            .captures_iter(&analysis.text)
            .chain(URL_HOST.captures_iter(&analysis.html))
            .map(|c| c[1].to_ascii_lowercase())
            .collect();
        domains.sort();
        domains.dedup();
        analysis.body_domains = domains;
        analysis
    }

    /// The values of every header named `name` (case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The host of a URL (`https://user@host:port/path` → `host`), lowercase.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r)?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether `host` is `domain` or a subdomain of it.
pub fn within(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.');
    let domain = domain.trim_end_matches('.');
    host.eq_ignore_ascii_case(domain)
        || (host.len() > domain.len()
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain))
}

/// The last two labels of a host: a cheap stand-in for the registered
/// domain, good enough to compare link text with link target.
pub fn base_domain(host: &str) -> &str {
    let host = host.trim_end_matches('.');
    let mut dots = host.rmatch_indices('.');
    dots.next();
    match dots.next() {
        Some((at, _)) => &host[at + 1..],
        None => host,
    }
}

fn push_limited(out: &mut String, text: &str) {
    let room = MAX_TEXT.saturating_sub(out.len());
    if room == 0 {
        return;
    }
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&text[..end]);
    out.push('\n');
}

/// RFC 5322 §2.2.3: unfolding removes the CRLF before folding whitespace.
fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://u@Evil.Test:8080/x?y").as_deref(),
            Some("evil.test")
        );
        assert_eq!(url_host("mailto:a@b"), None);
        assert_eq!(base_domain("a.b.example.com"), "example.com");
        assert_eq!(base_domain("example"), "example");
        assert!(within("login.bank.test", "bank.test"));
        assert!(!within("evilbank.test", "bank.test"));
    }

    #[test]
    fn links_and_domains_are_found() {
        let request = CheckRequest {
            message: b"From: Bank <a@bank.test>\r\nContent-Type: text/html\r\n\r\n\
                <p>Go to <a class=x href=\"http://evil.test/login\"><b>https://www.bank.test</b></a></p>\r\n"
                .to_vec(),
            ..CheckRequest::default()
        };
        let analysis = Analysis::new(&request);
        assert!(analysis.has_html && !analysis.has_plain_text);
        assert_eq!(analysis.links.len(), 1);
        assert_eq!(analysis.links[0].href, "http://evil.test/login");
        assert_eq!(analysis.links[0].text, "https://www.bank.test");
        assert_eq!(analysis.body_domains, ["evil.test", "www.bank.test"]);
        assert_eq!(analysis.from_address.as_deref(), Some("a@bank.test"));
    }
}
