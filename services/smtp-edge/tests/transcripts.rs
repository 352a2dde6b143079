//! Session tests over an in-memory stream, written as dialog transcripts
//! in `tests/transcripts/*.txt` (chasquid's habit).
//!
//! Format, one directive per line:
//! - `# ...` comment; blank lines are ignored.
//! - `!key value` sets a session limit before the dialog starts:
//!   `max_recipients`, `max_message_size`, `max_line_length`, `max_errors`,
//!   `max_hops`,
//!   `rate_limit` (messages per IP per minute), `bare_lf` (`reject` or
//!   `normalize`), `mode` (`mx`, `submission`, `submissions`), `tls` (the
//!   session runs as if TLS had started, with this description),
//!   `client_ip`, `relay_networks` and `trusted_networks` (comma lists of
//!   CIDRs), `auth_failures` (AUTH failures per IP before refusal).
//! - `C: text` the client sends `text` CRLF; `C~ text` sends `text` with no
//!   CRLF added. Escapes: `\r`, `\n`, `\\`, and `{c*N}` for N times `c`
//!   (escapes inside `c` apply).
//!   Consecutive client lines go out in one write (pipelining).
//! - `S: text` the server's next reply line is exactly `text` (a trailing
//!   `...` matches any rest); `S: <closed>` the server closed.
//! - `A: text` the last accepted message is exactly `text` (escapes apply).
//! - `R: a,b` the last accepted message went to recipients a and b.
//! - `H: Name` the last accepted message has a header `Name`.
//! - `E: text` the last accepted envelope, in short: `from=<..> auth=..
//!   tls=.. ret=.. envid=..` then ` <address>:<account>:<notify>:<orcpt>`
//!   per recipient (`-` for what is absent).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mailfleet_runtime::CancellationToken;
use mailfleet_smtp_edge::session::{Session, serve};
use mailfleet_smtp_edge::{Envelope, Metrics, Mode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use common::TestAcceptor;

/// Expands `\r`, `\n`, `\\` and `{c*N}`.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => {
                out.push(match bytes[i + 1] {
                    b'r' => b'\r',
                    b'n' => b'\n',
                    other => other,
                });
                i += 2;
            }
            b'{' => {
                let end = text[i..].find('}').map(|e| i + e).expect("unclosed {");
                let (c, n) = text[i + 1..end].split_once('*').expect("{c*N}");
                let n: usize = n.parse().expect("repeat count");
                let c = unescape(c);
                for _ in 0..n {
                    out.extend_from_slice(&c);
                }
                i = end + 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The `E:` form of an envelope.
fn describe(envelope: &Envelope) -> String {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let mut out = format!(
        "from=<{}> auth={} tls={} ret={} envid={}",
        envelope.mail_from,
        or_dash(envelope.auth_account.as_deref()),
        or_dash(envelope.tls.as_deref()),
        or_dash(envelope.dsn_ret),
        or_dash(envelope.dsn_envid.as_deref()),
    );
    for r in &envelope.recipients {
        out.push_str(&format!(
            " {}:{}:{}:{}",
            r.address,
            if r.account.is_empty() {
                "-"
            } else {
                &r.account
            },
            or_dash(r.notify.as_deref()),
            or_dash(r.orcpt.as_deref()),
        ));
    }
    out
}

async fn run_transcript(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut config = common::config();
    let acceptor = Arc::new(TestAcceptor::default());
    let mut services = common::services(acceptor.clone());
    services.counters = None;
    let mut tls = None;
    let mut client_ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();

    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(setting) = line.strip_prefix('!') {
            let (key, value) = setting.split_once(' ').expect("!key value");
            let value = value.trim();
            let cidrs = || {
                value
                    .split(',')
                    .map(|c| c.trim().parse().expect("a CIDR"))
                    .collect()
            };
            match key {
                "mode" => {
                    config.mode = match value {
                        "mx" => Mode::Mx,
                        "submission" => Mode::Submission,
                        "submissions" => Mode::Submissions,
                        other => panic!("mode {other}"),
                    };
                    continue;
                }
                "tls" => {
                    tls = Some(value.to_owned());
                    continue;
                }
                "client_ip" => {
                    client_ip = value.parse().expect("an IP");
                    continue;
                }
                "relay_networks" => {
                    config.relay_networks = cidrs();
                    continue;
                }
                "trusted_networks" => {
                    config.trusted_networks = cidrs();
                    continue;
                }
                _ => {}
            }
            if key == "bare_lf" {
                config.bare_lf = match value.trim() {
                    "reject" => mailfleet_smtp_edge::data::BareLf::Reject,
                    "normalize" => mailfleet_smtp_edge::data::BareLf::Normalize,
                    other => panic!("bare_lf {other}"),
                };
                continue;
            }
            let value: u64 = value.trim().parse().expect("numeric setting");
            match key {
                "max_recipients" => config.max_recipients = value as usize,
                "max_message_size" => config.max_message_size = value,
                "max_line_length" => config.max_line_length = value as usize,
                "max_errors" => config.max_errors = value as u32,
                "max_hops" => config.max_hops = value as usize,
                "auth_failures" => config.auth_failures_per_ip = value,
                "rate_limit" => {
                    config.messages_per_ip_per_minute = value;
                    services.counters = Some(Arc::new(common::TestCounters::default()));
                }
                other => panic!("{name}:{n}: unknown setting {other}"),
            }
            continue;
        }
        let (kind, rest) = line.split_at(2);
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        steps.push((n, kind.to_owned(), rest.to_owned()));
    }

    let (client, server) = tokio::io::duplex(1 << 20);
    let mut session = Session::new(
        Arc::new(config),
        services,
        Metrics::default(),
        "test".into(),
        client_ip,
    );
    if let Some(description) = tls {
        session.tls_started(description);
    }
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(server, session, shutdown));
    let (read, mut write) = tokio::io::split(client);
    let mut read = BufReader::new(read);

    let mut pending = Vec::new();
    for (n, kind, rest) in steps {
        let here = format!("{name}:{n}");
        if kind != "C:" && kind != "C~" && !pending.is_empty() {
            write
                .write_all(&pending)
                .await
                .unwrap_or_else(|e| panic!("{here}: cannot send: {e}"));
            pending.clear();
        }
        match kind.as_str() {
            "C:" => {
                pending.extend(unescape(&rest));
                pending.extend_from_slice(b"\r\n");
            }
            "C~" => pending.extend(unescape(&rest)),
            "S:" => {
                let mut got = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), read.read_until(b'\n', &mut got))
                    .await
                    .unwrap_or_else(|_| panic!("{here}: no reply, expected {rest:?}"))
                    .unwrap();
                let got = String::from_utf8(got).unwrap();
                if rest == "<closed>" {
                    assert_eq!(got, "", "{here}: expected the server to close");
                    continue;
                }
                let line = got
                    .strip_suffix("\r\n")
                    .unwrap_or_else(|| panic!("{here}: reply {got:?} not CRLF-terminated"));
                match rest.strip_suffix("...") {
                    Some(prefix) => assert!(line.starts_with(prefix), "{here}: got {line:?}"),
                    None => assert_eq!(line, rest, "{here}"),
                }
            }
            "A:" => {
                let accepted = acceptor.accepted.lock().unwrap();
                let (_, message) = accepted.last().expect("a message was accepted");
                assert_eq!(
                    String::from_utf8_lossy(message),
                    String::from_utf8_lossy(&unescape(&rest)),
                    "{here}"
                );
            }
            "R:" => {
                let accepted = acceptor.accepted.lock().unwrap();
                let (envelope, _) = accepted.last().expect("a message was accepted");
                let got: Vec<&str> = envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect();
                assert_eq!(got.join(","), rest, "{here}");
            }
            "H:" => {
                let accepted = acceptor.accepted.lock().unwrap();
                let (_, message) = accepted.last().expect("a message was accepted");
                assert!(
                    mailfleet_smtp_edge::accept::header_value(message, &rest).is_some(),
                    "{here}: no {rest} in {}",
                    String::from_utf8_lossy(message)
                );
            }
            "E:" => {
                let accepted = acceptor.accepted.lock().unwrap();
                let (envelope, _) = accepted.last().expect("a message was accepted");
                assert_eq!(describe(envelope), rest, "{here}");
            }
            other => panic!("{here}: unknown directive {other:?}"),
        }
    }
    if !pending.is_empty() {
        write.write_all(&pending).await.unwrap();
    }
    drop(write);
    drop(read);
    // Whatever the dialog, the session ends and never panics.
    let _ = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap_or_else(|_| panic!("{name}: session did not end"))
        .expect("session task panicked");
}

#[tokio::test]
async fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "transcripts missing in {}",
        dir.display()
    );
    for file in files {
        run_transcript(&file).await;
    }
}
