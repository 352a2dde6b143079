//! Delivery status notifications (RFC 3464) as a pure function: the
//! `multipart/report` (RFC 6522) a sender gets when some of its recipients
//! failed for good — a human-readable part, the `message/delivery-status`
//! part with one block per failed recipient (status, remote MTA, the remote
//! server's reply), and the original message's headers (or the whole
//! message when the sender asked for `RET=FULL`, RFC 3461 §4.3).
//!
//! The same report with `Action: delayed` warns the sender that a message
//! is still being retried after `delivery.delay_warning_after`.
//!
//! A DSN goes out with the null reverse-path (RFC 5321 §4.5.5), so a DSN
//! about a DSN can never be sent: no loops.

use mailfleet_proto::queue::{QueueEntry, Recipient};

use crate::wire;

/// Everything a DSN is built from.
pub struct Report<'a> {
    /// Our name: `Reporting-MTA` and the From domain.
    pub hostname: &'a str,
    pub entry: &'a QueueEntry,
    /// The recipients reported: failed ones, or delayed ones.
    pub failed: Vec<&'a Recipient>,
    /// `Some(until)`: a delay warning (RFC 3464 `Action: delayed`), the
    /// message retried until then; `None`: a failure report.
    pub delayed_until_ms: Option<i64>,
    /// The spooled message; `None` when it is lost.
    pub original: Option<&'a [u8]>,
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// Boundary and Message-ID material, unique per DSN.
    pub unique: &'a str,
}

/// Whether the sender wants to hear about a failure of `recipient`
/// (RFC 3461 §4.1: NOTIFY=NEVER, or a list without FAILURE, says no).
pub fn wants_failure_report(recipient: &Recipient) -> bool {
    let notify = recipient.dsn_notify.to_ascii_uppercase();
    notify.is_empty() || notify.split(',').any(|n| n.trim() == "FAILURE")
}

/// Whether the sender wants to hear that delivery to `recipient` is
/// delayed (RFC 3461 §4.1; no NOTIFY means FAILURE,DELAY).
pub fn wants_delay_report(recipient: &Recipient) -> bool {
    let notify = recipient.dsn_notify.to_ascii_uppercase();
    notify.is_empty() || notify.split(',').any(|n| n.trim() == "DELAY")
}

/// Builds the DSN message (CRLF line endings).
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let entry = report.entry;
    let delayed = report.delayed_until_ms;
    let boundary = format!("mailfleet-dsn-{}", report.unique);
    let date = rfc5322_date(report.now_ms);
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).collect::<String>() };
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push_str("\r\n");
    };

    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>",
        report.hostname
    ));
    line(&format!("To: <{}>", clean(&entry.mail_from)));
    line(if delayed.is_some() {
        "Subject: Delayed Mail (still being retried)"
    } else {
        "Subject: Undelivered Mail Returned to Sender"
    });
    line(&format!("Date: {date}"));
    line(&format!(
        "Message-ID: <{}.dsn@{}>",
        report.unique, report.hostname
    ));
    // RFC 3834 §5: an automatic reply; never answer it automatically.
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated message.");
    line("");

    // The human-readable part.
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=utf-8");
    line("Content-Transfer-Encoding: 8bit");
    line("");
    line(&format!("This is the mail system at {}.", report.hostname));
    line("");
    if let Some(until) = delayed {
        line("Your message has not been delivered yet to one or more recipients.");
        line(&format!(
            "It is still being retried, until {}; you need not send it again:",
            rfc5322_date(until)
        ));
    } else {
        line("Your message could not be delivered to one or more recipients.");
        line("It was not delivered to:");
    }
    line("");
    for r in &report.failed {
        line(&format!(
            "  <{}>: {}",
            clean(&r.address),
            clean(&r.last_error)
        ));
    }
    if !entry.message_id.is_empty() {
        line("");
        line(&format!(
            "Message-ID of your message: {}",
            clean(&entry.message_id)
        ));
    }
    line("");

    // RFC 3464 §2.2: per-message fields, then §2.3 per-recipient blocks.
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    line(&format!("Reporting-MTA: dns; {}", report.hostname));
    if !entry.dsn_envid.is_empty() {
        line(&format!(
            "Original-Envelope-Id: {}",
            clean(&entry.dsn_envid)
        ));
    }
    if entry.received_at_ms > 0 {
        line(&format!(
            "Arrival-Date: {}",
            rfc5322_date(entry.received_at_ms)
        ));
    }
    for r in &report.failed {
        line("");
        if !r.dsn_orcpt.is_empty() {
            line(&format!("Original-Recipient: {}", clean(&r.dsn_orcpt)));
        }
        line(&format!("Final-Recipient: rfc822; {}", clean(&r.address)));
        line(if delayed.is_some() {
            "Action: delayed"
        } else {
            "Action: failed"
        });
        let status = if r.status_code.starts_with('5') || r.status_code.starts_with('4') {
            clean(&r.status_code)
        } else if delayed.is_some() {
            "4.0.0".into()
        } else {
            "5.0.0".into()
        };
        // A message that expired after transient failures has a 4.x.x
        // status and Action: failed (RFC 3464 §2.3.3).
        line(&format!("Status: {status}"));
        if !r.remote_mta.is_empty() {
            line(&format!("Remote-MTA: dns; {}", clean(&r.remote_mta)));
        }
        if !r.remote_reply.is_empty() {
            line(&format!(
                "Diagnostic-Code: smtp; {}",
                clean(&r.remote_reply)
            ));
        } else if !r.last_error.is_empty() {
            line(&format!("X-Mailfleet-Diagnostic: {}", clean(&r.last_error)));
        }
        if r.last_attempt_at_ms > 0 {
            line(&format!(
                "Last-Attempt-Date: {}",
                rfc5322_date(r.last_attempt_at_ms)
            ));
        }
        if let Some(until) = delayed {
            line(&format!("Will-Retry-Until: {}", rfc5322_date(until)));
        }
    }
    line("");

    // The returned content.
    let mut message = out.into_bytes();
    if let Some(original) = report.original {
        let full = entry.dsn_ret.eq_ignore_ascii_case("FULL");
        let mut part = format!("--{boundary}\r\n");
        if full {
            part.push_str("Content-Type: message/rfc822\r\n\r\n");
        } else {
            // RFC 6522 §4 (ex RFC 3462): text/rfc822-headers.
            part.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
        }
        message.extend_from_slice(part.as_bytes());
        let canonical = wire::canonical(original);
        let returned = if full {
            &canonical[..]
        } else {
            wire::headers(&canonical)
        };
        message.extend_from_slice(returned);
        if !returned.ends_with(b"\r\n") {
            message.extend_from_slice(b"\r\n");
        }
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    message
}

/// `Tue, 25 Nov 2026 12:00:00 +0000` (RFC 5322 §3.3) from Unix milliseconds.
pub fn rfc5322_date(ms: i64) -> String {
    mailfleet_runtime::dates::rfc5322(ms.div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailfleet_proto::queue::RecipientStatus;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        // 2026-11-25 12:00:00 UTC
        assert_eq!(
            rfc5322_date(1_795_608_000_000),
            "Wed, 25 Nov 2026 12:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn delay_report() {
        let waiting = Recipient {
            address: "slow@remote.test".into(),
            status_code: "4.7.1".into(),
            remote_reply: "451 4.7.1 later".into(),
            ..Recipient::default()
        };
        let entry = QueueEntry {
            mail_from: "alice@example.test".into(),
            ..QueueEntry::default()
        };
        let text = String::from_utf8(build(&Report {
            hostname: "mx.example.test",
            entry: &entry,
            failed: vec![&waiting],
            original: None,
            now_ms: 0,
            unique: "d1",
            delayed_until_ms: Some(432_000_000),
        }))
        .unwrap();
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.7.1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Will-Retry-Until: Tue, 6 Jan 1970 00:00:00 +0000\r\n"),
            "{text}"
        );
        let mut r = Recipient::default();
        assert!(wants_delay_report(&r));
        r.dsn_notify = "FAILURE".into();
        assert!(!wants_delay_report(&r));
    }

    #[test]
    fn notify() {
        let mut r = Recipient::default();
        assert!(wants_failure_report(&r));
        r.dsn_notify = "NEVER".into();
        assert!(!wants_failure_report(&r));
        r.dsn_notify = "SUCCESS,DELAY".into();
        assert!(!wants_failure_report(&r));
        r.dsn_notify = "DELAY,FAILURE".into();
        assert!(wants_failure_report(&r));
    }

    #[test]
    fn report_for_a_550() {
        let failed = Recipient {
            address: "nobody@remote.test".into(),
            status: RecipientStatus::Failed as i32,
            last_error: "mx.remote.test said: 550 5.1.1 no such user".into(),
            status_code: "5.1.1".into(),
            remote_mta: "mx.remote.test".into(),
            remote_reply: "550 5.1.1 no such user".into(),
            dsn_orcpt: "rfc822;nobody@remote.test".into(),
            last_attempt_at_ms: 1_795_608_000_000,
            ..Recipient::default()
        };
        let entry = QueueEntry {
            id: "q1".into(),
            mail_from: "alice@example.test".into(),
            received_at_ms: 1_795_608_000_000,
            message_id: "<m1@example.test>".into(),
            dsn_envid: "env-1".into(),
            recipients: vec![failed.clone()],
            ..QueueEntry::default()
        };
        let original = b"From: alice@example.test\r\nSubject: hi\r\n\r\nsecret body\r\n";
        let dsn = build(&Report {
            hostname: "mx.example.test",
            entry: &entry,
            failed: vec![&failed],
            original: Some(original),
            now_ms: 1_795_608_060_000,
            unique: "u1",
            delayed_until_ms: None,
        });
        let text = String::from_utf8(dsn).unwrap();
        for expected in [
            "To: <alice@example.test>\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.test\r\n",
            "Original-Envelope-Id: env-1\r\n",
            "Original-Recipient: rfc822;nobody@remote.test\r\n",
            "Final-Recipient: rfc822; nobody@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Remote-MTA: dns; mx.remote.test\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nFrom: alice@example.test\r\nSubject: hi\r\n",
            "--mailfleet-dsn-u1--\r\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("secret body"), "headers only by default");
        assert!(!text.contains("\n\n") && !text.replace("\r\n", "").contains('\r'));
    }
}
