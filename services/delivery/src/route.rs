//! The local routing decisions of a delivery attempt, as pure functions:
//! into which mailbox, what mailstore is sent, and whether
//! a failure is worth retrying.

use mailfleet_proto::filter::Action;
use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
use tonic::Code;

pub fn mailbox_for(verdict: i32) -> &'static str {
    if verdict == Action::Junk as i32 {
        "Junk"
    } else {
        "INBOX"
    }
}

/// Makes mailstore's append exactly once per (queue entry, account). The
/// account, not the address: an alias naming several accounts is queued
/// as one recipient per account, all with the alias's address, and each
/// account must get the message once.
pub fn idempotency_key(queue_id: &str, account: &str) -> String {
    format!("{queue_id}/{account}")
}

/// The message as stored in the mailbox: `Return-Path:` (RFC 5321 §4.4,
/// added at final delivery) and `Delivered-To:` before the spooled bytes.
/// CR and LF are dropped from the envelope values so that they can never
/// start a header of their own.
pub fn local_message(mail_from: &str, address: &str, spooled: &[u8]) -> Vec<u8> {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| *c != '\r' && *c != '\n')
            .collect::<String>()
    };
    let header = format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        clean(mail_from),
        clean(address)
    );
    let mut message = Vec::with_capacity(header.len() + spooled.len());
    message.extend_from_slice(header.as_bytes());
    message.extend_from_slice(spooled);
    message
}

/// Whether a mailstore error is final for this recipient. A missing account
/// or a refused request will not change on retry; anything else (mailstore
/// down, database unavailable, deadline) may.
pub fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition
    )
}

pub fn is_pending(recipient: &Recipient) -> bool {
    recipient.status == RecipientStatus::Pending as i32
}

/// True when no recipient is left to try: the entry can be acknowledged.
pub fn is_done(entry: &QueueEntry) -> bool {
    !entry.recipients.iter().any(is_pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(address: &str, account: &str, status: RecipientStatus) -> Recipient {
        Recipient {
            address: address.into(),
            account: account.into(),
            status: status as i32,
            last_error: String::new(),
            ..Recipient::default()
        }
    }

    #[test]
    fn junk_verdict_files_into_junk() {
        assert_eq!(mailbox_for(Action::Accept as i32), "INBOX");
        assert_eq!(mailbox_for(Action::Junk as i32), "Junk");
    }

    #[test]
    fn key_and_headers() {
        assert_eq!(
            idempotency_key("0190-ab", "bob@example.com"),
            "0190-ab/bob@example.com"
        );
        let m = local_message("alice@x.org", "bob@example.com", b"Subject: hi\r\n\r\nbody");
        assert_eq!(
            m,
            b"Return-Path: <alice@x.org>\r\nDelivered-To: bob@example.com\r\nSubject: hi\r\n\r\nbody"
        );
        let null_sender = local_message("", "bob@example.com", b"");
        assert!(null_sender.starts_with(b"Return-Path: <>\r\n"));
        let injected = local_message("a@x\r\nBcc: evil", "b@y", b"");
        assert_eq!(
            injected,
            b"Return-Path: <a@xBcc: evil>\r\nDelivered-To: b@y\r\n"
        );
    }

    #[test]
    fn done_when_nothing_pending() {
        let mut entry = QueueEntry {
            recipients: vec![
                recipient("a@x", "a@x", RecipientStatus::Delivered),
                recipient("b@y", "", RecipientStatus::Pending),
            ],
            ..QueueEntry::default()
        };
        assert!(!is_done(&entry));
        entry.recipients[1].status = RecipientStatus::Failed as i32;
        assert!(is_done(&entry));
    }

    #[test]
    fn transient_and_permanent_errors() {
        assert!(!is_permanent(Code::Unavailable));
        assert!(!is_permanent(Code::Internal));
        assert!(!is_permanent(Code::DeadlineExceeded));
        assert!(is_permanent(Code::NotFound));
    }
}
