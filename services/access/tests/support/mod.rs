//! An in-memory mailstore and event bus for session tests, and a line
//! client over `tokio::io::duplex`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mailfleet_access::store::{FlagMode, MailboxInfo, MailboxStatus, MessageInfo};
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
}

struct Mailbox {
    attributes: Vec<String>,
    uid_next: u32,
    messages: BTreeMap<u32, Stored>,
}

/// The mailstore of one account, `alice@example.com`.
pub struct MemoryStore {
    mailboxes: Mutex<BTreeMap<String, Mailbox>>,
    events: broadcast::Sender<MailboxEvent>,
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
                Mailbox {
                    attributes: attribute.map(str::to_owned).into_iter().collect(),
                    uid_next: 1,
                    messages: BTreeMap::new(),
                },
            );
        }
        let (events, _) = broadcast::channel(64);
        Arc::new(MemoryStore {
            mailboxes: Mutex::new(mailboxes),
            events,
        })
    }

    /// Adds a message and publishes the change event, like mailstore.
    pub fn deliver(&self, mailbox: &str, body: &[u8]) -> u32 {
        let uid = {
            let mut boxes = self.mailboxes.lock().unwrap();
            let mailbox = boxes.get_mut(mailbox).unwrap();
            let uid = mailbox.uid_next;
            mailbox.uid_next += 1;
            mailbox.messages.insert(
                uid,
                Stored {
                    flags: Vec::new(),
                    body: body.to_vec(),
                },
            );
            uid
        };
        let _ = self.events.send(MailboxEvent {
            account: USER.into(),
            mailbox: mailbox.into(),
            kind: Kind::Appended as i32,
            uid,
            modseq: 0,
        });
        uid
    }

    pub fn message(&self, mailbox: &str, uid: u32) -> Option<Stored> {
        self.mailboxes.lock().unwrap()[mailbox]
            .messages
            .get(&uid)
            .cloned()
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
        internal_date_ms: 1_709_211_909_000,
        modseq: 1,
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
                subscribed: true,
            })
            .collect())
    }

    async fn select(&self, account: &str, mailbox: &str) -> Result<MailboxStatus, AccessError> {
        self.with_mailbox(account, mailbox, |m| {
            Ok(MailboxStatus {
                uid_validity: UID_VALIDITY,
                uid_next: m.uid_next,
                exists: m.messages.len() as u32,
                unseen: 0,
                highest_modseq: 1,
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
            Ok(doomed)
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
