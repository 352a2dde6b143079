//! The rule engine: every [`Rule`] looks at one [`Analysis`] and may fire
//! with a score; a rule may also decide the action outright (GTUBE and
//! DMARC `p=reject` refuse, `p=quarantine` sends to Junk). The verdict is
//! the sum of the scores mapped through [`Thresholds`], the strictest
//! forced action, and the headers that explain it.
//!
//! Rules are pure over the analysis, so each is unit tested without DNS.

use mail_auth::SpfResult;
use mailfleet_proto::filter::{Action, CheckRequest, Header, Rule as FiredRule, Verdict};
use mailfleet_runtime::config::Filter as FilterConfig;
use regex::Regex;

use crate::analysis::{Analysis, base_domain, url_host, within};
use crate::auth::Disposition;

/// Score at or above which a message is delivered to Junk by default.
pub const JUNK_THRESHOLD: f64 = 5.0;

/// What one rule says about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub score: f64,
    /// Set when the rule decides the action by itself, whatever the score.
    pub action: Option<Forced>,
}

impl Hit {
    pub fn score(score: f64) -> Option<Hit> {
        Some(Hit {
            score,
            action: None,
        })
    }
}

/// An action a rule may force, with the SMTP reply it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub action: Action,
    pub smtp_code: u32,
    pub enhanced_code: &'static str,
}

/// RFC 5321 §4.2.3 550 with RFC 3463 5.7.1 "delivery not authorized,
/// message refused": the reply for policy refusals (DMARC, attachments,
/// score).
const REFUSE_550: Forced = Forced {
    action: Action::Reject,
    smtp_code: 550,
    enhanced_code: "5.7.1",
};

/// One check over a message.
pub trait Rule: Send + Sync {
    /// Short upper-case name shown in `X-Spam-Status` (`GTUBE`).
    fn name(&self) -> &str;
    /// `Some` when the rule fires.
    fn check(&self, message: &Analysis) -> Option<Hit>;
}

/// The Generic Test for Unsolicited Bulk Email: a fixed string any spam
/// filter must reject, so operators can test the path end to end.
pub struct Gtube;

/// The GTUBE string (<https://spamassassin.apache.org/gtube/>).
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBGR2-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

impl Rule for Gtube {
    fn name(&self) -> &str {
        "GTUBE"
    }

    fn check(&self, message: &Analysis) -> Option<Hit> {
        contains(&message.raw, GTUBE).then_some(Hit {
            score: 1000.0,
            action: Some(Forced {
                action: Action::Reject,
                // RFC 5321 §4.2.3: 554 transaction failed; RFC 3463: 5.7.1
                // delivery not authorized, message refused.
                smtp_code: 554,
                enhanced_code: "5.7.1",
            }),
        })
    }
}

/// `needle` occurs in `haystack`. Scans for the first byte, then compares,
/// which is linear in practice for a needle without a repeated prefix.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let mut start = 0;
    while let Some(offset) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + offset;
        if haystack[at..].starts_with(needle) {
            return true;
        }
        start = at + 1;
    }
    false
}

/// A rule given by a closure: most built-in rules are one expression.
struct Check<F> {
    name: &'static str,
    check: F,
}

impl<F: Fn(&Analysis) -> Option<Hit> + Send + Sync> Rule for Check<F> {
    fn name(&self) -> &str {
        self.name
    }
    fn check(&self, message: &Analysis) -> Option<Hit> {
        (self.check)(message)
    }
}

fn rule(
    name: &'static str,
    check: impl Fn(&Analysis) -> Option<Hit> + Send + Sync + 'static,
) -> Box<dyn Rule> {
    Box::new(Check { name, check })
}

/// An operator rule from `[[filter.rules]]`: a regex over a header's
/// values, or over the text body.
pub struct RegexRule {
    name: String,
    header: String,
    pattern: Regex,
    score: f64,
}

impl Rule for RegexRule {
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self, message: &Analysis) -> Option<Hit> {
        let matched = if self.header.is_empty() {
            self.pattern.is_match(&message.text)
        } else if self.header.eq_ignore_ascii_case("Subject") {
            self.pattern.is_match(&message.subject)
        } else {
            message
                .header_values(&self.header)
                .any(|v| self.pattern.is_match(v))
        };
        matched.then_some(Hit {
            score: self.score,
            action: None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("filter.rules {name:?}: bad pattern: {source}")]
    Pattern { name: String, source: regex::Error },
    #[error("filter.rules: a rule needs a name and a pattern")]
    Incomplete,
}

/// Score thresholds mapped to actions.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub add_header: f64,
    pub junk: f64,
    pub reject: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        let config = FilterConfig::default();
        Thresholds {
            add_header: config.add_header_score,
            junk: config.junk_score,
            reject: config.reject_score,
        }
    }
}

/// The ordered list of rules a verdict is computed from.
pub struct RuleSet {
    rules: Vec<Box<dyn Rule>>,
    pub thresholds: Thresholds,
}

impl Default for RuleSet {
    /// The rules that need neither configuration nor DNS: GTUBE.
    fn default() -> Self {
        RuleSet::new(vec![Box::new(Gtube)])
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Box<dyn Rule>>) -> Self {
        RuleSet {
            rules,
            thresholds: Thresholds::default(),
        }
    }

    /// Every rule Mailfleet ships, tuned by `config`, plus the operator's.
    pub fn from_config(config: &FilterConfig) -> Result<RuleSet, RuleError> {
        let mut rules = builtin(config);
        for custom in &config.rules {
            if custom.name.is_empty() || custom.pattern.is_empty() {
                return Err(RuleError::Incomplete);
            }
            let pattern = Regex::new(&custom.pattern).map_err(|source| RuleError::Pattern {
                name: custom.name.clone(),
                source,
            })?;
            rules.push(Box::new(RegexRule {
                name: custom.name.clone(),
                header: custom.header.clone(),
                pattern,
                score: custom.score,
            }));
        }
        Ok(RuleSet {
            rules,
            thresholds: Thresholds {
                add_header: config.add_header_score,
                junk: config.junk_score,
                reject: config.reject_score,
            },
        })
    }

    /// Runs the rules over a bare request (no DNS results).
    pub fn evaluate(&self, request: &CheckRequest) -> Verdict {
        self.evaluate_analysis(&Analysis::new(request))
    }

    /// Runs every rule and builds the verdict with its spam headers.
    pub fn evaluate_analysis(&self, message: &Analysis) -> Verdict {
        let mut score = 0.0;
        let mut fired = Vec::new();
        // The strictest forced action wins; among equals the first listed.
        let mut forced: Option<(Forced, String)> = None;
        for rule in &self.rules {
            let Some(hit) = rule.check(message) else {
                continue;
            };
            score += hit.score;
            fired.push(FiredRule {
                name: rule.name().to_owned(),
                score: hit.score,
            });
            if let Some(f) = hit.action {
                let stricter = forced
                    .as_ref()
                    .is_none_or(|(current, _)| severity(f.action) > severity(current.action));
                if stricter {
                    forced = Some((f, rule.name().to_owned()));
                }
            }
        }

        let mut verdict = Verdict {
            score,
            rules: fired,
            ..Verdict::default()
        };
        let by_score = if score >= self.thresholds.reject {
            Action::Reject
        } else if score >= self.thresholds.junk {
            Action::Junk
        } else {
            Action::Accept
        };
        match forced {
            Some((f, rule)) if severity(f.action) >= severity(by_score) => {
                verdict.set_action(f.action);
                if f.smtp_code != 0 {
                    verdict.smtp_code = f.smtp_code;
                    verdict.enhanced_code = f.enhanced_code.to_owned();
                    verdict.reason = format!("message refused by rule {rule}");
                }
            }
            _ if by_score == Action::Reject => {
                verdict.set_action(Action::Reject);
                verdict.smtp_code = REFUSE_550.smtp_code;
                verdict.enhanced_code = REFUSE_550.enhanced_code.to_owned();
                verdict.reason = format!(
                    "message refused as spam, score {score:.1} (rules {})",
                    names(&verdict)
                );
            }
            _ => verdict.set_action(by_score),
        }
        verdict.headers = headers(&verdict, self.thresholds.add_header);
        verdict
    }
}

fn severity(action: Action) -> u8 {
    match action {
        Action::Accept => 0,
        Action::Junk => 1,
        Action::Tempfail => 2,
        Action::Reject => 3,
    }
}

/// The built-in rules with their scores.
fn builtin(config: &FilterConfig) -> Vec<Box<dyn Rule>> {
    let dmarc_enforce = config.dmarc_enforce;
    let dnsbl_score = config.dnsbl_score;
    let uribl_score = config.uribl_score;
    let extensions: Vec<String> = config
        .attachment_extensions
        .iter()
        .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
        .collect();
    let reject_attachments = config.reject_attachments;
    let local_domains: Vec<String> = config
        .local_domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let brands: Vec<String> = config
        .brands
        .iter()
        .map(|b| b.to_ascii_lowercase())
        .collect();

    vec![
        Box::new(Gtube),
        // Sender authentication (results from crate::auth).
        rule("DMARC_REJECT", move |m| {
            let auth = m.auth.as_ref()?;
            (dmarc_enforce && auth.disposition == Disposition::Reject).then_some(Hit {
                score: 10.0,
                // RFC 7489 §6.7 (and §10.3): reject during the SMTP
                // transaction with 550 5.7.1.
                action: Some(REFUSE_550),
            })
        }),
        rule("DMARC_QUARANTINE", move |m| {
            let auth = m.auth.as_ref()?;
            (dmarc_enforce && auth.disposition == Disposition::Quarantine).then_some(Hit {
                score: 5.0,
                action: Some(Forced {
                    action: Action::Junk,
                    smtp_code: 0,
                    enhanced_code: "",
                }),
            })
        }),
        rule("DMARC_FAIL", |m| {
            let auth = m.auth.as_ref()?;
            (auth.dmarc == "fail" && auth.disposition == Disposition::None)
                .then_some(())
                .and(Hit::score(1.5))
        }),
        rule("DMARC_PASS", |m| {
            (m.auth.as_ref()?.dmarc == "pass")
                .then_some(())
                .and(Hit::score(-1.0))
        }),
        rule("SPF_FAIL", |m| {
            (m.auth.as_ref()?.spf_mail_from? == SpfResult::Fail)
                .then_some(())
                .and(Hit::score(2.0))
        }),
        rule("SPF_SOFTFAIL", |m| {
            (m.auth.as_ref()?.spf_mail_from? == SpfResult::SoftFail)
                .then_some(())
                .and(Hit::score(1.0))
        }),
        rule("SPF_HELO_FAIL", |m| {
            (m.auth.as_ref()?.spf_helo? == SpfResult::Fail)
                .then_some(())
                .and(Hit::score(1.0))
        }),
        rule("DKIM_INVALID", |m| {
            let auth = m.auth.as_ref()?;
            auth.dkim
                .iter()
                .any(|(result, _)| matches!(*result, "fail" | "permerror" | "neutral"))
                .then_some(())
                .and(Hit::score(1.0))
        }),
        rule("ARC_INVALID", |m| {
            (m.auth.as_ref()?.arc == "fail")
                .then_some(())
                .and(Hit::score(0.5))
        }),
        rule("IPREV_FAIL", |m| {
            (m.auth.as_ref()?.iprev == "fail")
                .then_some(())
                .and(Hit::score(0.5))
        }),
        // Reputation (results from crate::reputation).
        rule("RCVD_IN_DNSBL", move |m| {
            (!m.dnsbl.is_empty())
                .then_some(())
                .and(Hit::score(dnsbl_score * m.dnsbl.len() as f64))
        }),
        rule("URIBL_LISTED", move |m| {
            (!m.uribl.is_empty())
                .then_some(())
                .and(Hit::score(uribl_score * m.uribl.len() as f64))
        }),
        // Malformed or missing headers (RFC 5322 §3.6: Date and From are
        // required, exactly one From; Message-ID should be there).
        rule("MISSING_FROM", |m| {
            (m.from_fields == 0).then_some(()).and(Hit::score(2.0))
        }),
        rule("MULTIPLE_FROM", |m| {
            (m.from_fields > 1).then_some(()).and(Hit::score(2.0))
        }),
        rule("MALFORMED_FROM", |m| {
            (m.from_fields == 1 && m.from_address.as_deref().is_none_or(|a| !a.contains('@')))
                .then_some(())
                .and(Hit::score(2.0))
        }),
        rule("MISSING_DATE", |m| {
            (!m.has_date).then_some(()).and(Hit::score(1.0))
        }),
        rule("MISSING_MESSAGE_ID", |m| {
            (!m.has_message_id).then_some(()).and(Hit::score(0.5))
        }),
        rule("MISSING_SUBJECT", |m| {
            m.subject
                .trim()
                .is_empty()
                .then_some(())
                .and(Hit::score(0.5))
        }),
        rule("FROM_REPLYTO_MISMATCH", |m| {
            let from = crate::auth::domain_of(m.from_address.as_deref()?);
            let reply = crate::auth::domain_of(m.reply_to.as_deref()?);
            (base_domain(from) != base_domain(reply))
                .then_some(())
                .and(Hit::score(1.5))
        }),
        rule("DISPLAY_NAME_SPOOF", move |m| {
            let name = m.from_name.as_deref()?.to_ascii_lowercase();
            let address = m.from_address.as_deref()?;
            let from_domain = crate::auth::domain_of(address);
            let local_hit = local_domains
                .iter()
                .chain(m.rcpt_domains.iter())
                .any(|d| name.contains(d.as_str()) && !within(from_domain, d));
            let brand_hit = brands
                .iter()
                .any(|b| contains_word(&name, b) && !base_domain(from_domain).contains(b.as_str()));
            (local_hit || brand_hit).then_some(()).and(Hit::score(3.5))
        }),
        rule("PHISH_LINK_MISMATCH", |m| {
            // A link whose visible text names a domain other than its
            // target: the classic phishing link.
            let mismatch = m.links.iter().any(|link| {
                let Some(target) = url_host(&link.href) else {
                    return false;
                };
                let Some(shown) = shown_domain(&link.text) else {
                    return false;
                };
                base_domain(&shown) != base_domain(&target)
            });
            mismatch.then_some(()).and(Hit::score(4.0))
        }),
        rule("HTML_ONLY", |m| {
            (m.has_html && !m.has_plain_text)
                .then_some(())
                .and(Hit::score(0.7))
        }),
        rule("SUBJECT_ALL_CAPS", |m| {
            (caps_ratio(&m.subject, 10) > 0.8)
                .then_some(())
                .and(Hit::score(1.5))
        }),
        rule("BODY_EXCESSIVE_CAPS", |m| {
            (caps_ratio(&m.text, 40) > 0.5)
                .then_some(())
                .and(Hit::score(1.5))
        }),
        rule("SUSPICIOUS_ATTACHMENT", move |m| {
            let suspicious = m.attachments.iter().any(|name| {
                let lower = name.to_ascii_lowercase();
                extensions
                    .iter()
                    .any(|ext| lower.rsplit_once('.').is_some_and(|(_, e)| e == ext))
            });
            if !suspicious {
                return None;
            }
            Some(Hit {
                score: 5.0,
                action: reject_attachments.then_some(REFUSE_550),
            })
        }),
        rule("BAYES_99", |m| {
            (m.bayes? >= 0.99).then_some(()).and(Hit::score(4.5))
        }),
        rule("BAYES_90", |m| {
            let p = m.bayes?;
            (0.9..0.99).contains(&p).then_some(()).and(Hit::score(3.0))
        }),
        rule("BAYES_70", |m| {
            let p = m.bayes?;
            (0.7..0.9).contains(&p).then_some(()).and(Hit::score(1.0))
        }),
        rule("BAYES_05", |m| {
            let p = m.bayes?;
            (0.01..0.05)
                .contains(&p)
                .then_some(())
                .and(Hit::score(-0.5))
        }),
        rule("BAYES_00", |m| {
            (m.bayes? < 0.01).then_some(()).and(Hit::score(-1.5))
        }),
    ]
}

/// `word` in `text` at word boundaries (so "apple" does not match
/// "pineapple").
fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        before.is_none_or(|c| !c.is_alphanumeric()) && after.is_none_or(|c| !c.is_alphanumeric())
    })
}

/// The domain a link's text shows, when it looks like a URL or a host.
fn shown_domain(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(host) = url_host(text) {
        return Some(host);
    }
    let candidate = text.split(['/', ' ']).next()?.trim_end_matches('.');
    let looks_like_host = candidate.contains('.')
        && candidate
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && candidate
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
    looks_like_host.then(|| candidate.to_ascii_lowercase())
}

/// Upper-case share of the letters of `text`, 0 below `min_letters`.
fn caps_ratio(text: &str, min_letters: usize) -> f64 {
    let (mut letters, mut upper) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if c.is_uppercase() {
            upper += 1;
        }
    }
    if letters < min_letters {
        return 0.0;
    }
    upper as f64 / letters as f64
}

/// The lowercase name of an action, as in `X-Mailfleet-Verdict` and metrics.
pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Accept => "accept",
        Action::Junk => "junk",
        Action::Reject => "reject",
        Action::Tempfail => "tempfail",
    }
}

fn names(verdict: &Verdict) -> String {
    verdict
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `X-Spam-Status: Yes|No, score=S rules=A:1.0,B:2.5` (SpamAssassin's
/// shape, which mail clients and sieve scripts already understand, with
/// each rule's score so an operator can explain the decision),
/// `X-Spam-Flag: YES` from the add-header score, and
/// `X-Mailfleet-Verdict: <action>`.
pub fn headers(verdict: &Verdict, add_header_score: f64) -> Vec<Header> {
    let spam = matches!(verdict.action(), Action::Junk | Action::Reject);
    let rules: Vec<String> = verdict
        .rules
        .iter()
        .map(|r| format!("{}:{:.1}", r.name, r.score))
        .collect();
    let mut headers = vec![Header {
        name: "X-Spam-Status".into(),
        value: format!(
            "{}, score={:.1} rules={}",
            if spam { "Yes" } else { "No" },
            verdict.score,
            rules.join(",")
        ),
    }];
    if spam || verdict.score >= add_header_score {
        headers.push(Header {
            name: "X-Spam-Flag".into(),
            value: "YES".into(),
        });
    }
    headers.push(Header {
        name: "X-Mailfleet-Verdict".into(),
        value: action_name(verdict.action()).into(),
    });
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(message: &[u8]) -> CheckRequest {
        CheckRequest {
            client_ip: "192.0.2.1".into(),
            helo: "client.example".into(),
            mail_from: "a@client.example".into(),
            rcpt_to: vec!["b@example.org".into()],
            authenticated: false,
            message: message.to_vec(),
        }
    }

    fn analysis(message: &[u8]) -> Analysis {
        Analysis::new(&request(message))
    }

    fn header<'a>(verdict: &'a Verdict, name: &str) -> &'a str {
        &verdict
            .headers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .value
    }

    fn fired(verdict: &Verdict) -> Vec<&str> {
        verdict.rules.iter().map(|r| r.name.as_str()).collect()
    }

    const CLEAN: &[u8] = b"From: Bob <bob@client.example>\r\nTo: b@example.org\r\n\
        Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@client.example>\r\n\
        Subject: lunch\r\n\r\nShall we meet at noon?\r\n";

    #[test]
    fn gtube_fires_anywhere_in_the_message() {
        let mut msg = b"Subject: test\r\n\r\nhello ".to_vec();
        msg.extend_from_slice(GTUBE);
        msg.extend_from_slice(b"\r\n");
        let hit = Gtube.check(&analysis(&msg)).expect("gtube fires");
        assert_eq!(hit.action.unwrap().action, Action::Reject);
    }

    #[test]
    fn gtube_ignores_a_near_miss() {
        let near = &GTUBE[..GTUBE.len() - 1];
        let mut msg = b"Subject: test\r\n\r\n".to_vec();
        msg.extend_from_slice(near);
        msg.extend_from_slice(b"Y\r\nXXJS");
        assert_eq!(Gtube.check(&analysis(&msg)), None);
    }

    #[test]
    fn contains_handles_edges() {
        assert!(contains(b"abc", b""));
        assert!(contains(b"abc", b"abc"));
        assert!(contains(b"xxabc", b"abc"));
        assert!(contains(b"aabab", b"ab"));
        assert!(!contains(b"ab", b"abc"));
        assert!(!contains(b"", b"a"));
    }

    #[test]
    fn clean_message_is_accepted_with_headers() {
        let verdict = RuleSet::default().evaluate(&request(b"Subject: hi\r\n\r\nhello\r\n"));
        assert_eq!(verdict.action(), Action::Accept);
        assert!(verdict.rules.is_empty());
        assert_eq!(header(&verdict, "X-Spam-Status"), "No, score=0.0 rules=");
        assert_eq!(header(&verdict, "X-Mailfleet-Verdict"), "accept");
    }

    #[test]
    fn clean_message_fires_no_builtin_rule() {
        let rules = RuleSet::from_config(&FilterConfig::default()).unwrap();
        let verdict = rules.evaluate(&request(CLEAN));
        assert_eq!(verdict.action(), Action::Accept);
        assert!(verdict.rules.is_empty(), "{:?}", fired(&verdict));
    }

    #[test]
    fn gtube_message_is_rejected_with_554_5_7_1() {
        let mut msg = b"Subject: spam\r\n\r\n".to_vec();
        msg.extend_from_slice(GTUBE);
        let verdict = RuleSet::default().evaluate(&request(&msg));
        assert_eq!(verdict.action(), Action::Reject);
        assert_eq!(verdict.smtp_code, 554);
        assert_eq!(verdict.enhanced_code, "5.7.1");
        assert!(verdict.reason.contains("GTUBE"), "{}", verdict.reason);
        assert_eq!(
            header(&verdict, "X-Spam-Status"),
            "Yes, score=1000.0 rules=GTUBE:1000.0"
        );
        assert_eq!(header(&verdict, "X-Mailfleet-Verdict"), "reject");
    }

    struct Fixed(&'static str, f64);
    impl Rule for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn check(&self, _: &Analysis) -> Option<Hit> {
            Hit::score(self.1)
        }
    }

    #[test]
    fn scores_add_up_to_junk() {
        let rules = RuleSet::new(vec![Box::new(Fixed("A", 3.0)), Box::new(Fixed("B", 2.5))]);
        let verdict = rules.evaluate(&request(b"\r\n"));
        assert_eq!(verdict.action(), Action::Junk);
        assert_eq!(verdict.smtp_code, 0);
        assert_eq!(
            header(&verdict, "X-Spam-Status"),
            "Yes, score=5.5 rules=A:3.0,B:2.5"
        );
        assert_eq!(header(&verdict, "X-Spam-Flag"), "YES");
        assert_eq!(header(&verdict, "X-Mailfleet-Verdict"), "junk");
    }

    #[test]
    fn below_threshold_is_accepted_and_high_scores_rejected() {
        let rules = RuleSet::new(vec![Box::new(Fixed("A", 4.9))]);
        let verdict = rules.evaluate(&request(b"\r\n"));
        assert_eq!(verdict.action(), Action::Accept);
        assert_eq!(
            header(&verdict, "X-Spam-Status"),
            "No, score=4.9 rules=A:4.9"
        );
        assert_eq!(header(&verdict, "X-Spam-Flag"), "YES");

        let rules = RuleSet::new(vec![Box::new(Fixed("A", 20.0))]);
        let verdict = rules.evaluate(&request(b"\r\n"));
        assert_eq!(verdict.action(), Action::Reject);
        assert_eq!(
            (verdict.smtp_code, verdict.enhanced_code.as_str()),
            (550, "5.7.1")
        );
    }

    #[test]
    fn exe_attachment_scores_and_is_refused_by_policy() {
        let msg = b"From: a@client.example\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
            Message-ID: <2@client.example>\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
            see attached\r\n--b\r\nContent-Type: application/octet-stream\r\n\
            Content-Disposition: attachment; filename=\"invoice.pdf.EXE\"\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n";
        let scored = RuleSet::from_config(&FilterConfig::default())
            .unwrap()
            .evaluate(&request(msg));
        assert_eq!(fired(&scored), ["SUSPICIOUS_ATTACHMENT"]);
        assert_eq!(scored.action(), Action::Junk);

        let config = FilterConfig {
            reject_attachments: true,
            ..FilterConfig::default()
        };
        let refused = RuleSet::from_config(&config)
            .unwrap()
            .evaluate(&request(msg));
        assert_eq!(refused.action(), Action::Reject);
        assert_eq!(refused.smtp_code, 550);
        assert!(refused.reason.contains("SUSPICIOUS_ATTACHMENT"));
    }

    #[test]
    fn phishing_link_and_brand_spoof_fire() {
        let msg = b"From: \"PayPal Security\" <alert@secure-mail.test>\r\n\
            Reply-To: collect@elsewhere.test\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
            Message-ID: <3@secure-mail.test>\r\nSubject: Verify your account\r\n\
            Content-Type: text/html\r\n\r\n<p>Please log in at \
            <a href=\"http://198.51.100.9/paypal/login\">https://www.paypal.com/signin</a></p>\r\n";
        let verdict = RuleSet::from_config(&FilterConfig::default())
            .unwrap()
            .evaluate(&request(msg));
        let names = fired(&verdict);
        for expected in [
            "FROM_REPLYTO_MISMATCH",
            "DISPLAY_NAME_SPOOF",
            "PHISH_LINK_MISMATCH",
            "HTML_ONLY",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
        assert_eq!(verdict.action(), Action::Junk);
    }

    #[test]
    fn display_name_naming_a_local_domain_is_spoofing() {
        let msg = b"From: \"example.org IT desk\" <it@phish.test>\r\nSubject: x\r\n\r\nhi\r\n";
        let verdict = RuleSet::from_config(&FilterConfig::default())
            .unwrap()
            .evaluate(&request(msg));
        assert!(fired(&verdict).contains(&"DISPLAY_NAME_SPOOF"));
        // The same name from the domain itself is fine.
        let own = b"From: \"example.org IT desk\" <it@example.org>\r\nSubject: x\r\n\r\nhi\r\n";
        let verdict = RuleSet::from_config(&FilterConfig::default())
            .unwrap()
            .evaluate(&request(own));
        assert!(!fired(&verdict).contains(&"DISPLAY_NAME_SPOOF"));
    }

    #[test]
    fn malformed_and_shouting_messages_score() {
        let msg = b"From: nobody\r\nSubject: FREE MONEY NOW CLICK HERE\r\n\r\n\
            BUY NOW AND GET RICH, LIMITED OFFER, ACT TODAY!!! ONLY FOR YOU, MY FRIEND.\r\n";
        let verdict = RuleSet::from_config(&FilterConfig::default())
            .unwrap()
            .evaluate(&request(msg));
        let names = fired(&verdict);
        for expected in [
            "MALFORMED_FROM",
            "MISSING_DATE",
            "MISSING_MESSAGE_ID",
            "SUBJECT_ALL_CAPS",
            "BODY_EXCESSIVE_CAPS",
        ] {
            assert!(names.contains(&expected), "{expected} not in {names:?}");
        }
    }

    #[test]
    fn operator_regex_rules_apply_to_headers_and_body() {
        let config = FilterConfig {
            rules: vec![
                mailfleet_runtime::config::FilterRule {
                    name: "LOTTERY".into(),
                    header: "Subject".into(),
                    pattern: "(?i)you have won".into(),
                    score: 3.0,
                },
                mailfleet_runtime::config::FilterRule {
                    name: "WIRE".into(),
                    header: String::new(),
                    pattern: "(?i)western union".into(),
                    score: 2.0,
                },
            ],
            ..FilterConfig::default()
        };
        let rules = RuleSet::from_config(&config).unwrap();
        let msg = b"From: a@b.test\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
            Message-ID: <4@b.test>\r\nSubject: You have WON\r\n\r\nSend fees by Western Union.\r\n";
        let verdict = rules.evaluate(&request(msg));
        assert_eq!(fired(&verdict), ["LOTTERY", "WIRE"]);
        assert_eq!(verdict.action(), Action::Junk);

        let bad = FilterConfig {
            rules: vec![mailfleet_runtime::config::FilterRule {
                name: "BAD".into(),
                header: String::new(),
                pattern: "(".into(),
                score: 1.0,
            }],
            ..FilterConfig::default()
        };
        assert!(RuleSet::from_config(&bad).is_err());
    }

    #[test]
    fn shown_domains() {
        assert_eq!(
            shown_domain("www.bank.test").as_deref(),
            Some("www.bank.test")
        );
        assert_eq!(
            shown_domain("https://bank.test/login").as_deref(),
            Some("bank.test")
        );
        assert_eq!(shown_domain("click here"), None);
        assert_eq!(shown_domain("v1.2"), None);
        assert!(contains_word("paypal security", "paypal"));
        assert!(!contains_word("pineapple", "apple"));
    }
}
