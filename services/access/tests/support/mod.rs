//! An in-memory mailstore and event bus for session tests, and a line
//! client over `tokio::io::duplex`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mailfleet_access::store::{
    Appended, Copied, FlagMode, MailboxInfo, MailboxStatus, MessageInfo, Quota,
};
use mailfleet_access::{AccessError, Limits, MailAccess, Metrics, Shared};
use mailfleet_proto::queue::MailboxEvent;
use mailfleet_proto::queue::mailbox_event::Kind;
use mailfleet_runtime::CancellationToken;
use mailfleet_runtime::backend::{self, Events};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::broadcast;

pub const USER: &str = "alice@example.com";
pub const PASSWORD: &str = "secret pw";
pub const UID_VALIDITY: u32 = 1_700_000_000;

#[derive(Clone)]
pub struct Stored {
    pub flags: Vec<String>,
    pub body: Vec<u8>,
    pub internal_date_ms: i64,
    pub modseq: u64,
}

struct Mailbox {
    attributes: Vec<String>,
    uid_next: u32,
    uid_validity: u32,
    highest_modseq: u64,
    subscribed: bool,
    messages: BTreeMap<u32, Stored>,
}

impl Mailbox {
    fn new(attributes: Vec<String>, uid_validity: u32) -> Self {
        Mailbox {
            attributes,
            uid_next: 1,
            uid_validity,
            highest_modseq: 1,
            subscribed: true,
            messages: BTreeMap::new(),
        }
    }

    fn add(&mut self, body: &[u8], flags: Vec<String>, internal_date_ms: i64) -> u32 {
        let uid = self.uid_next;
        self.uid_next += 1;
        self.highest_modseq += 1;
        self.messages.insert(
            uid,
            Stored {
                flags,
                body: body.to_vec(),
                internal_date_ms,
                modseq: self.highest_modseq,
            },
        );
        uid
    }
}

/// The mailstore of one account, `alice@example.com`.
pub struct MemoryStore {
    mailboxes: Mutex<BTreeMap<String, Mailbox>>,
    events: broadcast::Sender<MailboxEvent>,
    /// Storage limit in bytes; 0 is none.
    pub quota_limit: Mutex<u64>,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        let mut mailboxes = BTreeMap::new();
        for (name, attribute) in [
            ("INBOX", None),
            ("Sent", Some("\\Sent")),
            ("Junk", Some("\\Junk")),
            ("Archive", Some("\\Archive")),
            ("Archive/2024", None),
        ] {
            mailboxes.insert(
                name.to_owned(),
                Mailbox::new(
                    attribute.map(str::to_owned).into_iter().collect(),
                    UID_VALIDITY,
                ),
            );
        }
        let (events, _) = broadcast::channel(1024);
        Arc::new(MemoryStore {
            mailboxes: Mutex::new(mailboxes),
            events,
            quota_limit: Mutex::new(0),
        })
    }

    fn publish(&self, mailbox: &str, kind: Kind, uid: u32) {
        let _ = self.events.send(MailboxEvent {
            account: USER.into(),
            mailbox: mailbox.into(),
            kind: kind as i32,
            uid,
            modseq: 0,
        });
    }

    fn used_bytes(&self) -> u64 {
        self.mailboxes
            .lock()
            .unwrap()
            .values()
            .flat_map(|m| m.messages.values())
            .map(|s| s.body.len() as u64)
            .sum()
    }

    /// Adds an empty mailbox with a special-use `attribute` (RFC 6154).
    pub fn add_mailbox(&self, name: &str, attribute: &str) {
        let mut boxes = self.mailboxes.lock().unwrap();
        let validity = UID_VALIDITY + boxes.len() as u32;
        boxes.insert(
            name.to_owned(),
            Mailbox::new(vec![attribute.to_owned()], validity),
        );
    }

    /// Adds a message and publishes the change event, like mailstore.
    pub fn deliver(&self, mailbox: &str, body: &[u8]) -> u32 {
        let uid = {
            let mut boxes = self.mailboxes.lock().unwrap();
            let mailbox = boxes.get_mut(mailbox).unwrap();
            mailbox.add(body, Vec::new(), 1_709_211_909_000)
        };
        self.publish(mailbox, Kind::Appended, uid);
        uid
    }

    pub fn message(&self, mailbox: &str, uid: u32) -> Option<Stored> {
        self.mailboxes.lock().unwrap()[mailbox]
            .messages
            .get(&uid)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.mailboxes.lock().unwrap().keys().cloned().collect()
    }

    pub fn uids(&self, mailbox: &str) -> Vec<u32> {
        self.mailboxes.lock().unwrap()[mailbox]
            .messages
            .keys()
            .copied()
            .collect()
    }

    fn with_mailbox<T>(
        &self,
        account: &str,
        mailbox: &str,
        f: impl FnOnce(&mut Mailbox) -> Result<T, AccessError>,
    ) -> Result<T, AccessError> {
        if account != USER {
            return Err(AccessError::NotFound(account.into()));
        }
        let mut boxes = self.mailboxes.lock().unwrap();
        let mailbox = boxes
            .get_mut(mailbox)
            .ok_or_else(|| AccessError::NotFound(mailbox.into()))?;
        f(mailbox)
    }
}

fn info(uid: u32, stored: &Stored) -> MessageInfo {
    MessageInfo {
        uid,
        flags: stored.flags.clone(),
        size: stored.body.len() as u64,
        internal_date_ms: stored.internal_date_ms,
        modseq: stored.modseq,
        search_header: String::new(),
    }
}

#[async_trait]
impl MailAccess for MemoryStore {
    async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<String>, AccessError> {
        Ok((user == USER && password == PASSWORD).then(|| USER.to_owned()))
    }

    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, AccessError> {
        assert_eq!(account, USER);
        Ok(self
            .mailboxes
            .lock()
            .unwrap()
            .iter()
            .map(|(name, m)| MailboxInfo {
                name: name.clone(),
                attributes: m.attributes.clone(),
                subscribed: m.subscribed,
            })
            .collect())
    }

    async fn select(&self, account: &str, mailbox: &str) -> Result<MailboxStatus, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            Ok(MailboxStatus {
                uid_validity: m.uid_validity,
                uid_next: m.uid_next,
                exists: m.messages.len() as u32,
                unseen: m
                    .messages
                    .values()
                    .filter(|s| !s.flags.iter().any(|f| f == "\\Seen"))
                    .count() as u32,
                highest_modseq: m.highest_modseq,
            })
        })
    }

    async fn list_messages(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            Ok(m.messages.iter().map(|(&uid, s)| info(uid, s)).collect())
        })
    }

    async fn fetch_body(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Vec<u8>, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            m.messages
                .get(&uid)
                .map(|s| s.body.clone())
                .ok_or_else(|| AccessError::NotFound(format!("uid {uid}")))
        })
    }

    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uid: u32,
        mode: FlagMode,
        flags: &[String],
    ) -> Result<MessageInfo, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            let stored = m
                .messages
                .get_mut(&uid)
                .ok_or_else(|| AccessError::NotFound(format!("uid {uid}")))?;
            let before = stored.flags.clone();
            match mode {
                FlagMode::Replace => stored.flags = flags.to_vec(),
                FlagMode::Add => {
                    for flag in flags {
                        if !stored.flags.contains(flag) {
                            stored.flags.push(flag.clone());
                        }
                    }
                }
                FlagMode::Remove => stored.flags.retain(|f| !flags.contains(f)),
            }
            if stored.flags != before {
                m.highest_modseq += 1;
                stored.modseq = m.highest_modseq;
            }
            Ok(info(uid, stored))
        })
    }

    /// Like mailstore: only `\Deleted` messages, among `uids` when given.
    async fn expunge(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
    ) -> Result<Vec<u32>, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            let doomed: Vec<u32> = m
                .messages
                .iter()
                .filter(|(uid, s)| {
                    s.flags.iter().any(|f| f == "\\Deleted")
                        && (uids.is_empty() || uids.contains(uid))
                })
                .map(|(&uid, _)| uid)
                .collect();
            for uid in &doomed {
                m.messages.remove(uid);
            }
            if !doomed.is_empty() {
                m.highest_modseq += 1;
            }
            Ok(doomed)
        })
        .inspect(|doomed| {
            for uid in doomed {
                self.publish(mailbox, Kind::Expunged, *uid);
            }
        })
    }

    async fn create_mailbox(&self, _account: &str, mailbox: &str) -> Result<(), AccessError> {
        let mut boxes = self.mailboxes.lock().unwrap();
        if boxes.contains_key(mailbox) {
            return Err(AccessError::AlreadyExists(mailbox.into()));
        }
        let validity = UID_VALIDITY + boxes.len() as u32;
        boxes.insert(mailbox.to_owned(), Mailbox::new(Vec::new(), validity));
        Ok(())
    }

    async fn delete_mailbox(&self, _account: &str, mailbox: &str) -> Result<(), AccessError> {
        self.mailboxes
            .lock()
            .unwrap()
            .remove(mailbox)
            .map(|_| ())
            .ok_or_else(|| AccessError::NotFound(mailbox.into()))
    }

    async fn rename_mailbox(
        &self,
        _account: &str,
        from: &str,
        to: &str,
    ) -> Result<(), AccessError> {
        let mut boxes = self.mailboxes.lock().unwrap();
        if boxes.contains_key(to) {
            return Err(AccessError::AlreadyExists(to.into()));
        }
        let mailbox = boxes
            .remove(from)
            .ok_or_else(|| AccessError::NotFound(from.into()))?;
        boxes.insert(to.to_owned(), mailbox);
        Ok(())
    }

    async fn set_subscribed(
        &self,
        account: &str,
        mailbox: &str,
        subscribed: bool,
    ) -> Result<(), AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            m.subscribed = subscribed;
            Ok(())
        })
    }

    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: &[u8],
        flags: &[String],
        internal_date_ms: i64,
    ) -> Result<Appended, AccessError> {
        let limit = *self.quota_limit.lock().unwrap();
        if limit > 0 && self.used_bytes() + message.len() as u64 > limit {
            return Err(AccessError::OverQuota("limit".into()));
        }
        let date = if internal_date_ms == 0 {
            1_709_211_909_000
        } else {
            internal_date_ms
        };
        let appended = self.with_mailbox(account, mailbox, |m| {
            let uid = m.add(message, flags.to_vec(), date);
            Ok(Appended {
                uid_validity: m.uid_validity,
                uid,
            })
        })?;
        self.publish(mailbox, Kind::Appended, appended.uid);
        Ok(appended)
    }

    async fn copy(
        &self,
        account: &str,
        from: &str,
        to: &str,
        uids: &[u32],
        move_messages: bool,
    ) -> Result<Copied, AccessError> {
        if account != USER {
            return Err(AccessError::NotFound(account.into()));
        }
        let copied = {
            let mut boxes = self.mailboxes.lock().unwrap();
            if !boxes.contains_key(to) {
                return Err(AccessError::NotFound(to.into()));
            }
            let source = boxes
                .get_mut(from)
                .ok_or_else(|| AccessError::NotFound(from.into()))?;
            let chosen: Vec<(u32, Stored)> = source
                .messages
                .iter()
                .filter(|(uid, _)| uids.contains(uid))
                .map(|(&uid, s)| (uid, s.clone()))
                .collect();
            if move_messages {
                for (uid, _) in &chosen {
                    source.messages.remove(uid);
                }
            }
            let target = boxes.get_mut(to).unwrap();
            let mut pairs = Vec::new();
            for (uid, stored) in chosen {
                let new = target.add(&stored.body, stored.flags, stored.internal_date_ms);
                pairs.push((uid, new));
            }
            Copied {
                uid_validity: target.uid_validity,
                pairs,
            }
        };
        for (source, new) in &copied.pairs {
            self.publish(to, Kind::Appended, *new);
            if move_messages {
                self.publish(from, Kind::Expunged, *source);
            }
        }
        Ok(copied)
    }

    /// Like the mailstore, with undecoded header values (enough here).
    async fn list_messages_for_search(
        &self,
        account: &str,
        mailbox: &str,
    ) -> Result<Vec<MessageInfo>, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            Ok(m.messages
                .iter()
                .map(|(&uid, s)| {
                    let mut info = info(uid, s);
                    let text = String::from_utf8_lossy(&s.body);
                    for line in text.lines().take_while(|l| !l.is_empty()) {
                        if let Some((name, value)) = line.split_once(':') {
                            let name = name.to_ascii_lowercase();
                            if ["from", "to", "cc", "bcc", "subject"].contains(&name.as_str()) {
                                info.search_header
                                    .push_str(&format!("{name}: {}\n", value.trim()));
                            }
                        }
                    }
                    if let Some(date) = mail_parser::MessageParser::default()
                        .parse_headers(&s.body)
                        .and_then(|m| m.date().map(|d| d.to_timestamp()))
                    {
                        info.search_header.push_str(&format!("date: {date}\n"));
                    }
                    info
                })
                .collect())
        })
    }

    async fn quota(&self, _account: &str) -> Result<Quota, AccessError> {
        Ok(Quota {
            used_bytes: self.used_bytes(),
            limit_bytes: *self.quota_limit.lock().unwrap(),
            messages: 0,
        })
    }
}

#[async_trait]
impl Events for MemoryStore {
    async fn publish(&self, event: &MailboxEvent) -> backend::Result<()> {
        let _ = self.events.send(event.clone());
        Ok(())
    }

    async fn subscribe(&self, account: &str) -> backend::Result<BoxStream<'static, MailboxEvent>> {
        let account = account.to_owned();
        let receiver = self.events.subscribe();
        let stream = futures::stream::unfold(receiver, move |mut receiver| {
            let account = account.clone();
            async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) if event.account == account => return Some((event, receiver)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

pub fn shared(store: &Arc<MemoryStore>) -> Arc<Shared> {
    Arc::new(Shared {
        store: store.clone(),
        events: store.clone(),
        metrics: Metrics::new(),
        limits: Limits::default(),
        tls: None,
        trusted_networks: Vec::new(),
        learner: None,
    })
}

/// The client end of a session.
pub struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
}

impl Client {
    pub fn new(stream: DuplexStream) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Client {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Sends `line` and CRLF.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
        self.writer.flush().await.unwrap();
    }

    /// The next line without CRLF; `None` at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
            .await
            .expect("server answered within 5 s")
            .unwrap();
        if n == 0 {
            return None;
        }
        Some(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    pub async fn expect_line(&mut self) -> String {
        self.line().await.expect("a line, not end of stream")
    }

    /// Sends `tag command` and returns every line up to and including the
    /// tagged one.
    pub async fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}")).await;
        self.until_tagged(tag).await
    }

    pub async fn until_tagged(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.expect_line().await;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends a POP3 command and returns its single-line reply.
    pub async fn pop3(&mut self, command: &str) -> String {
        self.send(command).await;
        self.expect_line().await
    }

    /// Sends a POP3 command with a multi-line answer; returns the status line
    /// and the raw (still dot-stuffed) lines before the final `.`.
    pub async fn pop3_multi(&mut self, command: &str) -> (String, Vec<String>) {
        self.send(command).await;
        let status = self.expect_line().await;
        let mut lines = Vec::new();
        if status.starts_with("+OK") {
            loop {
                let line = self.expect_line().await;
                if line == "." {
                    break;
                }
                lines.push(line);
            }
        }
        (status, lines)
    }
}

pub type Serve = fn(DuplexStream, Arc<Shared>, CancellationToken);
