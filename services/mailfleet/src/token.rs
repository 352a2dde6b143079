//! The admin API's bearer token: `MAILFLEET_ADMIN_TOKEN` on both sides, or,
//! when the server has none, one it generates into `<data-dir>/admin-token`
//! (mode 0600) where the CLI on the same machine finds it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub const TOKEN_ENV: &str = "MAILFLEET_ADMIN_TOKEN";

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// The server side: the env token, else the stored one, else a new one.
pub fn server_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = env_token() {
        return Ok(token);
    }
    let path = token_path(data_dir);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok(existing);
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(token)
}

/// The CLI side: the env token, else the one in the data directory.
pub fn client_token(data_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = env_token() {
        return Ok(token);
    }
    let path = token_path(data_dir);
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no admin token: set {TOKEN_ENV} or point --data-dir at the server's data directory ({} not readable)",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}

fn env_token() -> Option<String> {
    std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())
}
