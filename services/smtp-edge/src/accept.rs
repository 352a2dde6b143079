//! The production [`Acceptor`]: at the end of DATA, ask the filter for a
//! verdict, prepend the verdict's headers and `Received:`, spool the blob,
//! enqueue the entry. DESIGN.md: `250` only after both are durable.
//! Then it records `received` and `verdict` in the message history
//! (`mailfleet trace`), in the background.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use mailfleet_proto::filter::filter_client::FilterClient;
use mailfleet_proto::filter::{Action, CheckRequest, Header, Verdict};
use mailfleet_proto::history::HistoryEvent;
use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
use mailfleet_runtime::Context;
use mailfleet_runtime::history::Recorder;
use std::sync::Arc;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::session::{AcceptError, Acceptor, Envelope};

/// How long the end of DATA waits for a verdict. RFC 5321 §4.5.3.2.7: the
/// client waits 10 minutes for the reply; stay well inside it.
const FILTER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct QueueAcceptor {
    ctx: Arc<Context>,
    filter: FilterClient<Channel>,
    history: Recorder,
}

impl QueueAcceptor {
    /// An acceptor with lazy channels to `services.filter_url` and (for
    /// the message history) `services.mailstore_url`.
    pub fn new(ctx: Arc<Context>) -> Result<Self, tonic::transport::Error> {
        let channel = mailfleet_runtime::grpc::lazy_channel(&ctx.config.services.filter_url)?;
        let filter = FilterClient::new(channel)
            .max_encoding_message_size(mailfleet_runtime::grpc::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(mailfleet_runtime::grpc::MAX_MESSAGE_BYTES);
        let history = Recorder::new(&ctx.config.services.mailstore_url)?;
        Ok(QueueAcceptor {
            ctx,
            filter,
            history,
        })
    }

    async fn verdict(&self, envelope: &Envelope, message: &[u8]) -> Result<Verdict, AcceptError> {
        // The filter's span continues this message's trace.
        let mut request = mailfleet_runtime::trace::request(CheckRequest {
            client_ip: envelope.client_ip.to_string(),
            helo: envelope.helo.clone(),
            mail_from: envelope.mail_from.clone(),
            rcpt_to: envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            authenticated: envelope.auth_account.is_some(),
            message: message.to_vec(),
        });
        request.set_timeout(FILTER_TIMEOUT);
        let verdict = self
            .filter
            .clone()
            .check(request)
            .await
            .map_err(|status| AcceptError::FilterUnavailable(status.to_string()))?
            .into_inner();
        match verdict.action() {
            Action::Accept | Action::Junk => Ok(verdict),
            Action::Reject => Err(AcceptError::Rejected {
                code: u16::try_from(verdict.smtp_code).unwrap_or(550),
                enhanced: verdict.enhanced_code,
                reason: verdict.reason,
            }),
            Action::Tempfail => Err(AcceptError::Deferred {
                reason: verdict.reason,
            }),
        }
    }

    async fn store(
        &self,
        id: &str,
        envelope: &Envelope,
        message: &[u8],
        verdict: &Verdict,
    ) -> Result<(), AcceptError> {
        let storage =
            |e: mailfleet_runtime::backend::BackendError| AcceptError::Storage(e.to_string());
        let now = SystemTime::now();
        let mut blob = Vec::with_capacity(message.len() + 512);
        for header in &verdict.headers {
            push_header(&mut blob, header);
        }
        blob.extend_from_slice(received(id, envelope, &self.ctx.config.hostname, now).as_bytes());
        blob.extend_from_slice(message);

        let spool = self.ctx.spool().await.map_err(storage)?;
        let blob_id = spool.put(&blob).await.map_err(storage)?;
        let entry = QueueEntry {
            id: id.to_owned(),
            mail_from: envelope.mail_from.clone(),
            recipients: envelope
                .recipients
                .iter()
                .map(|r| Recipient {
                    address: r.address.clone(),
                    account: r.account.clone(),
                    status: RecipientStatus::Pending as i32,
                    dsn_notify: r.notify.clone().unwrap_or_default(),
                    dsn_orcpt: r.orcpt.clone().unwrap_or_default(),
                    ..Recipient::default()
                })
                .collect(),
            blob: blob_id,
            size: blob.len() as u64,
            received_at_ms: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or_default(),
            verdict: verdict.action,
            message_id: header_value(message, "Message-ID").unwrap_or_default(),
            dsn_ret: envelope.dsn_ret.unwrap_or_default().to_owned(),
            dsn_envid: envelope.dsn_envid.clone().unwrap_or_default(),
            auth_account: envelope.auth_account.clone().unwrap_or_default(),
            // Every later delivery attempt, on any worker, joins this trace.
            traceparent: mailfleet_runtime::trace::current_traceparent(),
            ..QueueEntry::default()
        };
        let queue = self.ctx.queue().await.map_err(storage)?;
        // The blob may stay behind if this fails: the spool is
        // content-addressed, and an orphan costs space, never a message.
        queue.enqueue(&entry).await.map_err(storage)?;
        Ok(())
    }
}

#[async_trait]
impl Acceptor for QueueAcceptor {
    async fn accept(&self, envelope: &Envelope, message: Vec<u8>) -> Result<String, AcceptError> {
        let id = uuid::Uuid::now_v7().to_string();
        let from_domain = envelope
            .mail_from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let span = tracing::info_span!(
            "smtp.message",
            queue_id = %id,
            mail.queue_id = %id,
            mail.message_id = %header_value(&message, "Message-ID").unwrap_or_default(),
            mail.from_domain = %from_domain,
            mail.rcpt_count = envelope.recipients.len(),
            mail.verdict = tracing::field::Empty,
        );
        async {
            let verdict = self.verdict(envelope, &message).await?;
            tracing::Span::current().record("mail.verdict", verdict.action().as_str_name());
            tracing::debug!(action = verdict.action, score = verdict.score, "verdict");
            self.store(&id, envelope, &message, &verdict).await?;
            // Only after the enqueue: history never shows a message that
            // was not accepted.
            self.history
                .record_all(history_events(&id, envelope, &message, &verdict));
            Ok(id.clone())
        }
        .instrument(span)
        .await
    }
}

/// The `received` and `verdict` events of an accepted message.
fn history_events(
    id: &str,
    envelope: &Envelope,
    message: &[u8],
    verdict: &Verdict,
) -> Vec<HistoryEvent> {
    let message_id = header_value(message, "Message-ID").unwrap_or_default();
    let mut received = format!(
        "client {} helo {:?} from <{}> {} recipient(s) {} bytes",
        envelope.client_ip,
        envelope.helo,
        envelope.mail_from,
        envelope.recipients.len(),
        message.len()
    );
    if let Some(tls) = &envelope.tls {
        received.push_str(&format!(" tls {tls}"));
    }
    if envelope.auth_account.is_some() {
        received.push_str(" authenticated");
    }
    let rules: Vec<String> = verdict
        .rules
        .iter()
        .map(|r| format!("{}={}", r.name, r.score))
        .collect();
    let verdict_detail = format!(
        "{} score {:.2} rules [{}]",
        verdict
            .action()
            .as_str_name()
            .trim_start_matches("ACTION_")
            .to_ascii_lowercase(),
        verdict.score,
        rules.join(" ")
    );
    let event = |stage: &str, detail: String| HistoryEvent {
        queue_id: id.to_owned(),
        message_id: message_id.clone(),
        stage: stage.to_owned(),
        detail,
        ..HistoryEvent::default()
    };
    vec![
        event("received", received),
        event("verdict", verdict_detail),
    ]
}

/// `Name: value` CRLF, with CR/LF in the value flattened so a verdict can
/// never inject a header; a malformed name is dropped.
fn push_header(out: &mut Vec<u8>, header: &Header) {
    // RFC 5322 §2.2: printable US-ASCII except colon.
    let name_ok = !header.name.is_empty()
        && header
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        tracing::warn!(name = %header.name, "verdict header with an invalid name dropped");
        return;
    }
    let value: String = header
        .value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    out.extend_from_slice(format!("{}: {}\r\n", header.name, value.trim()).as_bytes());
}

/// RFC 5321 §4.4 trace header:
/// `Received: from <helo> ([<ip>]) by <host> (Mailfleet) with ESMTPSA (<tls>) id <id>; <date>`.
/// The protocol names are RFC 3848's (`S`: TLS, `A`: AUTH); the TLS version
/// and cipher suite are a comment, as Postfix and Exim write them. The
/// authenticated user's name is not recorded (it would leak to recipients).
pub fn received(id: &str, envelope: &Envelope, hostname: &str, now: SystemTime) -> String {
    let helo = if envelope.helo.is_empty() {
        "unknown".to_owned()
    } else {
        envelope
            .helo
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    };
    let ip = match envelope.client_ip {
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
        // RFC 5321 §4.1.3: IPv6 address literals carry a tag.
        std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let protocol = match (
        envelope.esmtp,
        envelope.tls.is_some(),
        envelope.auth_account.is_some(),
    ) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let tls = envelope
        .tls
        .as_deref()
        .map(|t| {
            let t: String = t
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "._- ".contains(*c))
                .collect();
            format!(" ({t})")
        })
        .unwrap_or_default();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    format!(
        "Received: from {helo} ({ip})\r\n\tby {hostname} (Mailfleet) with {protocol}{tls} id {id};\r\n\t{}\r\n",
        mailfleet_runtime::dates::rfc5322(secs)
    )
}

/// The unfolded value of the first header `name` in the message's header
/// section (RFC 5322 §2.2.3), trimmed; `None` if absent.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let mut lines = message
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        // Continuation lines start with whitespace.
        for next in lines.by_ref() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                value.extend_from_slice(next);
            } else {
                break;
            }
        }
        let value = String::from_utf8_lossy(&value).trim().to_owned();
        return Some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Recipient;

    #[test]
    fn message_id_is_found_unfolded_and_only_in_headers() {
        let msg = b"Subject: x\r\nmessage-id:\r\n <abc@example.org>\r\nTo: y\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(
            header_value(msg, "Message-ID").as_deref(),
            Some("<abc@example.org>")
        );
        assert_eq!(
            header_value(b"Subject: x\r\n\r\nMessage-ID: <b@x>\r\n", "Message-ID"),
            None
        );
        assert_eq!(header_value(b"", "Message-ID"), None);
    }

    #[test]
    fn received_header() {
        let envelope = Envelope {
            session_id: "s".into(),
            client_ip: "192.0.2.1".parse().unwrap(),
            helo: "client.example (evil)\r\n".into(),
            esmtp: true,
            tls: None,
            auth_account: None,
            mail_from: "a@client.example".into(),
            recipients: vec![Recipient {
                address: "alice@example.org".into(),
                account: "alice@example.org".into(),
                ..Recipient::default()
            }],
            dsn_ret: None,
            dsn_envid: None,
        };
        let header = received(
            "0190-id",
            &envelope,
            "mx.example.org",
            UNIX_EPOCH + Duration::from_secs(1_057_056_757),
        );
        assert_eq!(
            header,
            "Received: from client.example??evil??? ([192.0.2.1])\r\n\tby mx.example.org (Mailfleet) with ESMTP id 0190-id;\r\n\tTue, 1 Jul 2003 10:52:37 +0000\r\n"
        );
        let envelope = Envelope {
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            auth_account: Some("alice@example.org".into()),
            ..envelope
        };
        let header = received("id", &envelope, "mx.example.org", UNIX_EPOCH);
        assert!(
            header.contains("with ESMTPSA (TLSv1.3 TLS13_AES_256_GCM_SHA384) id id;"),
            "{header}"
        );
        assert!(!header.contains("alice"), "{header}");
    }

    #[test]
    fn verdict_headers_cannot_inject() {
        let mut out = Vec::new();
        push_header(
            &mut out,
            &Header {
                name: "X-Spam-Status".into(),
                value: "No\r\nBcc: victim@example.org".into(),
            },
        );
        push_header(
            &mut out,
            &Header {
                name: "Bad Name:".into(),
                value: "x".into(),
            },
        );
        assert_eq!(out, b"X-Spam-Status: No  Bcc: victim@example.org\r\n");
    }
}
