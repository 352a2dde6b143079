//! Runs short `smtp` and `e2e` scenarios of the real load generator binary
//! against a real `mailfleet serve` on free loopback ports, and checks what
//! the JSON output says. The mailfleet binary is `MAILFLEET_BIN`, else
//! `target/debug/mailfleet`, built with `cargo build -p mailfleet` when
//! missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LISTEN_KEYS: [&str; 10] = [
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "admin",
    "filter_grpc",
    "mailstore_grpc",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ is inside the workspace")
        .to_path_buf()
}

fn mailfleet_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MAILFLEET_BIN") {
        return bin.into();
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("mailfleet");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "mailfleet"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p mailfleet");
        assert!(status.success(), "cargo build -p mailfleet failed");
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

struct Server {
    child: Child,
    bin: PathBuf,
    data: PathBuf,
    ports: std::collections::HashMap<&'static str, u16>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a single node with extra configuration (`MAILFLEET__...`).
    fn start_with(extra: &[(&str, String)]) -> Server {
        let bin = mailfleet_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let ports: std::collections::HashMap<_, _> =
            LISTEN_KEYS.iter().map(|&k| (k, free_port())).collect();
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--target", "all", "--data-dir"])
            .arg(&data)
            .env_remove("MAILFLEET_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mailfleet.log")).expect("log file"));
        for (k, p) in &ports {
            cmd.env(
                format!("MAILFLEET__LISTEN__{}", k.to_uppercase()),
                format!("127.0.0.1:{p}"),
            );
        }
        cmd.env(
            "MAILFLEET__SERVICES__FILTER_URL",
            format!("http://127.0.0.1:{}", ports["filter_grpc"]),
        )
        .env(
            "MAILFLEET__SERVICES__MAILSTORE_URL",
            format!("http://127.0.0.1:{}", ports["mailstore_grpc"]),
        );
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start mailfleet serve");
        let mut server = Server {
            child,
            bin,
            data,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(server.ports["admin"], "/readyz") != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("mailfleet serve exited with {status} before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "mailfleet serve not ready in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn cli(&self, args: &[&str]) {
        let out = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--admin-url",
                &format!("http://127.0.0.1:{}", self.ports["admin"]),
            ])
            .args(args)
            .env_remove("MAILFLEET_ADMIN_TOKEN")
            .output()
            .expect("run mailfleet cli");
        assert!(
            out.status.success(),
            "mailfleet {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn addr(&self, key: &str) -> String {
        format!("127.0.0.1:{}", self.ports[key])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loadtest(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mailfleet-loadtest"))
        .args(args)
        .args(["--json", "--quiet", "--timeout", "20"])
        .output()
        .expect("run mailfleet-loadtest");
    assert!(
        out.status.success(),
        "mailfleet-loadtest {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn smtp_and_e2e_scenarios_against_a_single_node() {
    let server = Server::start();
    server.cli(&["domain", "add", "example.test"]);
    for user in ["alice@example.test", "bob@example.test"] {
        server.cli(&["user", "add", user, "--password", "secret"]);
    }
    let smtp = server.addr("smtp");
    let to = "alice@example.test,bob@example.test";

    let r = loadtest(&[
        "smtp",
        "-t",
        &smtp,
        "--to",
        to,
        "-c",
        "4",
        "-n",
        "40",
        "-s",
        "2k:3,20k:1",
        "--pipelining",
    ]);
    assert_eq!(r["scenario"], "smtp");
    assert_eq!(r["accepted"], 40, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["latency"]["count"], 40, "{r}");
    assert!(r["messages_per_s"].as_f64().unwrap() > 0.0, "{r}");

    // STARTTLS with the node's self-signed certificate, a new session
    // every 2 messages.
    let r = loadtest(&[
        "smtp",
        "-t",
        &smtp,
        "--to",
        to,
        "-c",
        "2",
        "-n",
        "6",
        "--starttls",
        "--per-connection",
        "2",
    ]);
    assert_eq!(r["accepted"], 6, "{r}");
    // 6 messages over 2 sessions, reconnecting every 2: 3 or 4 set-ups.
    let setups = r["session_setup"]["count"].as_u64().unwrap();
    assert!((3..=4).contains(&setups), "{r}");

    // A refused recipient is counted by its reply code, not fatal.
    let r = loadtest(&[
        "smtp",
        "-t",
        &smtp,
        "--to",
        "nobody@example.test",
        "-c",
        "1",
        "-n",
        "3",
    ]);
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["errors"]["550"], 3, "{r}");

    // Open model: 20 messages due at 40/s, then read back over IMAP.
    let r = loadtest(&[
        "e2e",
        "-t",
        &smtp,
        "--imap",
        &server.addr("imap"),
        "--password",
        "secret",
        "--to",
        to,
        "-c",
        "4",
        "-n",
        "20",
        "--rate",
        "40",
        "--wait",
        "20",
    ]);
    assert_eq!(r["scenario"], "e2e");
    assert_eq!(r["accepted"], 20, "{r}");
    let d = &r["delivery"];
    assert_eq!(d["delivered"], 20, "{r}");
    assert_eq!(d["missing"], 0, "{r}");
    assert!(
        d["delivery_latency"]["p50_ms"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(d["end_to_end_per_s"].as_f64().unwrap() > 0.0, "{r}");
}

/// Relay through a single node to the load generator's sink: every
/// accepted message reaches the sink once, over at most the node's 4
/// delivery workers, and a slow sink shows in the queue-to-sink latency.
#[test]
fn outbound_scenario_relays_through_a_single_node_to_the_sink() {
    let sink = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&[
        (
            "MAILFLEET__SMTP__RELAY_NETWORKS",
            r#"["127.0.0.0/8"]"#.into(),
        ),
        ("MAILFLEET__DELIVERY__RELAY_HOST", sink.clone()),
    ]);
    server.cli(&["domain", "add", "example.test"]);
    let r = loadtest(&[
        "outbound",
        "-t",
        &server.addr("smtp"),
        "--to",
        "a@remote.test,b@remote.test",
        "-c",
        "4",
        "-n",
        "24",
        "--pipelining",
        "--sink",
        &sink,
        "--sink-delay-ms",
        "50",
        "--wait",
        "60",
    ]);
    assert_eq!(r["scenario"], "outbound");
    assert_eq!(r["accepted"], 24, "{r}");
    assert_eq!(r["delivery"]["delivered"], 24, "{r}");
    assert_eq!(r["delivery"]["missing"], 0, "{r}");
    assert_eq!(r["sink"]["messages"], 24, "{r}");
    assert_eq!(r["sink"]["duplicates"], 0, "{r}");
    let peak = r["sink"]["peak_connections"].as_u64().unwrap();
    assert!((1..=4).contains(&peak), "delivery.workers is 4: {r}");
    // MAIL/RCPT/DATA (pipelined) and the final dot: two round trips of
    // 50 ms at least between queued and accepted by the sink.
    let p50 = r["delivery"]["delivery_latency"]["p50_ms"]
        .as_f64()
        .unwrap();
    assert!(p50 >= 100.0, "{r}");
    assert!(r["sink"]["per_s"].as_f64().unwrap() > 0.0, "{r}");
}
