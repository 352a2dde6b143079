//! Retry bookkeeping on queue entries, as pure functions over the entry and
//! the clock: which destination group a recipient belongs to, which groups
//! are due, what an outcome does to a recipient (delivered, failed,
//! deferred with backoff, expired), when the entry is due again, and when it
//! is done.

use std::time::Duration;

use mailfleet_proto::queue::{QueueEntry, Recipient, RecipientStatus};

use crate::error::DeliveryError;
use crate::route;

/// Where a group of recipients is delivered; each group is retried on its
/// own schedule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// mailstore.
    Local,
    /// A remote domain, lower case.
    Remote(String),
}

pub fn destination(recipient: &Recipient) -> Destination {
    if !recipient.account.is_empty() {
        return Destination::Local;
    }
    let domain = recipient
        .address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or_default();
    Destination::Remote(domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether `recipient` is pending and its group is due at `now_ms`.
pub fn is_due(recipient: &Recipient, now_ms: i64) -> bool {
    route::is_pending(recipient) && recipient.next_attempt_at_ms <= now_ms
}

/// The remote domains with due recipients, in a stable order.
pub fn due_remote_domains(entry: &QueueEntry, now_ms: i64) -> Vec<String> {
    let mut domains: Vec<String> = entry
        .recipients
        .iter()
        .filter(|r| is_due(r, now_ms))
        .filter_map(|r| match destination(r) {
            Destination::Remote(domain) => Some(domain),
            Destination::Local => None,
        })
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// The wait after the `attempts`-th failed attempt: the schedule's entry,
/// its last one repeating.
pub fn backoff(schedule: &[Duration], attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(300))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// When the message stops being retried.
pub fn expires_at_ms(entry: &QueueEntry, lifetime: Duration) -> i64 {
    entry.received_at_ms.saturating_add(ms(lifetime))
}

/// Success: final.
pub fn delivered(recipient: &mut Recipient, now_ms: i64, mx: &str, reply: &str, tls: &str) {
    recipient.status = RecipientStatus::Delivered as i32;
    recipient.attempts += 1;
    recipient.last_attempt_at_ms = now_ms;
    recipient.status_code = "2.0.0".into();
    recipient.remote_mta = mx.to_owned();
    recipient.remote_reply = reply.to_owned();
    recipient.tls = tls.to_owned();
    recipient.last_error.clear();
}

/// A failure: final when permanent or when the message expired, else the
/// recipient waits for its next attempt (never later than expiry, so that
/// the last attempt happens at expiry and the bounce follows at once).
pub fn failed(
    recipient: &mut Recipient,
    error: &DeliveryError,
    now_ms: i64,
    schedule: &[Duration],
    expires_at_ms: i64,
) {
    let d = error.diagnostic();
    recipient.attempts += 1;
    recipient.last_attempt_at_ms = now_ms;
    recipient.status_code = d.status.clone();
    recipient.remote_mta = d.remote_mta.clone().unwrap_or_default();
    recipient.remote_reply = d
        .reply
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    recipient.last_error = d.text.clone();
    if error.is_permanent() {
        recipient.status = RecipientStatus::Failed as i32;
    } else if now_ms >= expires_at_ms {
        // RFC 3464 §2.3.3: Action failed, with the transient status that
        // kept it from being delivered (4.4.7: delivery time expired when
        // there was nothing more specific).
        recipient.status = RecipientStatus::Failed as i32;
        if recipient.status_code.is_empty() {
            recipient.status_code = "4.4.7".into();
        }
        recipient.last_error = format!(
            "message expired after {} attempts; last error: {}",
            recipient.attempts, d.text
        );
    } else {
        let next = now_ms.saturating_add(ms(backoff(schedule, recipient.attempts)));
        recipient.next_attempt_at_ms = next.min(expires_at_ms);
    }
}

/// Failed recipients whose DSN is not handled yet.
pub fn needs_dsn(recipient: &Recipient) -> bool {
    recipient.status == RecipientStatus::Failed as i32 && !recipient.dsn_sent
}

/// Done: nothing pending and every failure reported (or not reportable).
pub fn is_done(entry: &QueueEntry) -> bool {
    route::is_done(entry) && !entry.recipients.iter().any(needs_dsn)
}

/// How long until the entry is due again: the earliest pending group.
pub fn delay_until_due(entry: &QueueEntry, now_ms: i64) -> Duration {
    let next = entry
        .recipients
        .iter()
        .filter(|r| route::is_pending(r))
        .map(|r| r.next_attempt_at_ms)
        .min()
        .unwrap_or(now_ms);
    Duration::from_millis(u64::try_from(next.saturating_sub(now_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Diagnostic;
    use crate::reply::Reply;

    fn pending(address: &str, account: &str) -> Recipient {
        Recipient {
            address: address.into(),
            account: account.into(),
            ..Recipient::default()
        }
    }

    fn schedule() -> Vec<Duration> {
        [5 * 60, 10 * 60, 30 * 60].map(Duration::from_secs).to_vec()
    }

    #[test]
    fn groups() {
        assert_eq!(
            destination(&pending("a@x.test", "a@x.test")),
            Destination::Local
        );
        assert_eq!(
            destination(&pending("b@Remote.TEST.", "")),
            Destination::Remote("remote.test".into())
        );
        let mut entry = QueueEntry {
            recipients: vec![
                pending("a@b.test", ""),
                pending("c@a.test", ""),
                pending("d@b.test", ""),
                pending("e@local.test", "e@local.test"),
                pending("f@later.test", ""),
            ],
            ..QueueEntry::default()
        };
        entry.recipients[4].next_attempt_at_ms = 2_000;
        assert_eq!(due_remote_domains(&entry, 1_000), ["a.test", "b.test"]);
        assert_eq!(due_remote_domains(&entry, 2_000).len(), 3);
    }

    #[test]
    fn backoff_repeats_the_last_interval() {
        let s = schedule();
        assert_eq!(backoff(&s, 1), Duration::from_secs(300));
        assert_eq!(backoff(&s, 3), Duration::from_secs(1800));
        assert_eq!(backoff(&s, 9), Duration::from_secs(1800));
        assert_eq!(backoff(&[], 1), Duration::from_secs(300));
    }

    #[test]
    fn deferral_then_expiry() {
        let transient =
            DeliveryError::from_reply("mx.remote.test", Reply::new(451, "4.7.1 greylisted"));
        let mut r = pending("a@remote.test", "");
        let expires = 1_000_000;
        failed(&mut r, &transient, 0, &schedule(), expires);
        assert!(route::is_pending(&r));
        assert_eq!(r.next_attempt_at_ms, 300_000);
        assert_eq!(r.remote_reply, "451 4.7.1 greylisted");
        failed(&mut r, &transient, 300_000, &schedule(), expires);
        assert_eq!(r.next_attempt_at_ms, 900_000);
        // The third wait would pass expiry: the last attempt is at expiry.
        failed(&mut r, &transient, 900_000, &schedule(), expires);
        assert_eq!(r.next_attempt_at_ms, expires);
        failed(&mut r, &transient, expires, &schedule(), expires);
        assert_eq!(r.status, RecipientStatus::Failed as i32);
        assert_eq!(r.status_code, "4.7.1");
        assert!(r.last_error.starts_with("message expired after 4 attempts"));
        assert!(needs_dsn(&r));
    }

    #[test]
    fn permanent_and_done() {
        let mut entry = QueueEntry {
            recipients: vec![pending("a@remote.test", ""), pending("b@remote.test", "")],
            ..QueueEntry::default()
        };
        let permanent = DeliveryError::Permanent(Diagnostic::local("5.1.10", "null MX"));
        failed(&mut entry.recipients[0], &permanent, 5, &schedule(), 100);
        delivered(&mut entry.recipients[1], 5, "mx", "250 ok", "tls-verified");
        assert!(!is_done(&entry), "the DSN is still owed");
        entry.recipients[0].dsn_sent = true;
        assert!(is_done(&entry));
        assert_eq!(entry.recipients[1].status_code, "2.0.0");
    }

    #[test]
    fn delay_is_the_earliest_pending_group() {
        let mut entry = QueueEntry {
            recipients: vec![pending("a@x", ""), pending("b@y", "")],
            ..QueueEntry::default()
        };
        entry.recipients[0].next_attempt_at_ms = 5_000;
        entry.recipients[1].next_attempt_at_ms = 3_000;
        assert_eq!(delay_until_due(&entry, 1_000), Duration::from_secs(2));
        assert_eq!(delay_until_due(&entry, 9_000), Duration::ZERO);
    }
}
