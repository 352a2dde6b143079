//! IMAP session transcripts over an in-memory stream and mailstore.

mod support;

use std::sync::Arc;

use mailfleet_access::imap;
use mailfleet_runtime::CancellationToken;
use support::{Client, MemoryStore, PASSWORD, UID_VALIDITY, USER};
use tokio::task::JoinHandle;

const MESSAGE_1: &[u8] = b"From: bob@example.org\r\nSubject: one\r\n\r\nHello Alice.\r\n";
const MESSAGE_2: &[u8] = b"From: carol@example.org\r\nSubject: two\r\n\r\nSecond.\r\n";

struct Harness {
    client: Client,
    store: Arc<MemoryStore>,
    shutdown: CancellationToken,
    session: JoinHandle<()>,
}

async fn start() -> Harness {
    let store = MemoryStore::new();
    store.deliver("INBOX", MESSAGE_1);
    store.deliver("INBOX", MESSAGE_2);
    let (client, server) = tokio::io::duplex(1 << 20);
    let shutdown = CancellationToken::new();
    let session = tokio::spawn(imap::serve(
        server,
        support::shared(&store),
        shutdown.clone(),
    ));
    let mut client = Client::new(client);
    let greeting = client.expect_line().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    Harness {
        client,
        store,
        shutdown,
        session,
    }
}

async fn logged_in() -> Harness {
    let mut h = start().await;
    let lines = h
        .client
        .imap("a0", &format!("LOGIN {USER} \"{PASSWORD}\""))
        .await;
    assert!(lines.last().unwrap().starts_with("a0 OK"), "{lines:?}");
    h
}

async fn selected() -> Harness {
    let mut h = logged_in().await;
    let lines = h.client.imap("s0", "SELECT INBOX").await;
    assert!(
        lines.last().unwrap().starts_with("s0 OK [READ-WRITE]"),
        "{lines:?}"
    );
    h
}

#[tokio::test]
async fn capability_login_failure_and_success_logout() {
    let mut h = start().await;
    // C: a1 CAPABILITY
    let lines = h.client.imap("a1", "CAPABILITY").await;
    assert!(lines[0].starts_with("* CAPABILITY IMAP4rev1 "), "{lines:?}");
    assert!(!lines[0].contains("LOGINDISABLED"));
    assert_eq!(lines[1], "a1 OK CAPABILITY completed");
    // C: a2 LOGIN alice wrong
    let lines = h.client.imap("a2", &format!("LOGIN {USER} wrong")).await;
    assert_eq!(lines, ["a2 NO [AUTHENTICATIONFAILED] invalid credentials"]);
    // Commands of the authenticated state are refused before login.
    let lines = h.client.imap("a3", "SELECT INBOX").await;
    assert!(lines[0].starts_with("a3 BAD"), "{lines:?}");
    let lines = h
        .client
        .imap("a4", &format!("LOGIN {USER} \"{PASSWORD}\""))
        .await;
    assert!(lines[0].starts_with("a4 OK [CAPABILITY"), "{lines:?}");
    let lines = h.client.imap("a5", "LOGIN again x").await;
    assert!(lines[0].starts_with("a5 BAD"), "{lines:?}");
    let lines = h.client.imap("a6", "LOGOUT").await;
    assert_eq!(lines, ["* BYE logging out", "a6 OK LOGOUT completed"]);
    assert_eq!(h.client.line().await, None);
    h.session.await.unwrap();
}

#[tokio::test]
async fn login_with_synchronising_and_non_synchronising_literals() {
    let mut h = start().await;
    // C: a1 LOGIN {17}
    // S: + Ready for literal data
    // C: alice@example.com {9+}
    // C: secret pw
    h.client.send(&format!("a1 LOGIN {{{}}}", USER.len())).await;
    let cont = h.client.expect_line().await;
    assert!(cont.starts_with("+ "), "{cont}");
    h.client
        .send(&format!("{USER} {{{}+}}", PASSWORD.len()))
        .await;
    h.client.send(PASSWORD).await;
    let lines = h.client.until_tagged("a1").await;
    assert!(lines[0].starts_with("a1 OK"), "{lines:?}");
}

#[tokio::test]
async fn oversized_literal_is_refused_and_the_session_goes_on() {
    let mut h = start().await;
    let lines = h.client.imap("a1", "LOGIN {999999999}").await;
    assert_eq!(lines, ["a1 BAD [TOOBIG] literal too large"]);
    let lines = h.client.imap("a2", "NOOP").await;
    assert_eq!(lines, ["a2 OK NOOP completed"]);
}

#[tokio::test]
async fn bad_and_unknown_commands_keep_the_session() {
    let mut h = logged_in().await;
    let lines = h.client.imap("b1", "FROBNICATE now").await;
    assert_eq!(lines, ["b1 BAD unknown command"]);
    let lines = h.client.imap("b2", "FETCH 1 FLAGS").await;
    assert_eq!(lines, ["b2 BAD no mailbox selected"]);
    h.client.send("").await;
    assert!(h.client.expect_line().await.starts_with("* BAD"));
    let long = format!("b3 LOGIN {}", "x".repeat(70 * 1024));
    let lines = h.client.imap("b3", &long[3..]).await;
    assert_eq!(lines, ["b3 BAD command line too long"]);
    let lines = h.client.imap("b4", "NOOP").await;
    assert_eq!(lines, ["b4 OK NOOP completed"]);
}

#[tokio::test]
async fn list_with_special_use_and_delimiter() {
    let mut h = logged_in().await;
    let lines = h.client.imap("l1", "LIST \"\" \"\"").await;
    assert_eq!(
        lines,
        ["* LIST (\\Noselect) \"/\" \"\"", "l1 OK LIST completed"]
    );
    let lines = h.client.imap("l2", "LIST \"\" *").await;
    assert!(
        lines.contains(&"* LIST (\\HasNoChildren) \"/\" \"INBOX\"".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"* LIST (\\Sent \\HasNoChildren) \"/\" \"Sent\"".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"* LIST (\\Archive \\HasChildren) \"/\" \"Archive\"".to_owned()),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 6);
    let lines = h.client.imap("l3", "LIST \"\" %").await;
    assert_eq!(lines.len(), 5, "% does not descend: {lines:?}");
    let lines = h.client.imap("l4", "LIST Archive/ %").await;
    assert_eq!(lines[0], "* LIST (\\HasNoChildren) \"/\" \"Archive/2024\"");
}

#[tokio::test]
async fn select_and_examine() {
    let mut h = logged_in().await;
    let lines = h.client.imap("s1", "SELECT inbox").await;
    for expected in [
        "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
        "* 2 EXISTS",
        "* 0 RECENT",
        &format!("* OK [UIDVALIDITY {UID_VALIDITY}] UIDs valid"),
        "* OK [UIDNEXT 3] predicted next UID",
        "s1 OK [READ-WRITE] SELECT completed",
    ] {
        assert!(
            lines.iter().any(|l| l == expected),
            "{expected} in {lines:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("* OK [PERMANENTFLAGS ("))
    );
    let lines = h.client.imap("s2", "EXAMINE INBOX").await;
    assert!(lines.contains(&"* OK [CLOSED] previous mailbox is now closed".to_owned()));
    assert_eq!(lines.last().unwrap(), "s2 OK [READ-ONLY] EXAMINE completed");
    // Fetching in a read-only mailbox never sets \Seen.
    h.client.imap("s3", "FETCH 1 BODY[]").await;
    assert!(h.store.message("INBOX", 1).unwrap().flags.is_empty());
    let lines = h.client.imap("s4", "STORE 1 +FLAGS (\\Seen)").await;
    assert_eq!(lines, ["s4 NO [READ-ONLY] mailbox is read-only"]);
    let lines = h.client.imap("s5", "SELECT Nowhere").await;
    assert_eq!(
        lines.last().unwrap(),
        "s5 NO [NONEXISTENT] no such mailbox or message"
    );
    let lines = h.client.imap("s6", "FETCH 1 FLAGS").await;
    assert_eq!(lines, ["s6 BAD no mailbox selected"]);
}

#[tokio::test]
async fn fetch_body_peek_does_not_set_seen_but_body_does() {
    let mut h = selected().await;
    // BODY.PEEK[] leaves flags alone.
    let lines = h
        .client
        .imap("f1", "FETCH 1 (UID RFC822.SIZE BODY.PEEK[])")
        .await;
    assert_eq!(
        lines[0],
        format!(
            "* 1 FETCH (UID 1 RFC822.SIZE {} BODY[] {{{}}}",
            MESSAGE_1.len(),
            MESSAGE_1.len()
        )
    );
    assert_eq!(lines[1], "From: bob@example.org");
    assert_eq!(lines.last().unwrap(), "f1 OK FETCH completed");
    assert!(h.store.message("INBOX", 1).unwrap().flags.is_empty());

    // BODY[] sets \Seen and says so with FLAGS in the same response.
    let lines = h.client.imap("f2", "FETCH 1 BODY[]").await;
    assert_eq!(
        lines[0],
        format!("* 1 FETCH (BODY[] {{{}}}", MESSAGE_1.len())
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" FLAGS (\\Seen))")),
        "{lines:?}"
    );
    assert_eq!(h.store.message("INBOX", 1).unwrap().flags, ["\\Seen"]);

    let lines = h.client.imap("f3", "FETCH 1:* (FLAGS)").await;
    assert_eq!(
        lines,
        [
            "* 1 FETCH (FLAGS (\\Seen))",
            "* 2 FETCH (FLAGS ())",
            "f3 OK FETCH completed"
        ]
    );
}

#[tokio::test]
async fn fetch_header_text_rfc822_and_uid_fetch() {
    let mut h = selected().await;
    let lines = h.client.imap("f1", "FETCH 2 (BODY.PEEK[HEADER])").await;
    assert_eq!(lines[0], "* 2 FETCH (BODY[HEADER] {41}");
    let lines = h.client.imap("f2", "FETCH 2 BODY.PEEK[TEXT]<0.6>").await;
    assert_eq!(lines[0], "* 2 FETCH (BODY[TEXT]<0> {6}");
    assert_eq!(lines[1], "Second)");
    // UID FETCH always answers UID; unknown UIDs are ignored.
    let lines = h
        .client
        .imap("f3", "UID FETCH 2:99 (FLAGS INTERNALDATE)")
        .await;
    assert_eq!(
        lines,
        [
            "* 2 FETCH (UID 2 FLAGS () INTERNALDATE \"29-Feb-2024 13:05:09 +0000\")",
            "f3 OK UID FETCH completed"
        ]
    );
    let lines = h.client.imap("f4", "FETCH 2 RFC822").await;
    assert_eq!(
        lines[0],
        format!("* 2 FETCH (RFC822 {{{}}}", MESSAGE_2.len())
    );
    assert_eq!(h.store.message("INBOX", 2).unwrap().flags, ["\\Seen"]);
    // ENVELOPE: sender and reply-to default to from (RFC 3501 §7.4.2).
    let lines = h.client.imap("f5", "FETCH 1 ENVELOPE").await;
    assert_eq!(
        lines,
        [
            "* 1 FETCH (ENVELOPE (NIL \"one\" ((NIL NIL \"bob\" \"example.org\")) \
             ((NIL NIL \"bob\" \"example.org\")) ((NIL NIL \"bob\" \"example.org\")) \
             NIL NIL NIL NIL NIL))",
            "f5 OK FETCH completed"
        ]
    );
    // Unknown items and numbers beyond the mailbox are BAD.
    let lines = h.client.imap("f5b", "FETCH 1 FROB").await;
    assert!(lines[0].starts_with("f5b BAD"), "{lines:?}");
    let lines = h.client.imap("f6", "FETCH 3 FLAGS").await;
    assert_eq!(lines, ["f6 BAD invalid message sequence number"]);
}

#[tokio::test]
async fn store_and_expunge() {
    let mut h = selected().await;
    let lines = h
        .client
        .imap("e1", "STORE 1 +FLAGS (\\Deleted \\Seen)")
        .await;
    assert_eq!(
        lines,
        [
            "* 1 FETCH (FLAGS (\\Deleted \\Seen))",
            "e1 OK STORE completed"
        ]
    );
    let lines = h.client.imap("e2", "STORE 1 -FLAGS.SILENT (\\Seen)").await;
    assert_eq!(lines, ["e2 OK STORE completed"]);
    let lines = h.client.imap("e3", "UID STORE 2 FLAGS (\\Flagged)").await;
    assert_eq!(
        lines,
        [
            "* 2 FETCH (UID 2 FLAGS (\\Flagged))",
            "e3 OK UID STORE completed"
        ]
    );
    let lines = h.client.imap("e4", "EXPUNGE").await;
    assert_eq!(lines, ["* 1 EXPUNGE", "e4 OK EXPUNGE completed"]);
    assert_eq!(h.store.uids("INBOX"), [2]);
    // Sequence number 1 is now UID 2.
    let lines = h.client.imap("e5", "FETCH 1 (UID FLAGS)").await;
    assert_eq!(lines[0], "* 1 FETCH (UID 2 FLAGS (\\Flagged))");
    // CLOSE expunges silently, UNSELECT does not.
    h.client.imap("e6", "STORE 1 +FLAGS (\\Deleted)").await;
    let lines = h.client.imap("e7", "UNSELECT").await;
    assert_eq!(lines, ["e7 OK UNSELECT completed"]);
    assert_eq!(h.store.uids("INBOX"), [2]);
    h.client.imap("e8", "SELECT INBOX").await;
    let lines = h.client.imap("e9", "CLOSE").await;
    assert_eq!(lines, ["e9 OK CLOSE completed"]);
    assert!(h.store.uids("INBOX").is_empty());
    let lines = h.client.imap("e10", "EXPUNGE").await;
    assert_eq!(lines, ["e10 BAD no mailbox selected"]);
}

#[tokio::test]
async fn new_mail_is_reported_at_noop() {
    let mut h = selected().await;
    h.store.deliver("INBOX", b"Subject: three\r\n\r\n3\r\n");
    h.store.deliver("Sent", b"Subject: elsewhere\r\n\r\n\r\n");
    let lines = h.client.imap("n1", "NOOP").await;
    assert_eq!(lines, ["* 3 EXISTS", "n1 OK NOOP completed"]);
    // Reported once, and on other commands too once an event was seen.
    let lines = h.client.imap("n2", "NOOP").await;
    assert_eq!(lines, ["n2 OK NOOP completed"]);
    h.store.deliver("INBOX", b"Subject: four\r\n\r\n4\r\n");
    tokio::task::yield_now().await;
    let lines = h.client.imap("n3", "FETCH 1 FLAGS").await;
    assert_eq!(lines[0], "* 4 EXISTS", "{lines:?}");
}

#[tokio::test]
async fn idle_pushes_exists_until_done() {
    let mut h = selected().await;
    h.client.send("i1 IDLE").await;
    assert_eq!(h.client.expect_line().await, "+ idling");
    h.store.deliver("INBOX", b"Subject: pushed\r\n\r\nhi\r\n");
    assert_eq!(h.client.expect_line().await, "* 3 EXISTS");
    h.client.send("DONE").await;
    assert_eq!(h.client.expect_line().await, "i1 OK IDLE terminated");
    let lines = h.client.imap("i2", "NOOP").await;
    assert_eq!(lines, ["i2 OK NOOP completed"]);
}

#[tokio::test]
async fn shutdown_says_bye_to_idle_sessions() {
    let mut h = selected().await;
    h.shutdown.cancel();
    assert_eq!(h.client.expect_line().await, "* BYE server shutting down");
    assert_eq!(h.client.line().await, None);
    h.session.await.unwrap();

    let mut h = selected().await;
    h.client.send("i1 IDLE").await;
    assert_eq!(h.client.expect_line().await, "+ idling");
    h.shutdown.cancel();
    assert_eq!(h.client.expect_line().await, "* BYE server shutting down");
    h.session.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_logs_out() {
    let mut h = logged_in().await;
    tokio::time::advance(std::time::Duration::from_secs(31 * 60)).await;
    let line = h.client.expect_line().await;
    assert!(line.starts_with("* BYE autologout"), "{line}");
    h.session.await.unwrap();
}
