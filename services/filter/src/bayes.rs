//! The Bayesian classifier: messages are split into tokens, operators
//! train it with labelled messages (`mailfleet filter train --spam|--ham`),
//! and a message's spam probability combines its tokens' probabilities
//! with Robinson's f(w) and Fisher's chi-square (the method of
//! SpamBayes/SpamAssassin). Token counts live in SQLite on a single node
//! (`<data_dir>/bayes.db`) and in Redis in a cluster, or in memory (tests).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use crate::analysis::Analysis;

/// Messages of each class needed before the classifier gives an opinion.
pub const MIN_TRAINED: u64 = 5;
/// Distinct tokens of one message considered (the most telling ones win).
const MAX_TOKENS: usize = 600;
/// Robinson's strength of the background (s) and its probability (x).
const S: f64 = 1.0;
const X: f64 = 0.5;
/// Tokens whose probability is within this of 0.5 are ignored.
const MIN_DEVIATION: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum BayesError {
    #[error("bayes store (sqlite): {0}")]
    Sqlite(#[from] sqlx::Error),
    #[error("bayes store (redis): {0}")]
    Redis(#[from] redis::RedisError),
}

/// Where token counts are kept.
pub enum Store {
    Memory(Mutex<Counts>),
    Sqlite(sqlx::SqlitePool),
    Redis(redis::aio::ConnectionManager),
}

/// Token counts in memory: per token (spam, ham), and messages per class.
#[derive(Default)]
pub struct Counts {
    tokens: HashMap<String, (u64, u64)>,
    spam: u64,
    ham: u64,
}

const REDIS_SPAM: &str = "mailfleet:bayes:spam";
const REDIS_HAM: &str = "mailfleet:bayes:ham";
const REDIS_TOTALS: &str = "mailfleet:bayes:totals";

/// The classifier over a [`Store`].
pub struct Bayes {
    store: Store,
}

impl Bayes {
    pub fn memory() -> Bayes {
        Bayes {
            store: Store::Memory(Mutex::new(Counts::default())),
        }
    }

    /// Opens (creating) the SQLite store at `path`.
    pub async fn sqlite(path: &Path) -> Result<Bayes, BayesError> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bayes_tokens (token TEXT PRIMARY KEY, spam INTEGER NOT NULL DEFAULT 0, ham INTEGER NOT NULL DEFAULT 0)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bayes_totals (class TEXT PRIMARY KEY, messages INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Bayes {
            store: Store::Sqlite(pool),
        })
    }

    /// Connects to Redis at `url` (the cluster's counters backend).
    pub async fn redis(url: &str) -> Result<Bayes, BayesError> {
        let client = redis::Client::open(url)?;
        let manager = redis::aio::ConnectionManager::new(client).await?;
        Ok(Bayes {
            store: Store::Redis(manager),
        })
    }

    /// Learns one message as spam or ham.
    pub async fn learn(&self, message: &Analysis, spam: bool) -> Result<(), BayesError> {
        let tokens = tokens(message);
        match &self.store {
            Store::Memory(counts) => {
                let mut counts = counts.lock().expect("bayes lock");
                for token in tokens {
                    let entry = counts.tokens.entry(token).or_default();
                    if spam { entry.0 += 1 } else { entry.1 += 1 }
                }
                if spam {
                    counts.spam += 1
                } else {
                    counts.ham += 1
                }
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let column = if spam { "spam" } else { "ham" };
                let upsert = if spam {
                    "INSERT INTO bayes_tokens (token, spam) VALUES (?, 1) \
                     ON CONFLICT(token) DO UPDATE SET spam = spam + 1"
                } else {
                    "INSERT INTO bayes_tokens (token, ham) VALUES (?, 1) \
                     ON CONFLICT(token) DO UPDATE SET ham = ham + 1"
                };
                for token in &tokens {
                    sqlx::query(upsert).bind(token).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO bayes_totals (class, messages) VALUES (?, 1) \
                     ON CONFLICT(class) DO UPDATE SET messages = messages + 1",
                )
                .bind(column)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Store::Redis(manager) => {
                let mut conn = manager.clone();
                let key = if spam { REDIS_SPAM } else { REDIS_HAM };
                let mut pipe = redis::pipe();
                pipe.atomic();
                for token in &tokens {
                    pipe.hincr(key, token, 1).ignore();
                }
                pipe.hincr(REDIS_TOTALS, if spam { "spam" } else { "ham" }, 1)
                    .ignore();
                pipe.query_async::<()>(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// Messages trained per class: (spam, ham).
    pub async fn trained(&self) -> Result<(u64, u64), BayesError> {
        match &self.store {
            Store::Memory(counts) => {
                let counts = counts.lock().expect("bayes lock");
                Ok((counts.spam, counts.ham))
            }
            Store::Sqlite(pool) => {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as("SELECT class, messages FROM bayes_totals")
                        .fetch_all(pool)
                        .await?;
                let get = |class: &str| {
                    rows.iter()
                        .find(|(c, _)| c == class)
                        .map_or(0, |(_, n)| (*n).max(0) as u64)
                };
                Ok((get("spam"), get("ham")))
            }
            Store::Redis(manager) => {
                let mut conn = manager.clone();
                let (spam, ham): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
                    .arg(REDIS_TOTALS)
                    .arg("spam")
                    .arg("ham")
                    .query_async(&mut conn)
                    .await?;
                Ok((spam.unwrap_or(0), ham.unwrap_or(0)))
            }
        }
    }

    async fn counts(&self, tokens: &[String]) -> Result<Vec<(u64, u64)>, BayesError> {
        match &self.store {
            Store::Memory(counts) => {
                let counts = counts.lock().expect("bayes lock");
                Ok(tokens
                    .iter()
                    .map(|t| counts.tokens.get(t).copied().unwrap_or_default())
                    .collect())
            }
            Store::Sqlite(pool) => {
                let mut found: HashMap<String, (u64, u64)> = HashMap::new();
                // SQLite allows 32766 variables; chunks keep each query small.
                for chunk in tokens.chunks(200) {
                    let placeholders = vec!["?"; chunk.len()].join(",");
                    let sql = format!(
                        "SELECT token, spam, ham FROM bayes_tokens WHERE token IN ({placeholders})"
                    );
                    // Only `?` placeholders are formatted in: the tokens are bound.
                    let mut query =
                        sqlx::query_as::<_, (String, i64, i64)>(sqlx::AssertSqlSafe(sql));
                    for token in chunk {
                        query = query.bind(token);
                    }
                    for (token, spam, ham) in query.fetch_all(pool).await? {
                        found.insert(token, (spam.max(0) as u64, ham.max(0) as u64));
                    }
                }
                Ok(tokens
                    .iter()
                    .map(|t| found.get(t).copied().unwrap_or_default())
                    .collect())
            }
            Store::Redis(manager) => {
                if tokens.is_empty() {
                    return Ok(Vec::new());
                }
                let mut conn = manager.clone();
                let (spam, ham): (Vec<Option<u64>>, Vec<Option<u64>>) = redis::pipe()
                    .cmd("HMGET")
                    .arg(REDIS_SPAM)
                    .arg(tokens)
                    .cmd("HMGET")
                    .arg(REDIS_HAM)
                    .arg(tokens)
                    .query_async(&mut conn)
                    .await?;
                Ok(spam
                    .into_iter()
                    .zip(ham)
                    .map(|(s, h)| (s.unwrap_or(0), h.unwrap_or(0)))
                    .collect())
            }
        }
    }

    /// The spam probability of a message, or `None` while fewer than
    /// [`MIN_TRAINED`] messages of either class were learnt.
    pub async fn classify(&self, message: &Analysis) -> Result<Option<f64>, BayesError> {
        let (spam_total, ham_total) = self.trained().await?;
        if spam_total < MIN_TRAINED || ham_total < MIN_TRAINED {
            return Ok(None);
        }
        let tokens = tokens(message);
        let counts = self.counts(&tokens).await?;
        Ok(Some(combine(&counts, spam_total, ham_total)))
    }
}

/// Robinson's f(w) per token, combined with Fisher's method (Robinson,
/// "A Statistical Approach to the Spam Problem", 2003).
fn combine(counts: &[(u64, u64)], spam_total: u64, ham_total: u64) -> f64 {
    let mut probabilities: Vec<f64> = counts
        .iter()
        .filter(|(s, h)| s + h > 0)
        .map(|&(s, h)| {
            let spam_freq = s as f64 / spam_total.max(1) as f64;
            let ham_freq = h as f64 / ham_total.max(1) as f64;
            let p = spam_freq / (spam_freq + ham_freq);
            let n = (s + h) as f64;
            (S * X + n * p) / (S + n)
        })
        .filter(|p| (p - 0.5).abs() >= MIN_DEVIATION)
        .collect();
    if probabilities.is_empty() {
        return 0.5;
    }
    // The most telling 150 tokens.
    probabilities.sort_by(|a, b| (b - 0.5).abs().total_cmp(&(a - 0.5).abs()));
    probabilities.truncate(150);
    let n = probabilities.len();
    let ln_spam: f64 = probabilities
        .iter()
        .map(|p| (1.0 - p).max(1e-200).ln())
        .sum();
    let ln_ham: f64 = probabilities.iter().map(|p| p.max(1e-200).ln()).sum();
    let h = chi2_q(-2.0 * ln_spam, 2 * n);
    let s = chi2_q(-2.0 * ln_ham, 2 * n);
    // Spamminess 1-h against hamminess 1-s (SpamBayes).
    (1.0 + s - h) / 2.0
}

/// The chi-square survival function for even degrees of freedom.
fn chi2_q(x2: f64, degrees: usize) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..degrees / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The tokens of a message: lowercase words of the subject and text (3 to
/// 24 characters), subject words marked, the From domain, and the linked
/// domains. Unique, at most [`MAX_TOKENS`].
pub fn tokens(message: &Analysis) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut push = |token: String| {
        if out.len() < MAX_TOKENS && seen.insert(token.clone()) {
            out.push(token);
        }
    };
    for word in words(&message.subject) {
        push(format!("subject:{word}"));
    }
    if let Some(from) = &message.from_address {
        push(format!("from:{}", crate::auth::domain_of(from)));
    }
    for domain in &message.body_domains {
        push(format!("url:{domain}"));
    }
    for word in words(&message.text) {
        push(word);
    }
    out
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '$' || c == '!'))
        .filter(|w| (3..=24).contains(&w.chars().count()))
        .map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_leans_the_right_way() {
        // Tokens seen only in spam push towards 1, only in ham towards 0.
        assert!(combine(&[(20, 0), (15, 1)], 20, 20) > 0.9);
        assert!(combine(&[(0, 20), (1, 15)], 20, 20) < 0.1);
        assert_eq!(combine(&[], 20, 20), 0.5);
        assert_eq!(combine(&[(10, 10)], 20, 20), 0.5);
    }

    #[test]
    fn chi2_bounds() {
        assert!((chi2_q(0.0, 4) - 1.0).abs() < 1e-9);
        assert!(chi2_q(100.0, 4) < 1e-6);
    }
}
