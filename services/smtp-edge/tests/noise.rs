//! Never a panic on input, at the session level: deterministic random
//! dialogs built from real commands (EHLO, MAIL/RCPT with parameters,
//! DATA and BDAT with bodies, AUTH exchanges, STARTTLS) mixed with junk,
//! run through whole sessions in every mode. Each must end cleanly, with
//! every reply CRLF-terminated and well formed. (The command parser alone
//! is fuzzed by `fuzz/`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::CancellationToken;
use mailfleet_smtp_edge::session::{Session, serve};
use mailfleet_smtp_edge::{Metrics, Mode, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "EHLO c.example\r\n",
    "HELO c.example\r\n",
    "MAIL FROM:<a@c.example>\r\n",
    "MAIL FROM:<alice@example.org> SIZE=10 BODY=8BITMIME RET=FULL ENVID=x+2B\r\n",
    "MAIL FROM:<j\u{f6}s\u{e9}@c.example> SMTPUTF8\r\n",
    "MAIL FROM:<>\r\n",
    "RCPT TO:<alice@example.org>\r\n",
    "RCPT TO:<team@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y\r\n",
    "RCPT TO:<victim%elsewhere.example@example.org>\r\n",
    "RCPT TO:<someone@elsewhere.example>\r\n",
    "RCPT TO:<down@example.org>\r\n",
    "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
    "DATA\r\na\n.\nb\r\n.\r\n",
    "BDAT 5\r\nhello",
    "BDAT 3 LAST\r\nend",
    "BDAT 0 LAST\r\n",
    "BDAT 99999999999999999999\r\n",
    "AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==\r\n",
    "AUTH PLAIN\r\n",
    "AUTH LOGIN\r\nYWxpY2VAZXhhbXBsZS5vcmc=\r\nc2VjcmV0\r\n",
    "AUTH LOGIN\r\n*\r\n",
    "AUTH XOAUTH2 abc\r\n",
    "STARTTLS\r\n",
    "RSET\r\n",
    "NOOP\r\n",
    "HELP\r\n",
    "VRFY x\r\n",
    "\r\n",
    "\n",
    "\0\u{ff}\u{1}\r\n",
    ".\r\n",
];

async fn run_dialog(mode: Mode, tls: bool, dialog: Vec<u8>) {
    let config = SessionConfig {
        mode,
        max_errors: 1000,
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
        // Blocked after 3 failures, so no failure is ever slowed down.
        auth_failures_per_ip: 3,
        ..common::config()
    };
    let mut session = Session::new(
        Arc::new(config),
        common::services(Default::default()),
        Metrics::default(),
        "noise".into(),
        "192.0.2.1".parse().unwrap(),
    );
    if tls {
        session.tls_started("TLSv1.3 TEST".into());
    }
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(serve(server, session, CancellationToken::new()));
    let writer = async {
        let _ = client.write_all(&dialog).await;
        let _ = client.write_all(b"QUIT\r\n").await;
        // EOF: a session still inside DATA, BDAT or AUTH ends at once.
        let _ = client.shutdown().await;
        let mut replies = Vec::new();
        let _ = client.read_to_end(&mut replies).await;
        replies
    };
    let replies = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the session answers and ends");
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the session ends");
    assert!(result.is_ok(), "session panicked on {dialog:?}");
    let text = String::from_utf8(replies).expect("replies are UTF-8");
    for line in text.split_inclusive('\n') {
        assert!(line.ends_with("\r\n"), "{line:?} in {text}");
        let code = line.get(..3).unwrap_or_default();
        assert!(
            code.bytes().all(|b| b.is_ascii_digit()),
            "{line:?} in {text}"
        );
    }
}

#[tokio::test]
async fn random_dialogs_never_panic_and_always_end() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..600 {
        let mut dialog = Vec::new();
        for _ in 0..(rng.next() % 14) {
            let piece = rng.pick(PIECES).as_bytes();
            if rng.next().is_multiple_of(8) {
                // Cut a piece short, or mangle one byte.
                let cut = (rng.next() as usize) % (piece.len() + 1);
                dialog.extend_from_slice(&piece[..cut]);
            } else if rng.next().is_multiple_of(8) && !piece.is_empty() {
                let mut piece = piece.to_vec();
                let i = (rng.next() as usize) % piece.len();
                piece[i] = rng.next() as u8;
                dialog.extend_from_slice(&piece);
            } else {
                dialog.extend_from_slice(piece);
            }
        }
        let mode = [Mode::Mx, Mode::Submission, Mode::Submissions][round % 3];
        run_dialog(mode, round % 2 == 0, dialog).await;
    }
}
