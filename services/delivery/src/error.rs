//! The one place a delivery failure is classified: transient (retry with
//! backoff) or permanent (bounce). Everything that can go wrong — DNS, the
//! connection, the remote server's replies, mailstore — ends up as a
//! [`DeliveryError`] carrying a [`Diagnostic`] with what a DSN reports:
//! the RFC 3463 status, the remote MTA and its reply.

use std::fmt;

use crate::client::{SmtpError, Stage};
use crate::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again later (4xx, network, DNS trouble).
    #[error("{0}")]
    Transient(Diagnostic),
    /// Final: the sender gets a DSN.
    #[error("{0}")]
    Permanent(Diagnostic),
}

/// What went wrong, in the terms of RFC 3464 §2.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// RFC 3463 status code, e.g. `5.1.1`.
    pub status: String,
    /// The MX host whose reply this is (`Remote-MTA`).
    pub remote_mta: Option<String>,
    /// The remote server's reply (`Diagnostic-Code: smtp; ...`).
    pub reply: Option<Reply>,
    /// A human-readable account, for logs, queue state and the DSN text.
    pub text: String,
}

impl Diagnostic {
    /// A failure of our own (DNS, policy, expiry), not a remote reply.
    pub fn local(status: &str, text: impl Into<String>) -> Diagnostic {
        Diagnostic {
            status: status.to_owned(),
            remote_mta: None,
            reply: None,
            text: text.into(),
        }
    }

    /// `reply` from `mx`; the status is the reply's enhanced code, or the
    /// generic `X.0.0` of its class (RFC 3463 §3.1).
    pub fn remote(mx: &str, reply: Reply) -> Diagnostic {
        let status = reply
            .enhanced_status()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{}.0.0", (reply.code / 100).clamp(4, 5)));
        Diagnostic {
            status,
            remote_mta: Some(mx.to_owned()),
            text: format!("{mx} said: {reply}"),
            reply: Some(reply),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl DeliveryError {
    pub fn diagnostic(&self) -> &Diagnostic {
        match self {
            DeliveryError::Transient(d) | DeliveryError::Permanent(d) => d,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent(_))
    }

    /// A recipient's reply: 5xx is final, anything else not positive is
    /// transient (RFC 5321 §4.2.1).
    pub fn from_reply(mx: &str, reply: Reply) -> DeliveryError {
        if reply.is_permanent() {
            DeliveryError::Permanent(Diagnostic::remote(mx, reply))
        } else {
            DeliveryError::Transient(Diagnostic::remote(mx, reply))
        }
    }

    /// A whole transaction with `mx` failed.
    pub fn from_smtp(mx: &str, error: SmtpError) -> DeliveryError {
        let text = format!("{mx}: {error}");
        match error {
            SmtpError::Rejected { reply, .. } => DeliveryError::from_reply(mx, reply),
            SmtpError::TooBig { .. } => DeliveryError::Permanent(Diagnostic {
                remote_mta: Some(mx.to_owned()),
                ..Diagnostic::local("5.3.4", text)
            }),
            SmtpError::BadAddress(_) => DeliveryError::Permanent(Diagnostic::local("5.1.3", text)),
            SmtpError::NoSmtpUtf8 => DeliveryError::Permanent(Diagnostic {
                remote_mta: Some(mx.to_owned()),
                ..Diagnostic::local("5.6.7", text)
            }),
            // RFC 3463: 4.4.1 no answer from host, 4.4.2 bad connection,
            // 4.7.0 for a failed security negotiation.
            SmtpError::Io {
                stage: Stage::Connect,
                ..
            }
            | SmtpError::Timeout {
                stage: Stage::Connect,
            } => DeliveryError::Transient(Diagnostic::local("4.4.1", text)),
            SmtpError::Tls(_) | SmtpError::Auth(_) => {
                DeliveryError::Transient(Diagnostic::local("4.7.0", text))
            }
            _ => DeliveryError::Transient(Diagnostic::local("4.4.2", text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = DeliveryError::from_reply("mx", Reply::new(550, "5.1.1 no such user"));
        assert!(e.is_permanent());
        assert_eq!(e.diagnostic().status, "5.1.1");
        assert_eq!(e.diagnostic().remote_mta.as_deref(), Some("mx"));
        let e = DeliveryError::from_reply("mx", Reply::new(451, "try later"));
        assert!(!e.is_permanent());
        assert_eq!(e.diagnostic().status, "4.0.0");
        let e = DeliveryError::from_smtp(
            "mx",
            SmtpError::Timeout {
                stage: Stage::Connect,
            },
        );
        assert_eq!(e.diagnostic().status, "4.4.1");
        assert!(!e.is_permanent());
        let e = DeliveryError::from_smtp("mx", SmtpError::TooBig { size: 2, limit: 1 });
        assert!(e.is_permanent());
        assert_eq!(e.diagnostic().status, "5.3.4");
    }
}
