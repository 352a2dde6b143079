//! What queue administration (`mailfleet queue ...`) does to entries, as
//! pure functions: which entries concern a domain, in which state an entry
//! is, retrying now, bouncing (the next worker sends the DSN and drops the
//! entry), and the JSON an operator sees.

use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};
use mailfleet_runtime::backend::QueuedEntry;
use serde_json::{Value, json};

use crate::route;

/// `active` (a worker holds it), `deferred` (attempted, waiting for its
/// next try) or `queued` (not tried yet, or due).
pub fn status(queued: &QueuedEntry, now_ms: i64) -> &'static str {
    if queued.leased {
        "active"
    } else if queued.due_at_ms > now_ms
        || queued
            .entry
            .recipients
            .iter()
            .any(|r| route::is_pending(r) && r.attempts > 0)
    {
        "deferred"
    } else {
        "queued"
    }
}

/// Whether a pending recipient of the entry is in `domain`.
pub fn concerns_domain(entry: &QueueEntry, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.');
    entry.recipients.iter().any(|r| {
        route::is_pending(r)
            && r.address
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
    })
}

/// Makes every pending recipient due now; false when none is pending.
pub fn retry_now(entry: &mut QueueEntry) -> bool {
    let mut changed = false;
    for r in entry.recipients.iter_mut().filter(|r| route::is_pending(r)) {
        r.next_attempt_at_ms = 0;
        changed = true;
    }
    changed
}

/// Fails every pending recipient: the next worker reports them in a DSN
/// to the sender (RFC 3464; none for a null sender) and drops the entry.
pub fn bounce(entry: &mut QueueEntry, now_ms: i64) -> bool {
    let mut changed = false;
    for r in entry.recipients.iter_mut().filter(|r| route::is_pending(r)) {
        r.status = RecipientStatus::Failed as i32;
        // RFC 3463: 5.0.0, other undefined status; the text says why.
        r.status_code = "5.0.0".into();
        r.last_error = "delivery cancelled by the postmaster".into();
        r.remote_reply.clear();
        r.last_attempt_at_ms = now_ms;
        changed = true;
    }
    changed
}

fn recipient_status(r: &Recipient) -> &'static str {
    match RecipientStatus::try_from(r.status) {
        Ok(RecipientStatus::Delivered) => "delivered",
        Ok(RecipientStatus::Failed) => "failed",
        _ => "pending",
    }
}

/// The JSON view of an entry: the summary, and with `detail` each
/// recipient's attempts, last error and next retry.
pub fn to_json(queued: &QueuedEntry, now_ms: i64, detail: bool) -> Value {
    let e = &queued.entry;
    let pending = e.recipients.iter().filter(|r| route::is_pending(r)).count();
    let next_retry = e
        .recipients
        .iter()
        .filter(|r| route::is_pending(r))
        .map(|r| r.next_attempt_at_ms.max(queued.due_at_ms))
        .min()
        .unwrap_or(queued.due_at_ms);
    let mut value = json!({
        "id": e.id,
        "from": e.mail_from,
        "size": e.size,
        "received_at_ms": e.received_at_ms,
        "status": status(queued, now_ms),
        "attempts": e.recipients.iter().map(|r| r.attempts).max().unwrap_or(0),
        "recipients": e.recipients.len(),
        "pending": pending,
        "next_retry_at_ms": next_retry,
        "is_dsn": e.is_dsn,
    });
    if detail {
        value["message_id"] = json!(e.message_id);
        value["recipients"] = e
            .recipients
            .iter()
            .map(|r| {
                json!({
                    "address": r.address,
                    "local": !r.account.is_empty(),
                    "status": recipient_status(r),
                    "attempts": r.attempts,
                    "status_code": r.status_code,
                    "last_error": r.last_error,
                    "remote_mta": r.remote_mta,
                    "remote_reply": r.remote_reply,
                    "tls": r.tls,
                    "last_attempt_at_ms": r.last_attempt_at_ms,
                    "next_attempt_at_ms": r.next_attempt_at_ms,
                })
            })
            .collect();
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(leased: bool, due: i64, attempts: u32) -> QueuedEntry {
        QueuedEntry {
            entry: QueueEntry {
                id: "q".into(),
                mail_from: "a@example.test".into(),
                recipients: vec![
                    Recipient {
                        address: "b@Remote.test".into(),
                        attempts,
                        next_attempt_at_ms: 5_000,
                        ..Recipient::default()
                    },
                    Recipient {
                        address: "c@other.test".into(),
                        status: RecipientStatus::Delivered as i32,
                        ..Recipient::default()
                    },
                ],
                ..QueueEntry::default()
            },
            due_at_ms: due,
            leased,
        }
    }

    #[test]
    fn states() {
        assert_eq!(status(&queued(true, 0, 0), 1_000), "active");
        assert_eq!(status(&queued(false, 2_000, 0), 1_000), "deferred");
        assert_eq!(status(&queued(false, 0, 1), 1_000), "deferred");
        assert_eq!(status(&queued(false, 0, 0), 1_000), "queued");
    }

    #[test]
    fn domain_retry_bounce() {
        let mut q = queued(false, 9_000, 2);
        assert!(concerns_domain(&q.entry, "remote.TEST"));
        // Delivered recipients do not count.
        assert!(!concerns_domain(&q.entry, "other.test"));
        assert!(retry_now(&mut q.entry));
        assert_eq!(q.entry.recipients[0].next_attempt_at_ms, 0);
        assert!(bounce(&mut q.entry, 42));
        assert_eq!(q.entry.recipients[0].status, RecipientStatus::Failed as i32);
        assert!(crate::schedule::needs_dsn(&q.entry.recipients[0]));
        assert!(!bounce(&mut q.entry, 43), "nothing left to bounce");
        let v = to_json(&q, 1_000, true);
        assert_eq!(v["recipients"][0]["status"], "failed");
        assert_eq!(v["recipients"][1]["status"], "delivered");
        assert_eq!(to_json(&q, 1_000, false)["pending"], 0);
    }
}
