//! Scoring quality on a labelled corpus the test generates (seeded, no
//! downloads): spam (pharmacy, lottery, phishing, crypto, loan offers) and
//! ham (work, family, orders, newsletters) drawn from overlapping
//! vocabularies. Prints precision and recall of the rules alone and of the
//! rules with the Bayesian classifier after training on a separate half,
//! and shows the classifier learns. Also: the Bayes stores (memory,
//! SQLite, Redis when `MAILFLEET_TEST_REDIS_URL` is set). Greylisting is
//! in `greylist.rs`.

use std::sync::Arc;

use mailfleet_filter::Engine;
use mailfleet_filter::analysis::Analysis;
use mailfleet_filter::bayes::Bayes;
use mailfleet_proto::filter::{Action, CheckRequest};
use mailfleet_runtime::config::Filter as FilterConfig;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const HAM_WORDS: &[&str] = &[
    "meeting",
    "agenda",
    "tomorrow",
    "project",
    "review",
    "draft",
    "budget",
    "quarter",
    "team",
    "schedule",
    "lunch",
    "dinner",
    "weekend",
    "kids",
    "school",
    "photos",
    "holiday",
    "invoice",
    "order",
    "shipped",
    "tracking",
    "delivery",
    "attached",
    "notes",
    "slides",
    "feedback",
    "release",
    "deadline",
    "thanks",
    "regards",
    "cheers",
    "minutes",
    "call",
    "office",
    "report",
    "colleague",
    "migration",
    "database",
    "server",
    "deploy",
    "ticket",
    "customer",
    "newsletter",
    "article",
    "conference",
    "talk",
    "library",
    "garden",
    "recipe",
    "birthday",
];
const SPAM_WORDS: &[&str] = &[
    "viagra",
    "pills",
    "pharmacy",
    "discount",
    "winner",
    "lottery",
    "prize",
    "claim",
    "urgent",
    "verify",
    "account",
    "suspended",
    "password",
    "bitcoin",
    "crypto",
    "investment",
    "profit",
    "guaranteed",
    "loan",
    "approved",
    "credit",
    "cash",
    "free",
    "offer",
    "limited",
    "act",
    "now",
    "click",
    "unsubscribe",
    "million",
    "inheritance",
    "beneficiary",
    "transfer",
    "casino",
    "bonus",
    "weight",
    "miracle",
    "cheap",
    "replica",
    "watches",
    "exclusive",
];
/// Words both classes use, so the classifier has to weigh evidence.
const SHARED_WORDS: &[&str] = &[
    "please",
    "today",
    "your",
    "account",
    "order",
    "price",
    "new",
    "information",
    "update",
    "team",
    "customer",
    "email",
    "service",
    "time",
    "week",
    "money",
    "payment",
    "details",
];

#[derive(Clone)]
struct Sample {
    spam: bool,
    message: Vec<u8>,
    from_domain: String,
}

/// A sentence mostly of `words`, with 40% shared words and 12% words of
/// the other class (ham mentions offers, spam borrows business words).
fn sentence(rng: &mut StdRng, words: &[&str], len: usize) -> String {
    let other = if std::ptr::eq(words, HAM_WORDS) {
        SPAM_WORDS
    } else {
        HAM_WORDS
    };
    let mut out: Vec<&str> = Vec::with_capacity(len);
    for _ in 0..len {
        let roll: f64 = rng.random();
        let pool = if roll < 0.4 {
            SHARED_WORDS
        } else if roll < 0.52 {
            other
        } else {
            words
        };
        out.push(pool.choose(rng).expect("non-empty"));
    }
    let mut text = out.join(" ");
    if let Some(first) = text.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    text.push('.');
    text
}

fn ham(rng: &mut StdRng, n: usize) -> Sample {
    let domains = ["colleagues.test", "family.test", "shop.test", "news.test"];
    let domain = domains[n % domains.len()];
    let subject = sentence(rng, HAM_WORDS, 4);
    let body: Vec<String> = (0..rng.random_range(3..8))
        .map(|_| {
            let len = rng.random_range(6..14);
            sentence(rng, HAM_WORDS, len)
        })
        .collect();
    let headers = format!(
        "From: Person {n} <p{n}@{domain}>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <h{n}@{domain}>\r\n"
    );
    let message = if domain == "news.test" {
        // Newsletters: HTML only, links whose text matches their target.
        format!(
            "{headers}Content-Type: text/html\r\n\r\n<p>{}</p>\r\n\
             <p><a href=\"https://news.test/a/{n}\">news.test/a/{n}</a></p>\r\n",
            body.join("</p><p>")
        )
    } else {
        format!("{headers}\r\n{}\r\n", body.join("\r\n"))
    };
    Sample {
        spam: false,
        message: message.into_bytes(),
        from_domain: domain.into(),
    }
}

fn spam(rng: &mut StdRng, n: usize) -> Sample {
    let domain = format!("bulk{}.test", n % 7);
    let mut subject = sentence(rng, SPAM_WORDS, 4);
    if n.is_multiple_of(3) {
        subject = subject.to_uppercase();
    }
    let body: Vec<String> = (0..rng.random_range(2..6))
        .map(|_| {
            let len = rng.random_range(6..14);
            sentence(rng, SPAM_WORDS, len)
        })
        .collect();
    let mut headers = format!(
        "From: \"Support\" <offers{n}@{domain}>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
    );
    // Spammers skip headers and use Reply-To elsewhere in some messages.
    if n.is_multiple_of(2) {
        headers.push_str("Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n");
    }
    if n % 4 == 1 {
        headers.push_str("Reply-To: collect@drop.test\r\n");
    }
    let message = match n % 5 {
        // HTML-only with a link whose text names another domain.
        0 => format!(
            "{headers}Content-Type: text/html\r\n\r\n<p>{}</p>\r\n\
             <p><a href=\"http://198.51.100.{}/login\">https://www.bank.test/secure</a></p>\r\n",
            body.join("</p><p>"),
            n % 250
        ),
        _ => format!("{headers}\r\n{}\r\n", body.join("\r\n")),
    };
    Sample {
        spam: true,
        message: message.into_bytes(),
        from_domain: domain,
    }
}

fn corpus(seed: u64, per_class: usize) -> Vec<Sample> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for n in 0..per_class {
        out.push(ham(&mut rng, n));
        out.push(spam(&mut rng, n));
    }
    out
}

fn request(sample: &Sample) -> CheckRequest {
    CheckRequest {
        client_ip: "192.0.2.77".into(),
        helo: format!("mail.{}", sample.from_domain),
        mail_from: format!("bounce@{}", sample.from_domain),
        rcpt_to: vec!["alice@example.org".into()],
        authenticated: false,
        message: sample.message.clone(),
    }
}

struct Scores {
    tp: usize,
    fp: usize,
    fn_: usize,
    tn: usize,
}

impl Scores {
    fn precision(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fp).max(1) as f64
    }
    fn recall(&self) -> f64 {
        self.tp as f64 / (self.tp + self.fn_).max(1) as f64
    }
}

async fn score(engine: &Engine, samples: &[Sample]) -> Scores {
    let mut s = Scores {
        tp: 0,
        fp: 0,
        fn_: 0,
        tn: 0,
    };
    for sample in samples {
        let verdict = engine.evaluate(request(sample)).await;
        let flagged = matches!(verdict.action(), Action::Junk | Action::Reject);
        match (sample.spam, flagged) {
            (true, true) => s.tp += 1,
            (false, true) => s.fp += 1,
            (true, false) => s.fn_ += 1,
            (false, false) => s.tn += 1,
        }
    }
    s
}

#[tokio::test]
async fn corpus_precision_and_recall_with_rules_and_bayes() {
    let train = corpus(7, 150);
    let test = corpus(99, 150);
    let bayes = Arc::new(Bayes::memory());
    let engine = Engine::from_config(
        &FilterConfig::default(),
        "mx.example.org",
        None,
        None,
        Some(bayes.clone()),
    )
    .unwrap();

    let rules_only = score(&engine, &test).await;
    println!(
        "rules only:  precision {:.3} recall {:.3} (tp {} fp {} fn {} tn {})",
        rules_only.precision(),
        rules_only.recall(),
        rules_only.tp,
        rules_only.fp,
        rules_only.fn_,
        rules_only.tn
    );

    for sample in &train {
        bayes
            .learn(&Analysis::new(&request(sample)), sample.spam)
            .await
            .unwrap();
    }
    let with_bayes = score(&engine, &test).await;
    println!(
        "rules+bayes: precision {:.3} recall {:.3} (tp {} fp {} fn {} tn {})",
        with_bayes.precision(),
        with_bayes.recall(),
        with_bayes.tp,
        with_bayes.fp,
        with_bayes.fn_,
        with_bayes.tn
    );
    assert_eq!(rules_only.fp, 0, "rules flag no ham");
    assert!(
        with_bayes.precision() >= 0.98,
        "precision {}",
        with_bayes.precision()
    );
    assert!(
        with_bayes.recall() >= 0.85,
        "recall {}",
        with_bayes.recall()
    );
    assert!(
        with_bayes.recall() > rules_only.recall(),
        "training adds recall"
    );
}

#[tokio::test]
async fn bayes_learns_in_memory_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        ("memory", Bayes::memory()),
        (
            "sqlite",
            Bayes::sqlite(&dir.path().join("bayes.db")).await.unwrap(),
        ),
    ];
    for (name, bayes) in stores {
        learns(name, &bayes).await;
    }
}

#[tokio::test]
async fn bayes_learns_in_redis() {
    let Ok(url) = std::env::var("MAILFLEET_TEST_REDIS_URL") else {
        panic!(
            "MAILFLEET_TEST_REDIS_URL is not set: the Redis Bayes store needs a Redis \
             server, e.g. MAILFLEET_TEST_REDIS_URL=redis://127.0.0.1:6379"
        );
    };
    let bayes = Bayes::redis(&url).await.unwrap();
    // Other runs may have trained this server already: the test only needs
    // the classifier to lean the right way after its own training.
    learns("redis", &bayes).await;
}

async fn learns(name: &str, bayes: &Bayes) {
    let train = corpus(3, 20);
    let probe = corpus(4, 10);
    let spam_probe = Analysis::new(&request(&probe[1]));
    let ham_probe = Analysis::new(&request(&probe[0]));
    let (spam_before, ham_before) = bayes.trained().await.unwrap();
    if spam_before < 5 && ham_before < 5 {
        assert_eq!(
            bayes.classify(&spam_probe).await.unwrap(),
            None,
            "{name}: untrained"
        );
    }
    for sample in &train {
        bayes
            .learn(&Analysis::new(&request(sample)), sample.spam)
            .await
            .unwrap();
    }
    let (spam_after, ham_after) = bayes.trained().await.unwrap();
    assert_eq!(spam_after - spam_before, 20, "{name}");
    assert_eq!(ham_after - ham_before, 20, "{name}");
    let p_spam = bayes.classify(&spam_probe).await.unwrap().unwrap();
    let p_ham = bayes.classify(&ham_probe).await.unwrap().unwrap();
    println!("{name}: p(spam) of a spam probe {p_spam:.3}, of a ham probe {p_ham:.3}");
    assert!(p_spam > 0.9, "{name}: {p_spam}");
    assert!(p_ham < 0.1, "{name}: {p_ham}");
}
