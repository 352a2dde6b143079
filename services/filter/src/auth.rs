//! Sender authentication with `mail-auth` over the process's one caching
//! hickory resolver: SPF on HELO and MAIL FROM (RFC 7208), every DKIM
//! signature (RFC 6376), ARC (RFC 8617), iprev (RFC 8601 §3) and DMARC
//! (RFC 7489) with its policy and `pct`, and the one
//! `Authentication-Results:` header (RFC 8601) that reports them.
//!
//! The lookups of one message run concurrently; DMARC waits only for SPF
//! and DKIM, which it needs.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevResult,
    MessageAuthenticator, ReceivedSpf, SpfOutput, SpfResult,
};

/// What the receiver should do with a message under its author domain's
/// DMARC policy (RFC 7489 §6.3 `p`/`sp`, after `pct` sampling §6.6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

/// The results of one message, owned, for the rules and the headers.
#[derive(Debug, Clone)]
pub struct AuthSummary {
    pub spf_helo: Option<SpfResult>,
    pub spf_mail_from: Option<SpfResult>,
    /// One entry per DKIM-Signature: its result word and signing domain.
    pub dkim: Vec<(&'static str, String)>,
    pub arc: &'static str,
    pub iprev: &'static str,
    /// `pass`, `fail`, `none`, `temperror`, `permerror`.
    pub dmarc: &'static str,
    /// The RFC 5322.From domain DMARC evaluated.
    pub dmarc_domain: String,
    /// The policy in the record (`p`, or `sp` for a subdomain).
    pub dmarc_policy: Disposition,
    /// The disposition to apply: the policy when DMARC failed and the
    /// message was sampled by `pct`, else none.
    pub disposition: Disposition,
    /// The `Authentication-Results:` value (authserv-id first).
    pub header: String,
    /// The `Received-SPF:` value, when asked for.
    pub received_spf: Option<String>,
}

/// Who sent the message, as smtp-edge saw it.
pub struct Envelope<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    /// Empty for the null reverse-path.
    pub mail_from: &'a str,
    /// This server's name (SPF's `%{r}` macro).
    pub host: &'a str,
}

/// Runs every check of one message. `message` is the message as received.
pub async fn authenticate(
    resolver: &TokioResolver,
    authserv_id: &str,
    envelope: &Envelope<'_>,
    message: &[u8],
    want_received_spf: bool,
) -> AuthSummary {
    let authenticator = MessageAuthenticator(resolver.clone());
    // mail-auth refuses nothing here: a message it cannot parse (no header
    // block) still gets SPF and iprev, and DKIM/DMARC are `none`.
    let parsed = AuthenticatedMessage::parse(message).unwrap_or_default();
    let ip = envelope.ip;
    let helo = envelope.helo;
    // RFC 7208 §2.3: HELO is checked when it is a domain name, not an
    // address literal.
    let helo_is_domain = !helo.is_empty() && !helo.starts_with('[') && helo.contains('.');

    let spf_helo = async {
        if !helo_is_domain {
            return None;
        }
        let params = SpfParameters::verify_ehlo(ip, helo, envelope.host);
        Some(authenticator.verify_spf(params).await)
    };
    let spf_mail_from = async {
        if envelope.mail_from.is_empty() {
            return None;
        }
        let params = SpfParameters::verify_mail_from(ip, helo, envelope.host, envelope.mail_from);
        Some(authenticator.verify_spf(params).await)
    };
    let dkim = authenticator.verify_dkim(&parsed);
    let arc = authenticator.verify_arc(&parsed);
    let iprev = authenticator.verify_iprev(ip);
    let (spf_helo, spf_mail_from, dkim, arc, iprev) =
        futures::join!(spf_helo, spf_mail_from, dkim, arc, iprev);

    // RFC 7208 §2.4: with the null reverse-path the MAIL FROM identity is
    // postmaster@HELO, so the HELO result stands for it (and for DMARC).
    let (spf_for_dmarc, spf_domain): (Option<&SpfOutput>, &str) = match &spf_mail_from {
        Some(out) => (Some(out), domain_of(envelope.mail_from)),
        None => (spf_helo.as_ref(), helo),
    };
    let none_spf = SpfOutput::new(String::new());
    let dmarc = authenticator
        .verify_dmarc(DmarcParameters {
            message: &parsed,
            dkim_output: &dkim,
            dkim2_output: None,
            rfc5321_mail_from_domain: spf_domain,
            spf_output: spf_for_dmarc.unwrap_or(&none_spf),
        })
        .await;

    let header_from = parsed.from.first().map(String::as_str).unwrap_or("");
    let mut results = AuthenticationResults::new(authserv_id);
    if let Some(out) = &spf_helo {
        results = results.with_spf_ehlo_result(out, ip, helo);
    }
    if let Some(out) = &spf_mail_from {
        results = results.with_spf_mailfrom_result(out, ip, envelope.mail_from, helo);
    }
    results = results
        .with_dkim_results(&dkim, header_from)
        .with_arc_result(&arc, ip)
        .with_dmarc_result(&dmarc)
        .with_iprev_result(&iprev, ip);
    let header = results.to_string();

    let received_spf = match (want_received_spf, spf_for_dmarc) {
        (true, Some(out)) => {
            let value = ReceivedSpf::new(out, ip, helo, envelope.mail_from, envelope.host);
            Some(header_value(
                &mail_auth::common::headers::HeaderWriter::to_header(&value),
            ))
        }
        _ => None,
    };

    let dmarc_word = dmarc_result_word(&dmarc.result());
    let dmarc_policy = match dmarc.policy() {
        Policy::Reject => Disposition::Reject,
        Policy::Quarantine => Disposition::Quarantine,
        Policy::None | Policy::Unspecified => Disposition::None,
    };
    let mut disposition = Disposition::None;
    if dmarc_word == "fail" && dmarc_policy != Disposition::None {
        // RFC 7489 §6.6.4: a message not sampled by pct gets the next
        // less strict policy.
        let pct = dmarc_pct(resolver, dmarc.domain()).await;
        disposition = if sampled(pct) {
            dmarc_policy
        } else if dmarc_policy == Disposition::Reject {
            Disposition::Quarantine
        } else {
            Disposition::None
        };
    }

    AuthSummary {
        spf_helo: spf_helo.map(|o| o.result()),
        spf_mail_from: spf_mail_from.map(|o| o.result()),
        dkim: dkim
            .iter()
            .map(|o| {
                let domain = o.signature().map(|s| s.d.clone()).unwrap_or_default();
                (dkim_result_word(o.result()), domain)
            })
            .collect(),
        arc: dkim_result_word(arc.result()),
        iprev: iprev_result_word(&iprev.result),
        dmarc: dmarc_word,
        dmarc_domain: dmarc.domain().to_string(),
        dmarc_policy,
        disposition,
        header,
        received_spf,
    }
}

/// The value of a `Name: value\r\n` header line.
fn header_value(line: &str) -> String {
    let value = line.split_once(':').map_or(line, |(_, v)| v);
    value.trim().to_string()
}

/// The domain of an address (`user@domain`), or the text itself.
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or(address, |(_, d)| d)
}

fn sampled(pct: u8) -> bool {
    pct >= 100 || rand::random_range(0..100u8) < pct
}

/// The `pct` tag (RFC 7489 §6.3) of the DMARC record that applies to
/// `domain`: the domain's own record, else its parents' up to the
/// two-label organizational domain (§6.6.3). 100 when absent or invalid.
/// The lookups hit the resolver's cache: mail-auth just fetched them.
async fn dmarc_pct(resolver: &TokioResolver, domain: &str) -> u8 {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    for start in 0..labels.len().saturating_sub(1) {
        let name = format!("_dmarc.{}.", labels[start..].join("."));
        let Ok(lookup) = resolver.txt_lookup(name).await else {
            continue;
        };
        for record in lookup.answers() {
            let hickory_resolver::proto::rr::RData::TXT(txt) = &record.data else {
                continue;
            };
            let text: String = txt
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            if !text.trim_start().starts_with("v=DMARC1") {
                continue;
            }
            return parse_pct(&text);
        }
    }
    100
}

fn parse_pct(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, value)| value.trim().parse::<u8>().ok())
        .map_or(100, |pct| pct.min(100))
}

fn dkim_result_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_result_word(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn iprev_result_word(result: &IprevResult) -> &'static str {
    match result {
        IprevResult::Pass => "pass",
        IprevResult::Fail(_) => "fail",
        IprevResult::TempError(_) => "temperror",
        IprevResult::PermError(_) => "permerror",
        IprevResult::None => "none",
    }
}

/// The lowercase word of an SPF result (RFC 7208 §2.6).
pub fn spf_result_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_parses_with_bounds() {
        assert_eq!(parse_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=0"), 0);
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 25 "), 25);
        assert_eq!(parse_pct("v=DMARC1; pct=250"), 100);
        assert_eq!(parse_pct("v=DMARC1; pct=x"), 100);
    }

    #[test]
    fn sampling_extremes() {
        assert!(sampled(100));
        assert!(!(0..50).any(|_| sampled(0)));
    }

    #[test]
    fn header_value_strips_the_name() {
        assert_eq!(
            header_value("Received-SPF: pass (x) client-ip=1.2.3.4;\r\n"),
            "pass (x) client-ip=1.2.3.4;"
        );
    }
}
