//! The rule engine: every [`Rule`] looks at the message and may fire with a
//! score; a rule may also decide the action outright (GTUBE rejects). The
//! verdict is the sum of the scores, the forced action if any, and the
//! headers that explain it.
//!
//! The real checks (SPF, DKIM, DMARC, DNSBL, ...) come later as more rules
//! in this list; keep each one pure over [`CheckRequest`] so it is unit
//! tested without a server.

use mailfleet_proto::filter::{Action, CheckRequest, Header, Rule as FiredRule, Verdict};

/// Score at or above which a message is delivered to Junk.
pub const JUNK_THRESHOLD: f64 = 5.0;

/// What one rule says about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub score: f64,
    /// Set when the rule decides the action by itself, whatever the score.
    pub action: Option<Forced>,
}

/// An action a rule may force, with the SMTP reply it implies.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub action: Action,
    pub smtp_code: u32,
    pub enhanced_code: &'static str,
}

/// One check over a message.
pub trait Rule: Send + Sync {
    /// Short upper-case name shown in `X-Spam-Status` (`GTUBE`).
    fn name(&self) -> &'static str;
    /// `Some` when the rule fires.
    fn check(&self, request: &CheckRequest) -> Option<Hit>;
}

/// The Generic Test for Unsolicited Bulk Email: a fixed string any spam
/// filter must reject, so operators can test the path end to end.
pub struct Gtube;

/// The GTUBE string (<https://spamassassin.apache.org/gtube/>).
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBGR2-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

impl Rule for Gtube {
    fn name(&self) -> &'static str {
        "GTUBE"
    }

    fn check(&self, request: &CheckRequest) -> Option<Hit> {
        contains(&request.message, GTUBE).then_some(Hit {
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

/// The ordered list of rules a verdict is computed from.
pub struct RuleSet {
    rules: Vec<Box<dyn Rule>>,
}

impl Default for RuleSet {
    /// Every rule Mailfleet ships.
    fn default() -> Self {
        RuleSet::new(vec![Box::new(Gtube)])
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Box<dyn Rule>>) -> Self {
        RuleSet { rules }
    }

    /// Runs every rule and builds the verdict with its headers.
    pub fn evaluate(&self, request: &CheckRequest) -> Verdict {
        let mut score = 0.0;
        let mut fired = Vec::new();
        // The first forced action wins: rules are listed by precedence.
        let mut forced: Option<(Forced, &'static str)> = None;
        for rule in &self.rules {
            let Some(hit) = rule.check(request) else {
                continue;
            };
            score += hit.score;
            fired.push(FiredRule {
                name: rule.name().to_owned(),
                score: hit.score,
            });
            if let (None, Some(f)) = (&forced, hit.action) {
                forced = Some((f, rule.name()));
            }
        }

        let mut verdict = Verdict {
            score,
            rules: fired,
            ..Verdict::default()
        };
        match forced {
            Some((f, rule)) => {
                verdict.set_action(f.action);
                verdict.smtp_code = f.smtp_code;
                verdict.enhanced_code = f.enhanced_code.to_owned();
                verdict.reason = format!("message refused by rule {rule}");
            }
            None if score >= JUNK_THRESHOLD => verdict.set_action(Action::Junk),
            None => verdict.set_action(Action::Accept),
        }
        verdict.headers = headers(&verdict);
        verdict
    }
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

/// `X-Spam-Status: Yes|No, score=S rules=A,B` (SpamAssassin's shape, which
/// mail clients and sieve scripts already understand) and
/// `X-Mailfleet-Verdict: <action>`.
fn headers(verdict: &Verdict) -> Vec<Header> {
    let spam = matches!(verdict.action(), Action::Junk | Action::Reject);
    let names: Vec<&str> = verdict.rules.iter().map(|r| r.name.as_str()).collect();
    vec![
        Header {
            name: "X-Spam-Status".into(),
            value: format!(
                "{}, score={:.1} rules={}",
                if spam { "Yes" } else { "No" },
                verdict.score,
                names.join(",")
            ),
        },
        Header {
            name: "X-Mailfleet-Verdict".into(),
            value: action_name(verdict.action()).into(),
        },
    ]
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

    fn header<'a>(verdict: &'a Verdict, name: &str) -> &'a str {
        &verdict
            .headers
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .value
    }

    #[test]
    fn gtube_fires_anywhere_in_the_message() {
        let mut msg = b"Subject: test\r\n\r\nhello ".to_vec();
        msg.extend_from_slice(GTUBE);
        msg.extend_from_slice(b"\r\n");
        let hit = Gtube.check(&request(&msg)).expect("gtube fires");
        assert_eq!(hit.action.unwrap().action, Action::Reject);
    }

    #[test]
    fn gtube_ignores_a_near_miss() {
        let near = &GTUBE[..GTUBE.len() - 1];
        let mut msg = b"Subject: test\r\n\r\n".to_vec();
        msg.extend_from_slice(near);
        msg.extend_from_slice(b"Y\r\nXXJS");
        assert_eq!(Gtube.check(&request(&msg)), None);
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
            "Yes, score=1000.0 rules=GTUBE"
        );
        assert_eq!(header(&verdict, "X-Mailfleet-Verdict"), "reject");
    }

    struct Fixed(&'static str, f64);
    impl Rule for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn check(&self, _: &CheckRequest) -> Option<Hit> {
            Some(Hit {
                score: self.1,
                action: None,
            })
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
            "Yes, score=5.5 rules=A,B"
        );
        assert_eq!(header(&verdict, "X-Mailfleet-Verdict"), "junk");
    }

    #[test]
    fn below_threshold_is_accepted() {
        let rules = RuleSet::new(vec![Box::new(Fixed("A", 4.9))]);
        let verdict = rules.evaluate(&request(b"\r\n"));
        assert_eq!(verdict.action(), Action::Accept);
        assert_eq!(header(&verdict, "X-Spam-Status"), "No, score=4.9 rules=A");
    }
}
