//! Transcripts of the IMAP commands a mail client needs beyond the basics:
//! AUTHENTICATE, ENABLE, ID, NAMESPACE, mailbox management, STATUS,
//! APPEND, COPY/MOVE (UIDPLUS), UID EXPUNGE, SEARCH/ESEARCH, MIME fetches,
//! CONDSTORE, QUOTA, and two sessions on one mailbox. Each test reads as
//! `C:` (the command) and `S:` (the asserted lines).

mod support;

use std::sync::Arc;

use mailfleet_access::imap;
use mailfleet_runtime::CancellationToken;
use support::{Client, MemoryStore, PASSWORD, UID_VALIDITY, USER};

const MESSAGE_1: &[u8] = b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: quarterly report\r\nDate: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\nThe numbers are in.\r\n";
const MESSAGE_2: &[u8] = b"From: carol@example.org\r\nSubject: lunch\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nNoon?\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b1--\r\n";

fn connect(store: &Arc<MemoryStore>) -> Client {
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(imap::serve(
        server,
        support::shared(store),
        CancellationToken::new(),
    ));
    Client::new(client)
}

async fn login(store: &Arc<MemoryStore>) -> Client {
    let mut client = connect(store);
    client.expect_line().await;
    let lines = client
        .imap("a0", &format!("LOGIN {USER} \"{PASSWORD}\""))
        .await;
    assert!(lines.last().unwrap().starts_with("a0 OK"), "{lines:?}");
    client
}

async fn selected() -> (Arc<MemoryStore>, Client) {
    let store = MemoryStore::new();
    store.deliver("INBOX", MESSAGE_1);
    store.deliver("INBOX", MESSAGE_2);
    let mut client = login(&store).await;
    let lines = client.imap("s0", "SELECT INBOX").await;
    assert!(lines.last().unwrap().starts_with("s0 OK"), "{lines:?}");
    (store, client)
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = format!("{authzid}\0{user}\0{password}").into_bytes();
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn capabilities_list_the_extensions() {
    let store = MemoryStore::new();
    let mut c = connect(&store);
    c.expect_line().await;
    let lines = c.imap("c1", "CAPABILITY").await;
    for capability in [
        "IMAP4rev1",
        "AUTH=PLAIN",
        "SASL-IR",
        "UIDPLUS",
        "MOVE",
        "CONDSTORE",
        "ESEARCH",
        "QUOTA",
        "LIST-EXTENDED",
        "SPECIAL-USE",
        "NAMESPACE",
        "ENABLE",
        "ID",
    ] {
        assert!(
            lines[0].split(' ').any(|c| c == capability),
            "{capability} missing: {lines:?}"
        );
    }
}

#[tokio::test]
async fn authenticate_plain_inline_and_with_continuation() {
    let store = MemoryStore::new();
    let mut c = connect(&store);
    c.expect_line().await;
    // C: a1 AUTHENTICATE PLAIN <wrong>
    let lines = c
        .imap(
            "a1",
            &format!("AUTHENTICATE PLAIN {}", plain("", USER, "nope")),
        )
        .await;
    assert_eq!(lines, ["a1 NO [AUTHENTICATIONFAILED] invalid credentials"]);
    // C: a2 AUTHENTICATE PLAIN   S: +   C: *
    c.send("a2 AUTHENTICATE PLAIN").await;
    assert_eq!(c.expect_line().await, "+ ");
    c.send("*").await;
    assert_eq!(c.expect_line().await, "a2 BAD authentication cancelled");
    let lines = c.imap("a3", "AUTHENTICATE PLAIN !!!").await;
    assert!(lines[0].starts_with("a3 BAD"), "{lines:?}");
    let lines = c.imap("a4", "AUTHENTICATE CRAM-MD5").await;
    assert!(lines[0].starts_with("a4 NO"), "{lines:?}");
    // Another user's authorization identity is refused.
    let lines = c
        .imap(
            "a5",
            &format!(
                "AUTHENTICATE PLAIN {}",
                plain("bob@example.com", USER, PASSWORD)
            ),
        )
        .await;
    assert!(
        lines[0].starts_with("a5 NO [AUTHORIZATIONFAILED]"),
        "{lines:?}"
    );
    c.send("a6 AUTHENTICATE PLAIN").await;
    assert_eq!(c.expect_line().await, "+ ");
    c.send(&plain(USER, USER, PASSWORD)).await;
    let line = c.expect_line().await;
    assert!(line.starts_with("a6 OK [CAPABILITY "), "{line}");
    let lines = c.imap("a7", "AUTHENTICATE PLAIN =").await;
    assert_eq!(lines, ["a7 BAD already authenticated"]);
}

#[tokio::test]
async fn enable_id_namespace() {
    let store = MemoryStore::new();
    let mut c = connect(&store);
    c.expect_line().await;
    let lines = c.imap("e0", "ENABLE CONDSTORE").await;
    assert_eq!(lines, ["e0 BAD LOGIN first"]);
    // ID works before login (RFC 2971 §3.1).
    let lines = c
        .imap("i1", "ID (\"name\" \"imaplib\" \"version\" NIL)")
        .await;
    assert!(
        lines[0].starts_with("* ID (\"name\" \"Mailfleet\""),
        "{lines:?}"
    );
    assert_eq!(lines[1], "i1 OK ID completed");
    let lines = c.imap("i2", "ID NIL").await;
    assert_eq!(lines[1], "i2 OK ID completed");
    let mut c = login(&store).await;
    let lines = c.imap("e1", "ENABLE CONDSTORE X-UNKNOWN").await;
    assert_eq!(lines, ["* ENABLED CONDSTORE", "e1 OK ENABLE completed"]);
    let lines = c.imap("n1", "NAMESPACE").await;
    assert_eq!(
        lines,
        [
            "* NAMESPACE ((\"\" \"/\")) NIL NIL",
            "n1 OK NAMESPACE completed"
        ]
    );
}

#[tokio::test]
async fn create_rename_delete_subscribe_list_lsub() {
    let store = MemoryStore::new();
    let mut c = login(&store).await;
    assert_eq!(
        c.imap("m1", "CREATE Projects/").await,
        ["m1 OK CREATE completed"]
    );
    assert_eq!(
        c.imap("m2", "CREATE Projects").await,
        ["m2 NO [ALREADYEXISTS] mailbox already exists"]
    );
    assert_eq!(
        c.imap("m3", "CREATE inbox").await,
        ["m3 NO [ALREADYEXISTS] INBOX always exists"]
    );
    assert_eq!(
        c.imap("m4", "RENAME Projects Work").await,
        ["m4 OK RENAME completed"]
    );
    assert!(store.names().contains(&"Work".to_owned()));
    assert_eq!(
        c.imap("m5", "RENAME Nope Other").await,
        ["m5 NO [NONEXISTENT] no such mailbox or message"]
    );
    assert_eq!(
        c.imap("m6", "UNSUBSCRIBE Junk").await,
        ["m6 OK UNSUBSCRIBE completed"]
    );
    let lines = c.imap("m7", "LSUB \"\" *").await;
    assert!(
        lines.contains(&"* LSUB () \"/\" \"Work\"".to_owned()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.ends_with(" \"Junk\"")), "{lines:?}");
    // LIST-EXTENDED: subscribed only, with \Subscribed.
    let lines = c.imap("m8", "LIST (SUBSCRIBED) \"\" \"*\"").await;
    assert!(
        lines.contains(&"* LIST (\\HasNoChildren \\Subscribed) \"/\" \"Work\"".to_owned()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.ends_with(" \"Junk\"")), "{lines:?}");
    // RETURN (SPECIAL-USE STATUS (...)), several patterns.
    let lines = c
        .imap(
            "m9",
            "LIST \"\" (Sent Work) RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT))",
        )
        .await;
    assert_eq!(
        lines,
        [
            "* LIST (\\Sent \\HasNoChildren) \"/\" \"Sent\"",
            "* STATUS \"Sent\" (MESSAGES 0 UIDNEXT 1)",
            "* LIST (\\HasNoChildren) \"/\" \"Work\"",
            "* STATUS \"Work\" (MESSAGES 0 UIDNEXT 1)",
            "m9 OK LIST completed"
        ]
    );
    assert_eq!(
        c.imap("m10", "LIST (SPECIAL-USE) \"\" *").await.len(),
        4,
        "Sent, Junk, Archive and the tagged line"
    );
    assert_eq!(
        c.imap("m11", "DELETE Work").await,
        ["m11 OK DELETE completed"]
    );
    assert_eq!(
        c.imap("m12", "DELETE INBOX").await,
        ["m12 NO [CANNOT] INBOX cannot be deleted"]
    );
    assert!(!store.names().contains(&"Work".to_owned()));
}

#[tokio::test]
async fn status_of_a_mailbox() {
    let (store, mut c) = selected().await;
    store.deliver("Archive", MESSAGE_1);
    let lines = c
        .imap("t1", "STATUS Archive (MESSAGES UNSEEN UIDNEXT UIDVALIDITY SIZE DELETED HIGHESTMODSEQ RECENT)")
        .await;
    assert_eq!(
        lines,
        [
            format!(
                "* STATUS \"Archive\" (MESSAGES 1 UNSEEN 1 UIDNEXT 2 UIDVALIDITY {UID_VALIDITY} SIZE {} DELETED 0 HIGHESTMODSEQ 2 RECENT 0)",
                MESSAGE_1.len()
            ),
            "t1 OK STATUS completed".to_owned()
        ]
    );
    assert!(c.imap("t2", "STATUS Nope (MESSAGES)").await[0].starts_with("t2 NO [NONEXISTENT]"));
    assert!(c.imap("t3", "STATUS INBOX (BOGUS)").await[0].starts_with("t3 BAD"));
}

#[tokio::test]
async fn append_with_literals_flags_and_date() {
    let (store, mut c) = selected().await;
    let message = b"Subject: draft\r\n\r\nhello\r\n";
    // C: p1 APPEND Drafts... {n}  S: +  C: <message>
    c.send(&format!(
        "p1 APPEND Archive (\\Seen $Draft) \" 7-Feb-2024 10:00:00 +0100\" {{{}}}",
        message.len()
    ))
    .await;
    assert!(c.expect_line().await.starts_with("+ "));
    c.send_raw(message).await;
    c.send_raw(b"\r\n").await;
    assert_eq!(
        c.until_tagged("p1").await,
        [format!(
            "p1 OK [APPENDUID {UID_VALIDITY} 1] APPEND completed"
        )]
    );
    let stored = store.message("Archive", 1).unwrap();
    assert_eq!(stored.body, message);
    assert_eq!(stored.flags, ["\\Seen", "$Draft"]);
    assert_eq!(stored.internal_date_ms, 1_707_296_400_000);
    // LITERAL+ into the selected mailbox: EXISTS follows.
    c.send_raw(format!("p2 APPEND INBOX {{{}+}}\r\n", message.len()).as_bytes())
        .await;
    c.send_raw(message).await;
    c.send_raw(b"\r\n").await;
    let lines = c.until_tagged("p2").await;
    assert_eq!(
        lines,
        [
            "* 3 EXISTS".to_owned(),
            format!("p2 OK [APPENDUID {UID_VALIDITY} 3] APPEND completed")
        ]
    );
    let lines = c.imap("p3", "APPEND Nope {1+}\r\nx").await;
    assert_eq!(lines, ["p3 NO [TRYCREATE] no such mailbox"]);
    *store.quota_limit.lock().unwrap() = 10;
    let lines = c.imap("p4", "APPEND INBOX {5+}\r\nhello").await;
    assert_eq!(lines, ["p4 NO [OVERQUOTA] quota exceeded"]);
    let lines = c
        .imap("p5", "APPEND INBOX \"not a date\" {5+}\r\nhello")
        .await;
    assert!(lines[0].starts_with("p5 BAD"), "{lines:?}");
}

#[tokio::test]
async fn copy_and_move_answer_copyuid() {
    let (store, mut c) = selected().await;
    let lines = c.imap("y1", "COPY 1:2 Archive").await;
    assert_eq!(
        lines,
        [format!(
            "y1 OK [COPYUID {UID_VALIDITY} 1:2 1:2] COPY completed"
        )]
    );
    assert_eq!(store.uids("Archive"), [1, 2]);
    assert_eq!(store.uids("INBOX"), [1, 2]);
    // RFC 6851: COPYUID untagged, then EXPUNGE of the source.
    let lines = c.imap("y2", "MOVE 1 Junk").await;
    assert_eq!(
        lines,
        [
            format!("* OK [COPYUID {UID_VALIDITY} 1 1] moved"),
            "* 1 EXPUNGE".to_owned(),
            "y2 OK MOVE completed".to_owned()
        ]
    );
    assert_eq!(store.uids("INBOX"), [2]);
    let lines = c.imap("y3", "UID MOVE 2 Archive").await;
    assert_eq!(lines[1], "* 1 EXPUNGE");
    assert_eq!(lines[2], "y3 OK UID MOVE completed");
    let lines = c.imap("y4", "UID COPY 99 Archive").await;
    assert_eq!(lines, ["y4 OK UID COPY completed"]);
    let lines = c.imap("y5", "NOOP").await;
    assert_eq!(lines, ["y5 OK NOOP completed"], "no duplicate EXPUNGE");
    store.deliver("INBOX", MESSAGE_1);
    c.imap("y6", "NOOP").await;
    let lines = c.imap("y7", "COPY 1 Nope").await;
    assert_eq!(lines, ["y7 NO [TRYCREATE] no such mailbox"]);
}

#[tokio::test]
async fn uid_expunge_only_touches_the_given_uids() {
    let (store, mut c) = selected().await;
    c.imap("x1", "STORE 1:2 +FLAGS.SILENT (\\Deleted)").await;
    let lines = c.imap("x2", "UID EXPUNGE 2").await;
    assert_eq!(lines, ["* 2 EXPUNGE", "x2 OK UID EXPUNGE completed"]);
    assert_eq!(store.uids("INBOX"), [1]);
    let lines = c.imap("x3", "UID EXPUNGE 5:7").await;
    assert_eq!(lines, ["x3 OK UID EXPUNGE completed"]);
}

#[tokio::test]
async fn search_keys_and_esearch() {
    let (_store, mut c) = selected().await;
    c.imap("q0", "STORE 2 +FLAGS (\\Flagged)").await;
    let cases: &[(&str, &str)] = &[
        ("SEARCH ALL", "* SEARCH 1 2"),
        ("SEARCH FLAGGED", "* SEARCH 2"),
        ("SEARCH UNFLAGGED UNSEEN", "* SEARCH 1"),
        ("SEARCH FROM bob", "* SEARCH 1"),
        ("SEARCH SUBJECT LUNCH", "* SEARCH 2"),
        ("SEARCH BODY numbers", "* SEARCH 1"),
        ("SEARCH TEXT noon", "* SEARCH 2"),
        ("SEARCH HEADER To alice", "* SEARCH 1"),
        ("SEARCH OR FROM carol NOT ALL", "* SEARCH 2"),
        ("SEARCH (FLAGGED) 1:*", "* SEARCH 2"),
        ("SEARCH CHARSET UTF-8 SUBJECT report", "* SEARCH 1"),
        ("SEARCH SENTON 2-Jan-2024", "* SEARCH 1"),
        ("SEARCH ON 29-Feb-2024", "* SEARCH 1 2"),
        ("SEARCH BEFORE 1-Jan-2024", "* SEARCH"),
        ("SEARCH LARGER 200", "* SEARCH 2"),
        ("UID SEARCH UID 2:*", "* SEARCH 2"),
        (
            "SEARCH RETURN (MIN MAX COUNT) ALL",
            "* ESEARCH (TAG \"q\") MIN 1 MAX 2 COUNT 2",
        ),
        (
            "UID SEARCH RETURN () FROM example",
            "* ESEARCH (TAG \"q\") UID ALL 1:2",
        ),
        (
            "SEARCH RETURN (COUNT) DELETED",
            "* ESEARCH (TAG \"q\") COUNT 0",
        ),
    ];
    for (command, expected) in cases {
        let lines = c.imap("q", command).await;
        assert_eq!(lines[0], *expected, "{command}");
        assert!(lines[1].starts_with("q OK"), "{command}: {lines:?}");
    }
    let lines = c.imap("q1", "SEARCH CHARSET KOI8-R ALL").await;
    assert!(lines[0].contains("BADCHARSET"), "{lines:?}");
    let lines = c.imap("q2", "SEARCH FROBNICATE").await;
    assert!(lines[0].starts_with("q2 BAD"), "{lines:?}");
}

#[tokio::test]
async fn mime_fetches() {
    let (_store, mut c) = selected().await;
    let lines = c.imap("b1", "FETCH 2 (BODYSTRUCTURE)").await;
    assert_eq!(
        lines[0],
        "* 2 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 5 0 NIL NIL NIL NIL)\
         (\"APPLICATION\" \"PDF\" NIL NIL NIL \"BASE64\" 8 NIL NIL NIL NIL) \"MIXED\" \
         (\"BOUNDARY\" \"b1\") NIL NIL NIL))"
    );
    let lines = c.imap("b2", "FETCH 1 BODY").await;
    assert_eq!(
        lines[0],
        "* 1 FETCH (BODY (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 21 1))"
    );
    let lines = c
        .imap("b3", "FETCH 2 (BODY.PEEK[1] BINARY.PEEK[2] BINARY.SIZE[2])")
        .await;
    assert_eq!(lines[0], "* 2 FETCH (BODY[1] {5}");
    assert_eq!(lines[1], "Noon? BINARY[2] {5}");
    assert_eq!(lines[2], "hello BINARY.SIZE[2] 5)");
    let lines = c
        .imap("b4", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT from)]")
        .await;
    assert_eq!(
        lines[0],
        "* 1 FETCH (BODY[HEADER.FIELDS (subject from)] {58}"
    );
    assert_eq!(lines[1], "From: Bob <bob@example.org>");
    assert_eq!(lines[2], "Subject: quarterly report");
    let lines = c.imap("b5", "FETCH 1 (BODY.PEEK[2.MIME])").await;
    assert_eq!(lines[0], "* 1 FETCH (BODY[2.MIME] {0}");
    let lines = c.imap("b6", "FETCH 1 ALL").await;
    assert!(lines[0].contains(" ENVELOPE (\"Tue, 2 Jan 2024 10:00:00 +0000\" \"quarterly report\" ((\"Bob\" NIL \"bob\" \"example.org\"))"), "{lines:?}");
}

#[tokio::test]
async fn condstore_modseq_changedsince_unchangedsince() {
    let (_store, mut c) = selected().await;
    let lines = c.imap("d1", "FETCH 1:* (FLAGS) (CHANGEDSINCE 2)").await;
    assert_eq!(
        lines,
        ["* 2 FETCH (FLAGS () MODSEQ (3))", "d1 OK FETCH completed"]
    );
    let lines = c.imap("d2", "STORE 1 +FLAGS (\\Seen)").await;
    assert_eq!(lines[0], "* 1 FETCH (FLAGS (\\Seen) MODSEQ (4))");
    // Message 1 changed after MODSEQ 3: left alone, reported MODIFIED.
    let lines = c
        .imap("d3", "STORE 1:2 (UNCHANGEDSINCE 3) +FLAGS (\\Flagged)")
        .await;
    assert_eq!(
        lines,
        [
            "* 2 FETCH (FLAGS (\\Flagged) MODSEQ (5))",
            "d3 OK [MODIFIED 1] STORE completed"
        ]
    );
    let lines = c.imap("d4", "SEARCH MODSEQ 5").await;
    assert_eq!(lines[0], "* SEARCH 2 (MODSEQ 5)");
    let lines = c.imap("d5", "SELECT INBOX (CONDSTORE)").await;
    assert!(
        lines.contains(&"* OK [HIGHESTMODSEQ 5] highest".to_owned()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn quota_roots() {
    let (store, mut c) = selected().await;
    let lines = c.imap("g1", "GETQUOTAROOT INBOX").await;
    assert_eq!(
        lines,
        [
            "* QUOTAROOT \"INBOX\" \"\"",
            "* QUOTA \"\" ()",
            "g1 OK GETQUOTAROOT completed"
        ]
    );
    *store.quota_limit.lock().unwrap() = 10 * 1024;
    let lines = c.imap("g2", "GETQUOTA \"\"").await;
    assert_eq!(
        lines,
        ["* QUOTA \"\" (STORAGE 1 10)", "g2 OK GETQUOTA completed"]
    );
    let lines = c.imap("g3", "GETQUOTA other").await;
    assert!(lines[0].starts_with("g3 NO [NONEXISTENT]"), "{lines:?}");
}

/// RFC 2177 with two sessions on INBOX: the idling one sees the other's
/// append as EXISTS and its expunge as EXPUNGE.
#[tokio::test]
async fn two_sessions_idle_sees_new_mail_and_expunge() {
    let (store, mut idler) = selected().await;
    let mut other = login(&store).await;
    other.imap("o0", "SELECT INBOX").await;
    idler.send("i1 IDLE").await;
    assert_eq!(idler.expect_line().await, "+ idling");
    let lines = other.imap("o1", "APPEND INBOX {5+}\r\nhello").await;
    assert!(lines[1].starts_with("o1 OK [APPENDUID"), "{lines:?}");
    assert_eq!(idler.expect_line().await, "* 3 EXISTS");
    other.imap("o2", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let lines = other.imap("o3", "EXPUNGE").await;
    assert_eq!(lines, ["* 1 EXPUNGE", "o3 OK EXPUNGE completed"]);
    assert_eq!(idler.expect_line().await, "* 1 EXPUNGE");
    idler.send("DONE").await;
    assert_eq!(idler.expect_line().await, "i1 OK IDLE terminated");
    let lines = idler.imap("i2", "FETCH 1:* (UID)").await;
    assert_eq!(
        lines,
        [
            "* 1 FETCH (UID 2)",
            "* 2 FETCH (UID 3)",
            "i2 OK FETCH completed"
        ]
    );
}

/// RFC 9051 §6.2.3: off loopback and without TLS, LOGINDISABLED is
/// advertised and LOGIN/AUTHENTICATE refused with PRIVACYREQUIRED.
#[tokio::test]
async fn logindisabled_off_loopback_without_tls() {
    let store = MemoryStore::new();
    let (client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(imap::session::serve_connection(
        server,
        support::shared(&store),
        CancellationToken::new(),
        mailfleet_access::Connection {
            remote_ip: "192.0.2.7".parse().unwrap(),
            tls: false,
        },
    ));
    let mut c = Client::new(client);
    let greeting = c.expect_line().await;
    assert!(greeting.contains(" LOGINDISABLED]"), "{greeting}");
    assert!(!greeting.contains("AUTH=PLAIN"), "{greeting}");
    let lines = c.imap("l1", &format!("LOGIN {USER} \"{PASSWORD}\"")).await;
    assert_eq!(lines, ["l1 NO [PRIVACYREQUIRED] use STARTTLS first"]);
    let lines = c
        .imap(
            "l2",
            &format!("AUTHENTICATE PLAIN {}", plain("", USER, PASSWORD)),
        )
        .await;
    assert_eq!(lines, ["l2 NO [PRIVACYREQUIRED] use STARTTLS first"]);
    // No certificate in this test: STARTTLS is not offered.
    let lines = c.imap("l3", "STARTTLS").await;
    assert_eq!(lines, ["l3 NO [UNAVAILABLE] TLS is not available"]);
}

/// RFC 9051 after `ENABLE IMAP4rev2`: SELECT sends LIST instead of RECENT,
/// SEARCH answers ESEARCH; RFC 5182 SEARCHRES `$`.
#[tokio::test]
async fn imap4rev2_and_searchres() {
    let (_store, mut c) = selected().await;
    // Before ENABLE: rev1 answers.
    assert_eq!(c.imap("r0", "SEARCH ALL").await[0], "* SEARCH 1 2");
    let lines = c.imap("r1", "ENABLE IMAP4rev2").await;
    assert_eq!(lines, ["* ENABLED IMAP4rev2", "r1 OK ENABLE completed"]);
    let lines = c.imap("r2", "SELECT INBOX").await;
    assert!(
        lines.contains(&"* LIST () \"/\" \"INBOX\"".to_owned()),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("RECENT") || l.contains("UNSEEN")),
        "{lines:?}"
    );
    let lines = c.imap("r3", "UID SEARCH FROM carol").await;
    assert_eq!(lines[0], "* ESEARCH (TAG \"r3\") UID ALL 2");
    // SAVE alone answers no ESEARCH; `$` is the saved result.
    let lines = c.imap("r4", "SEARCH RETURN (SAVE) FROM bob").await;
    assert_eq!(lines, ["r4 OK SEARCH completed, result saved"]);
    let lines = c.imap("r5", "FETCH $ (UID)").await;
    assert_eq!(lines, ["* 1 FETCH (UID 1)", "r5 OK FETCH completed"]);
    let lines = c
        .imap("r6", "UID SEARCH RETURN (COUNT SAVE) NOT UID $")
        .await;
    assert_eq!(lines[0], "* ESEARCH (TAG \"r6\") UID COUNT 1");
    let lines = c.imap("r7", "UID STORE $ +FLAGS (\\Flagged)").await;
    assert_eq!(lines[0], "* 2 FETCH (UID 2 FLAGS (\\Flagged))");
    // A new SELECT forgets the saved result.
    c.imap("r8", "SELECT INBOX").await;
    let lines = c.imap("r9", "FETCH $ (UID)").await;
    assert_eq!(lines, ["r9 OK FETCH completed"]);
}

/// Flag changes by another session reach this one as unsolicited FETCH;
/// this session's own changes are not repeated.
#[tokio::test]
async fn flag_changes_of_another_session_are_reported() {
    let (store, mut a) = selected().await;
    let mut b = login(&store).await;
    b.imap("b0", "SELECT INBOX").await;
    let lines = a.imap("a1", "STORE 2 +FLAGS (\\Seen)").await;
    assert_eq!(
        lines,
        ["* 2 FETCH (FLAGS (\\Seen))", "a1 OK STORE completed"]
    );
    b.imap("b1", "STORE 1 +FLAGS.SILENT (\\Flagged)").await;
    let lines = a.imap("a2", "NOOP").await;
    assert_eq!(
        lines,
        [
            "* 1 FETCH (UID 1 FLAGS (\\Flagged))",
            "a2 OK NOOP completed"
        ]
    );
    let lines = a.imap("a3", "NOOP").await;
    assert_eq!(lines, ["a3 OK NOOP completed"]);
    // B hears A's \Seen (with MODSEQ once CONDSTORE is on).
    b.imap("b2", "ENABLE CONDSTORE").await;
    let lines = b.imap("b3", "NOOP").await;
    assert_eq!(
        lines,
        [
            "* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (4))",
            "b3 OK NOOP completed"
        ]
    );
}
