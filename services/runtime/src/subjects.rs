//! Every NATS subject and JetStream name Mailfleet uses, in one place.

/// The JetStream stream holding the delivery queue (work-queue retention).
pub const QUEUE_STREAM: &str = "MAILFLEET_QUEUE";
/// Subject queue entries are published on.
pub const QUEUE_SUBJECT: &str = "mailfleet.queue.entries";
/// The durable pull consumer every delivery worker shares.
pub const QUEUE_CONSUMER: &str = "delivery";

/// Prefix of mailbox change events; the account follows, hex-encoded so that
/// the dots of an address do not become subject tokens.
pub const EVENTS_PREFIX: &str = "mailfleet.events.mailbox";

/// The subject of one account's mailbox events.
pub fn mailbox_events(account: &str) -> String {
    format!("{EVENTS_PREFIX}.{}", hex::encode(account.as_bytes()))
}
