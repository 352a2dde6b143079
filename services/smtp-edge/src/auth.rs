//! SMTP AUTH (RFC 4954) with the SASL mechanisms PLAIN (RFC 4616) and LOGIN
//! (draft-murchison-sasl-login), without I/O: base64 in, credentials out.
//! The session drives the exchange; the directory checks the password.

use async_trait::async_trait;

/// What the directory says of a user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password is right; the account it belongs to.
    Ok { account: String },
    /// Wrong user name or password (never says which).
    Invalid,
}

#[derive(Debug, thiserror::Error)]
#[error("authentication backend failed: {0}")]
pub struct AuthError(pub String);

/// `Directory.Authenticate`, as the session sees it.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, user: &str, password: &str) -> Result<AuthOutcome, AuthError>;
}

/// A mechanism this server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// Where a multi-line AUTH exchange is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// PLAIN sent without an initial response: the next line is it.
    PlainResponse,
    /// LOGIN: the next line is the user name.
    LoginUser,
    /// LOGIN: the next line is the password of `user`.
    LoginPassword { user: String },
}

/// Why a client's SASL data was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// RFC 4954 §4: `*` cancels the exchange.
    #[error("cancelled")]
    Cancelled,
    #[error("not base64")]
    Base64,
    #[error("malformed credentials")]
    Malformed,
}

/// `334 VXNlcm5hbWU6` / `334 UGFzc3dvcmQ6`: LOGIN's prompts, base64.
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// Decodes one client line of the exchange (without its CRLF).
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim();
    if line == "*" {
        return Err(SaslError::Cancelled);
    }
    // RFC 4954 §4: `=` is an empty initial response.
    if line == "=" {
        return Ok(Vec::new());
    }
    mailfleet_runtime::base64::decode(line.as_bytes()).ok_or(SaslError::Base64)
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. An authzid other than
/// the authcid (acting as someone else) is refused.
pub fn parse_plain(data: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = data.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authzid, user, password) = (text(authzid)?, text(authcid)?, text(password)?);
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return Err(SaslError::Malformed);
    }
    Ok((user, password))
}

/// A LOGIN user name or password: UTF-8 without NUL.
pub fn parse_login_field(data: &[u8]) -> Result<String, SaslError> {
    if data.contains(&0) {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(data.to_vec()).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_base64() {
        assert_eq!(decode_response(LOGIN_USER_PROMPT).unwrap(), b"Username:");
    }

    #[test]
    fn plain() {
        let data = decode_response("AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==").unwrap();
        assert_eq!(
            parse_plain(&data),
            Ok(("alice@example.org".into(), "secret".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Ok(("alice".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0alice"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0a\0b\0c"), Err(SaslError::Malformed));
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("="), Ok(Vec::new()));
        assert_eq!(decode_response("??"), Err(SaslError::Base64));
    }
}
