//! The directory: domains, accounts, recipient lookup and password checks.

use std::sync::{LazyLock, OnceLock};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sqlx::Row;
use tokio::sync::Semaphore;

use super::names::{self, DEFAULT_MAILBOXES};
use super::{Result, Store, StoreError, now_ms, release_blob};

/// Where an RCPT TO address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The domain is not one of ours.
    Remote,
    /// Ours, and this account receives it (directly, through an alias with
    /// one target, or as the domain's catch-all).
    Local { account: String },
    /// Ours: an alias delivering to several accounts.
    Alias { accounts: Vec<String> },
    /// Ours, but nobody by that name.
    UnknownUser,
}

impl Store {
    /// Adds a domain; true when it is new. Adding an existing domain is not
    /// an error, so provisioning scripts can be re-run.
    pub async fn add_domain(&self, name: &str) -> Result<bool> {
        let name = names::domain(name)?;
        let row = sqlx::query(
            "INSERT INTO domains (name, created_at_ms) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(&name)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub async fn list_domains(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT name FROM domains ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Creates an account with its default mailboxes. The domain must be
    /// ours already.
    pub async fn add_user(&self, address: &str, password: &str) -> Result<()> {
        let (address, domain) = names::address(address)?;
        if password.is_empty() {
            return Err(StoreError::Invalid("password must not be empty".into()));
        }
        let hash = hash_password(password.to_owned()).await?;

        let mut tx = self.begin_write().await?;
        let domain_id: i64 = sqlx::query("SELECT id FROM domains WHERE name = $1")
            .bind(&domain)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::FailedPrecondition(format!("domain {domain} is not configured"))
            })?
            .try_get(0)?;
        let now = now_ms();
        let account_id: i64 = sqlx::query(
            "INSERT INTO accounts (domain_id, address, password_hash, created_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (address) DO NOTHING RETURNING id",
        )
        .bind(domain_id)
        .bind(&address)
        .bind(&hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::AlreadyExists(format!("user {address}")))?
        .try_get(0)?;
        // RFC 3501 §2.3.1.1: UIDVALIDITY must change if a mailbox name is
        // reused with other UIDs; seconds since the epoch do that.
        let uid_validity = (now / 1000).clamp(1, i64::from(u32::MAX));
        for (name, special_use) in DEFAULT_MAILBOXES {
            sqlx::query(
                "INSERT INTO mailboxes (account_id, name, special_use, uid_validity, uid_next, highest_modseq) \
                 VALUES ($1, $2, $3, $4, 1, 1)",
            )
            .bind(account_id)
            .bind(name)
            .bind(special_use)
            .bind(uid_validity)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(account = %address, "user added");
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT address FROM accounts ORDER BY address")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Deletes an account, its mailboxes and messages, and the blobs no
    /// other message refers to.
    pub async fn delete_user(&self, address: &str) -> Result<()> {
        let (address, _) = names::address(address)?;
        let mut tx = self.begin_write().await?;
        let account_id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(&address)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("user {address}")))?
            .try_get(0)?;
        let blobs: Vec<String> = sqlx::query(
            "SELECT m.blob FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id \
             WHERE b.account_id = $1",
        )
        .bind(account_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        let mut unreferenced = Vec::new();
        for blob in blobs {
            if release_blob(&mut tx, &blob).await? {
                unreferenced.push(blob);
            }
        }
        for statement in [
            "DELETE FROM deliveries WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = $1)",
            "DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE account_id = $1)",
            "DELETE FROM mailboxes WHERE account_id = $1",
            "DELETE FROM aliases WHERE account_id = $1",
            "UPDATE domains SET catch_all_account_id = NULL WHERE catch_all_account_id = $1",
            "DELETE FROM accounts WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.delete_unreferenced_blobs(&unreferenced).await;
        tracing::info!(account = %address, "user deleted");
        Ok(())
    }

    /// Resolves an RCPT TO address: an account, else an alias, else the
    /// domain's catch-all. Domain and local part are compared
    /// case-insensitively.
    pub async fn lookup_recipient(&self, address: &str) -> Result<Lookup> {
        let (address, domain) = names::address(address)?;
        let Some(domain_row) =
            sqlx::query("SELECT d.id, a.address FROM domains d LEFT JOIN accounts a ON a.id = d.catch_all_account_id WHERE d.name = $1")
                .bind(&domain)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(Lookup::Remote);
        };
        let account = sqlx::query("SELECT address FROM accounts WHERE address = $1")
            .bind(&address)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = account {
            return Ok(Lookup::Local {
                account: row.try_get(0)?,
            });
        }
        let mut accounts = self.alias_targets(&address).await?;
        if accounts.len() == 1 {
            return Ok(Lookup::Local {
                account: accounts.remove(0),
            });
        }
        if !accounts.is_empty() {
            return Ok(Lookup::Alias { accounts });
        }
        Ok(match domain_row.try_get::<Option<String>, _>(1)? {
            Some(account) => Lookup::Local { account },
            None => Lookup::UnknownUser,
        })
    }

    async fn alias_targets(&self, address: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT a.address FROM aliases x JOIN accounts a ON a.id = x.account_id \
             WHERE x.address = $1 ORDER BY a.address",
        )
        .bind(address)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Makes `address` (of one of our domains, not an account) deliver to
    /// `accounts`, replacing earlier targets.
    pub async fn put_alias(&self, address: &str, accounts: &[String]) -> Result<()> {
        let (address, domain) = names::address(address)?;
        if accounts.is_empty() {
            return Err(StoreError::Invalid(
                "an alias needs at least one account".into(),
            ));
        }
        let mut tx = self.begin_write().await?;
        let ours = sqlx::query("SELECT id FROM domains WHERE name = $1")
            .bind(&domain)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !ours {
            return Err(StoreError::FailedPrecondition(format!(
                "domain {domain} is not configured"
            )));
        }
        let is_account = sqlx::query("SELECT id FROM accounts WHERE address = $1")
            .bind(&address)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if is_account {
            return Err(StoreError::AlreadyExists(format!("user {address}")));
        }
        sqlx::query("DELETE FROM aliases WHERE address = $1")
            .bind(&address)
            .execute(&mut *tx)
            .await?;
        for account in accounts {
            let (account, _) = names::address(account)?;
            let account_id: i64 = sqlx::query("SELECT id FROM accounts WHERE address = $1")
                .bind(&account)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("user {account}")))?
                .try_get(0)?;
            sqlx::query(
                "INSERT INTO aliases (address, account_id, created_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (address, account_id) DO NOTHING",
            )
            .bind(&address)
            .bind(account_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(alias = %address, targets = accounts.len(), "alias set");
        Ok(())
    }

    pub async fn delete_alias(&self, address: &str) -> Result<()> {
        let (address, _) = names::address(address)?;
        let deleted = sqlx::query("DELETE FROM aliases WHERE address = $1")
            .bind(&address)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("alias {address}")));
        }
        Ok(())
    }

    /// Every alias with its accounts, by address.
    pub async fn list_aliases(&self) -> Result<Vec<(String, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT x.address, a.address FROM aliases x JOIN accounts a ON a.id = x.account_id \
             ORDER BY x.address, a.address",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for row in &rows {
            let alias: String = row.try_get(0)?;
            let account: String = row.try_get(1)?;
            match out.last_mut() {
                Some((last, accounts)) if *last == alias => accounts.push(account),
                _ => out.push((alias, vec![account])),
            }
        }
        Ok(out)
    }

    /// Sets (or with an empty `account`, removes) the catch-all of a domain:
    /// mail to unknown local parts goes to that account.
    pub async fn set_catch_all(&self, domain: &str, account: &str) -> Result<()> {
        let domain = names::domain(domain)?;
        let account_id = if account.is_empty() {
            None
        } else {
            let (account, account_domain) = names::address(account)?;
            if account_domain != domain {
                // Not required by anything, but a catch-all in another
                // domain is almost always a typo.
                tracing::info!(%domain, %account, "catch-all account in another domain");
            }
            Some(self.account_id(&account).await?)
        };
        let updated = sqlx::query("UPDATE domains SET catch_all_account_id = $1 WHERE name = $2")
            .bind(account_id)
            .bind(&domain)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("domain {domain}")));
        }
        Ok(())
    }

    /// Sets an account's storage limit in bytes; 0 is unlimited.
    pub async fn set_quota(&self, address: &str, limit_bytes: u64) -> Result<()> {
        let (address, _) = names::address(address)?;
        let limit = i64::try_from(limit_bytes)
            .map_err(|_| StoreError::Invalid(format!("quota {limit_bytes} too large")))?;
        let updated = sqlx::query("UPDATE accounts SET quota_bytes = $1 WHERE address = $2")
            .bind(limit)
            .bind(&address)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("user {address}")));
        }
        tracing::info!(account = %address, limit_bytes, "quota set");
        Ok(())
    }

    /// Checks a password; `Some(account)` when it matches. An unknown user
    /// costs the same argon2 verification as a wrong password, so timing
    /// does not tell which accounts exist.
    pub async fn authenticate(&self, address: &str, password: &str) -> Result<Option<String>> {
        let stored = match names::address(address) {
            Ok((address, _)) => {
                sqlx::query("SELECT password_hash FROM accounts WHERE address = $1")
                    .bind(&address)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|row| row.try_get::<String, _>(0).map(|hash| (address, hash)))
                    .transpose()?
            }
            Err(_) => None,
        };
        let (account, hash) = match stored {
            Some((account, hash)) => (Some(account), hash),
            None => (None, dummy_hash().await?),
        };
        let ok = verify_password(password.to_owned(), hash).await?;
        Ok(account.filter(|_| ok))
    }
}

/// Argon2 computations running at once, process-wide. Each one takes
/// tens of milliseconds of CPU and 19 MiB of memory (the crate's default
/// m_cost): a burst of 200 logins without this bound held ~3.3 GB (found by
/// `mailfleet-loadtest idle`), and more hashes than cores only queue anyway.
static ARGON2_SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Argon2id with the crate's defaults (RFC 9106 second recommended
/// option), as a PHC string; on the blocking pool because it takes tens of
/// milliseconds of CPU.
async fn hash_password(password: String) -> Result<String> {
    let _slot = ARGON2_SLOTS
        .acquire()
        .await
        .map_err(|e| StoreError::Hash(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| StoreError::Hash(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> Result<bool> {
    let _slot = ARGON2_SLOTS
        .acquire()
        .await
        .map_err(|e| StoreError::Hash(e.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&hash) else {
            tracing::error!("stored password hash does not parse");
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .map_err(|e| StoreError::Hash(e.to_string()))
}

/// A hash of nothing anyone knows, verified against when the user does not
/// exist.
async fn dummy_hash() -> Result<String> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash.clone());
    }
    let hash = hash_password(format!("unknown-user-{}", now_ms())).await?;
    Ok(DUMMY.get_or_init(|| hash).clone())
}
