//! Transcripts of non-ASCII mailbox names: IMAP4rev1 clients speak modified
//! UTF-7 (RFC 3501 §5.1.3), clients that `ENABLE UTF8=ACCEPT` (RFC 6855)
//! or `IMAP4rev2` (RFC 9051 §5.1) speak UTF-8, and the mailstore holds one
//! UTF-8 name whichever wrote it. Malformed names get BAD and the session
//! goes on.

mod support;

use std::sync::Arc;

use mailfleet_access::imap;
use mailfleet_runtime::CancellationToken;
use support::{Client, MemoryStore, PASSWORD, USER};

async fn login(store: &Arc<MemoryStore>) -> Client {
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(imap::serve(
        server,
        support::shared(store),
        CancellationToken::new(),
    ));
    let mut client = Client::new(client);
    client.expect_line().await;
    let lines = client
        .imap("a0", &format!("LOGIN {USER} \"{PASSWORD}\""))
        .await;
    assert!(lines.last().unwrap().starts_with("a0 OK"), "{lines:?}");
    client
}

const MESSAGE: &[u8] = b"From: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n";

#[tokio::test]
async fn rev1_client_names_mailboxes_in_modified_utf7() {
    let store = MemoryStore::new();
    let mut c = login(&store).await;
    // C: CREATE "&AMk-t&AOk-" ("Été"), then "&AMk-t&AOk-/R&-D" ("Été/R&D")
    assert_eq!(
        c.imap("u0", "CREATE \"&AMk-t&AOk-\"").await,
        ["u0 OK CREATE completed"]
    );
    assert_eq!(
        c.imap("u1", "CREATE \"&AMk-t&AOk-/R&-D\"").await,
        ["u1 OK CREATE completed"]
    );
    // The mailstore holds the UTF-8 names.
    let names = store.names();
    assert!(names.contains(&"Été".to_owned()), "{names:?}");
    assert!(names.contains(&"Été/R&D".to_owned()), "{names:?}");

    // LIST answers in modified UTF-7; a pattern in modified UTF-7 matches.
    let lines = c.imap("u2", "LIST \"\" \"&AMk-t&AOk-*\"").await;
    assert_eq!(
        lines,
        [
            "* LIST (\\HasChildren) \"/\" \"&AMk-t&AOk-\"",
            "* LIST (\\HasNoChildren) \"/\" \"&AMk-t&AOk-/R&-D\"",
            "u2 OK LIST completed"
        ]
    );
    assert_eq!(
        c.imap("u3", "SUBSCRIBE \"&AMk-t&AOk-\"").await,
        ["u3 OK SUBSCRIBE completed"]
    );
    let lines = c.imap("u4", "LSUB \"\" \"&AMk-t*\"").await;
    assert!(
        lines.contains(&"* LSUB () \"/\" \"&AMk-t&AOk-\"".to_owned()),
        "{lines:?}"
    );

    // APPEND, STATUS, SELECT, COPY and MOVE name the mailbox the same way.
    c.send(&format!("u5 APPEND \"&AMk-t&AOk-\" {{{}+}}", MESSAGE.len()))
        .await;
    c.send_raw(MESSAGE).await;
    c.send_raw(b"\r\n").await;
    let lines = c.until_tagged("u5").await;
    assert!(lines[0].starts_with("u5 OK [APPENDUID "), "{lines:?}");
    assert_eq!(store.uids("Été"), [1]);
    assert_eq!(
        c.imap("u6", "STATUS \"&AMk-t&AOk-\" (MESSAGES)").await,
        [
            "* STATUS \"&AMk-t&AOk-\" (MESSAGES 1)",
            "u6 OK STATUS completed"
        ]
    );
    let lines = c.imap("u7", "SELECT \"&AMk-t&AOk-\"").await;
    assert!(lines.contains(&"* 1 EXISTS".to_owned()), "{lines:?}");
    assert!(lines.last().unwrap().starts_with("u7 OK"), "{lines:?}");
    let lines = c.imap("u8", "COPY 1 \"&AMk-t&AOk-/R&-D\"").await;
    assert!(lines[0].starts_with("u8 OK [COPYUID "), "{lines:?}");
    assert_eq!(store.uids("Été/R&D"), [1]);
    let lines = c
        .imap("u9", "MOVE 1 \"&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-\"")
        .await;
    assert_eq!(lines, ["u9 NO [TRYCREATE] no such mailbox"]);

    // RENAME and DELETE.
    assert_eq!(
        c.imap(
            "u10",
            "RENAME \"&AMk-t&AOk-/R&-D\" \"&AMk-t&AOk-/&ZeVnLIqe-\""
        )
        .await,
        ["u10 OK RENAME completed"]
    );
    assert!(store.names().contains(&"Été/日本語".to_owned()));
    assert_eq!(
        c.imap("u11", "DELETE \"&AMk-t&AOk-/&ZeVnLIqe-\"").await,
        ["u11 OK DELETE completed"]
    );
    assert!(!store.names().contains(&"Été/日本語".to_owned()));
}

#[tokio::test]
async fn malformed_modified_utf7_is_bad_and_the_session_goes_on() {
    let store = MemoryStore::new();
    let mut c = login(&store).await;
    let before = store.names();
    let bad = "BAD mailbox name is not valid modified UTF-7 (RFC 3501 section 5.1.3)";
    for (tag, command) in [
        ("b1", "CREATE \"&AMk\""),                     // unterminated
        ("b2", "CREATE \"&AEEAQgBD-\""),               // encoded ASCII
        ("b3", "SELECT \"&2D0-\""),                    // a lone surrogate
        ("b4", "LIST \"\" \"&AM/-*\""),                // `/` is not modified base64
        ("b5", "RENAME INBOX \"&AMk-&AOk-\""),         // two adjacent runs
        ("b6", "STATUS \"\u{e9}t\u{e9}\" (MESSAGES)"), // 8-bit without UTF8=ACCEPT
    ] {
        assert_eq!(c.imap(tag, command).await, [format!("{tag} {bad}")]);
    }
    assert_eq!(store.names(), before, "nothing was created or renamed");
    assert_eq!(c.imap("b7", "NOOP").await, ["b7 OK NOOP completed"]);
}

#[tokio::test]
async fn utf8_accept_and_imap4rev2_use_utf8_names() {
    let store = MemoryStore::new();
    let mut rev1 = login(&store).await;
    rev1.imap("p0", "CREATE \"&AMk-t&AOk-\"").await;

    let mut c = login(&store).await;
    let lines = c.imap("e1", "CAPABILITY").await;
    assert!(lines[0].contains(" UTF8=ACCEPT"), "{lines:?}");
    assert_eq!(
        c.imap("e2", "ENABLE UTF8=ACCEPT").await,
        ["* ENABLED UTF8=ACCEPT", "e2 OK ENABLE completed"]
    );
    // The same mailbox, now by its UTF-8 name; `&` is an ordinary character.
    let lines = c.imap("e3", "LIST \"\" \"Été\"").await;
    assert_eq!(
        lines,
        [
            "* LIST (\\HasNoChildren) \"/\" \"Été\"",
            "e3 OK LIST completed"
        ]
    );
    assert_eq!(
        c.imap("e4", "CREATE \"Été/R&D\"").await,
        ["e4 OK CREATE completed"]
    );
    assert!(store.names().contains(&"Été/R&D".to_owned()));

    // The rev1 session sees it in modified UTF-7.
    let lines = rev1.imap("p1", "LIST \"\" \"&AMk-t&AOk-/*\"").await;
    assert_eq!(
        lines,
        [
            "* LIST (\\HasNoChildren) \"/\" \"&AMk-t&AOk-/R&-D\"",
            "p1 OK LIST completed"
        ]
    );

    // IMAP4rev2 names are UTF-8 too (RFC 9051 §5.1).
    let mut rev2 = login(&store).await;
    rev2.imap("r1", "ENABLE IMAP4rev2").await;
    let lines = rev2.imap("r2", "STATUS \"Été/R&D\" (MESSAGES)").await;
    assert_eq!(
        lines,
        [
            "* STATUS \"Été/R&D\" (MESSAGES 0)",
            "r2 OK STATUS completed"
        ]
    );
}
