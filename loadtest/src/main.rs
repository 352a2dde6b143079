//! `mailfleet-loadtest`: a load generator for Mailfleet and the servers it is
//! compared with (Postfix + Dovecot). Scenarios `smtp`, `e2e`, `outbound`,
//! `imap` and `idle`; a human summary or `--json`, a progress line on stderr, and
//! loopback targets only unless `--allow-remote`.

mod imap;
mod message;
mod net;
mod rss;
mod scenario;
mod sink;
mod smtp;
mod stats;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio::time::Instant;

use crate::message::SizeMix;
use crate::stats::{latency_line, rate};

#[derive(Parser)]
#[command(name = "mailfleet-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print one JSON object instead of the human summary.
    #[arg(long, global = true)]
    json: bool,
    /// Allow targets that are not loopback addresses.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Seconds to wait for any one reply.
    #[arg(long, global = true, default_value_t = 60)]
    timeout: u64,
    /// No progress line on stderr.
    #[arg(long, global = true)]
    quiet: bool,
    /// A label copied into the JSON output (e.g. "mailfleet" or "postfix").
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Scenario {
    /// N sessions sending M messages over SMTP.
    Smtp(SmtpArgs),
    /// Like smtp, then wait until every accepted message is readable over IMAP.
    E2e {
        #[command(flatten)]
        smtp: SmtpArgs,
        /// IMAP server (host:port) to watch the recipients' INBOXes on.
        #[arg(long, default_value = "127.0.0.1:1143")]
        imap: String,
        /// Password of every recipient (IMAP login = recipient address).
        #[arg(long)]
        password: String,
        /// Seconds to wait for delivery after the last message was sent.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Watch the mailboxes with NOOP every --poll-ms instead of IDLE.
        #[arg(long)]
        noop: bool,
        /// Milliseconds between two NOOPs (with --noop). In IDLE the
        /// watchers also SELECT once a second.
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
    },
    /// Like smtp, to recipients the server relays elsewhere, and a sink on
    /// --sink that receives what it relays: throughput at the sink and
    /// queue-to-sink latency.
    Outbound {
        #[command(flatten)]
        smtp: SmtpArgs,
        /// Address the sink listens on: the relay host (or MX) the server
        /// under test delivers to.
        #[arg(long)]
        sink: String,
        /// Milliseconds the sink waits before each response (once per round
        /// trip: pipelined commands are answered together).
        #[arg(long, default_value_t = 0)]
        sink_delay_ms: u64,
        /// Seconds to wait for delivery after the last message was sent.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// N sessions running a mix of IMAP operations for a duration.
    Imap {
        #[arg(long, default_value = "127.0.0.1:1143")]
        imap: String,
        #[arg(long, short = 'c', default_value_t = 10)]
        sessions: usize,
        /// Users, comma-separated; session i logs in as user i % count.
        #[arg(long, value_delimiter = ',', required = true)]
        user: Vec<String>,
        #[arg(long)]
        password: String,
        /// Operations and weights: fetch-headers, fetch-body, search, store,
        /// idle, select, noop.
        #[arg(
            long,
            default_value = "fetch-headers:30,fetch-body:20,search:10,store:15,select:10,idle:5,noop:10"
        )]
        mix: imap::Mix,
        /// Seconds to run.
        #[arg(long, short = 'd', default_value_t = 20)]
        duration: u64,
    },
    /// K concurrent IDLE sessions held, and the server memory they cost.
    Idle {
        #[arg(long, default_value = "127.0.0.1:1143")]
        imap: String,
        #[arg(long, short = 'k', default_value_t = 1000)]
        connections: usize,
        #[arg(long, value_delimiter = ',', required = true)]
        user: Vec<String>,
        #[arg(long)]
        password: String,
        /// Sessions being set up at once.
        #[arg(long, default_value_t = 32)]
        connect_concurrency: usize,
        /// Seconds to hold every session idle before measuring again.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Server PIDs whose memory is measured (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// Also count every descendant of those PIDs (process-per-connection
        /// servers such as Dovecot).
        #[arg(long)]
        children: bool,
    },
}

#[derive(Args, Clone)]
struct SmtpArgs {
    /// SMTP server, host:port.
    #[arg(long, short = 't', default_value = "127.0.0.1:2525")]
    target: String,
    /// Concurrent sessions.
    #[arg(long, short = 'c', default_value_t = 10)]
    sessions: usize,
    /// Messages in all.
    #[arg(long, short = 'n', default_value_t = 1000)]
    messages: u64,
    /// Message size or weighted mix: 4k, 100k, 4k:70,100k:30.
    #[arg(long, short = 's', default_value = "4k")]
    size: SizeMix,
    #[arg(long, default_value = "loadtest@sender.test")]
    from: String,
    /// Recipients, comma-separated; messages go round robin.
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Recipients per message (taken round robin from --to).
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    #[arg(long)]
    starttls: bool,
    /// Pipeline the envelope when the server offers PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// Messages per second for the whole run (open model: latency counts
    /// from each message's scheduled time). Without it: as fast as possible.
    #[arg(long)]
    rate: Option<f64>,
    /// Messages per connection before reconnecting (0: no limit).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    #[arg(long, default_value = "loadtest.invalid")]
    helo: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailfleet-loadtest: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailfleet-loadtest: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A progress line on stderr every second until dropped: `\r`-rewritten on
/// a terminal, one line every 5 s otherwise (logs stay readable).
struct ProgressLine(tokio::task::JoinHandle<()>);

impl ProgressLine {
    fn start(
        quiet: bool,
        what: &'static str,
        done: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
        total: Option<u64>,
    ) -> Self {
        let tty = std::io::stderr().is_terminal();
        ProgressLine(tokio::spawn(async move {
            if quiet {
                return;
            }
            let t0 = Instant::now();
            let mut last = 0;
            let mut ticks = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                ticks += 1;
                let d = done.load(Ordering::Relaxed);
                let f = failed.load(Ordering::Relaxed);
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                let line = format!(
                    "[{:>4}s] {d}{of} {what}, {f} errors, {}/s now",
                    t0.elapsed().as_secs(),
                    d - last
                );
                last = d;
                if tty {
                    eprint!("\r{line}   ");
                } else if ticks.is_multiple_of(5) {
                    eprintln!("{line}");
                }
            }
        }))
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.0.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
}

fn run_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:04x}", now.as_millis(), std::process::id() & 0xffff)
}

async fn resolve(target: &str, allow_remote: bool) -> anyhow::Result<SocketAddr> {
    net::resolve(target, allow_remote)
        .await
        .map_err(anyhow::Error::msg)
}

async fn smtp_plan(cli: &Cli, a: &SmtpArgs) -> anyhow::Result<smtp::Plan> {
    if a.to.is_empty() {
        bail!("--to needs at least one recipient");
    }
    if a.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        bail!("--rate must be a positive number");
    }
    Ok(smtp::Plan {
        addr: resolve(&a.target, cli.allow_remote).await?,
        session: smtp::SessionOptions {
            helo: a.helo.clone(),
            starttls: a.starttls,
            pipelining: a.pipelining,
            timeout: Duration::from_secs(cli.timeout),
        },
        sessions: a.sessions,
        messages: a.messages,
        sizes: a.size.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        rcpts_per_message: a.rcpts,
        rate: a.rate,
        per_connection: a.per_connection,
        run_id: run_id(),
    })
}

/// Runs the sending half; returns its JSON and the accepted messages.
async fn send(
    cli: &Cli,
    a: &SmtpArgs,
    plan: smtp::Plan,
    t0: Instant,
) -> (serde_json::Value, smtp::Outcome) {
    let progress = Arc::new(smtp::Progress::default());
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // The progress line reads the sender's counters through two mirrors
    // updated below; simpler than sharing the Progress struct's layout.
    let mirror = {
        let (p, d, f) = (progress.clone(), done.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                d.store(p.done.load(Ordering::Relaxed), Ordering::Relaxed);
                f.store(p.failed.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let line = ProgressLine::start(cli.quiet, "messages", done, failed, Some(plan.messages));
    let plan = Arc::new(plan);
    let out = smtp::run(plan.clone(), progress, t0).await;
    drop(line);
    mirror.abort();
    let elapsed = t0.elapsed();
    let ok = out.latency.count();
    let report = json!({
        "target": a.target,
        "sessions": a.sessions,
        "messages": a.messages,
        "size": a.size.to_string(),
        "mean_size_bytes": a.size.mean(),
        "starttls": a.starttls,
        "pipelining": a.pipelining,
        "rate": a.rate,
        "run_id": plan.run_id,
        "elapsed_s": elapsed.as_secs_f64(),
        "accepted": ok,
        "failed": out.errors.total(),
        "messages_per_s": rate(ok, elapsed),
        "megabytes_per_s": rate(out.bytes, elapsed) / 1e6,
        "latency": out.latency.summary(),
        "session_setup": out.connect.summary(),
        "errors": out.errors,
    });
    (report, out)
}

fn print_smtp(r: &serde_json::Value) {
    println!(
        "smtp {}: {} sessions, {} of {} messages accepted in {:.2} s{}",
        r["target"].as_str().unwrap_or(""),
        r["sessions"],
        r["accepted"],
        r["messages"],
        r["elapsed_s"].as_f64().unwrap_or(0.0),
        r["rate"]
            .as_f64()
            .map(|x| format!(" (open model, {x}/s scheduled)"))
            .unwrap_or_default()
    );
    println!(
        "  throughput  {:.1} msg/s, {:.2} MB/s",
        r["messages_per_s"].as_f64().unwrap_or(0.0),
        r["megabytes_per_s"].as_f64().unwrap_or(0.0)
    );
    if let Ok(l) = serde_json::from_value::<LatencyView>(r["latency"].clone()) {
        println!("  latency     {}", l.line());
    }
    if let Ok(l) = serde_json::from_value::<LatencyView>(r["session_setup"].clone()) {
        println!("  session set-up {}", l.line());
    }
    println!("  errors      {}", describe_errors(&r["errors"]));
}

#[derive(serde::Deserialize)]
struct LatencyView {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl LatencyView {
    fn line(&self) -> String {
        latency_line(&stats::LatencySummary {
            count: self.count,
            p50_ms: self.p50_ms,
            p90_ms: self.p90_ms,
            p99_ms: self.p99_ms,
            max_ms: self.max_ms,
            ..Default::default()
        })
    }
}

fn describe_errors(v: &serde_json::Value) -> String {
    serde_json::from_value::<stats::Errors>(v.clone())
        .map(|e| e.describe())
        .unwrap_or_default()
}

fn output(
    cli: &Cli,
    scenario: &str,
    mut report: serde_json::Value,
    human: impl FnOnce(&serde_json::Value),
) {
    if cli.json {
        report["scenario"] = json!(scenario);
        report["label"] = json!(cli.label);
        println!("{report}");
    } else {
        human(&report);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(cli.timeout);
    match &cli.scenario {
        Scenario::Smtp(a) => {
            let plan = smtp_plan(&cli, a).await?;
            let (report, _) = send(&cli, a, plan, Instant::now()).await;
            output(&cli, "smtp", report, print_smtp);
        }
        Scenario::E2e {
            smtp: a,
            imap,
            password,
            wait,
            noop,
            poll_ms,
        } => {
            let plan = smtp_plan(&cli, a).await?;
            let imap_addr = resolve(imap, cli.allow_remote).await?;
            let arrivals: scenario::Arrivals = Default::default();
            let stop = Arc::new(AtomicBool::new(false));
            let ready = Arc::new(AtomicU64::new(0));
            let mut watchers = Vec::new();
            let mut users = a.to.clone();
            users.sort();
            users.dedup();
            for user in users {
                watchers.push(tokio::spawn(scenario::watch(
                    imap_addr,
                    user,
                    password.clone(),
                    plan.run_id.clone(),
                    if *noop {
                        Duration::from_millis(*poll_ms)
                    } else {
                        Duration::from_secs(1)
                    },
                    !*noop,
                    timeout,
                    arrivals.clone(),
                    ready.clone(),
                    stop.clone(),
                )));
            }
            // Sending starts once every watcher has selected its mailbox:
            // what arrives before would be taken for old mail.
            while ready.load(Ordering::Relaxed) < watchers.len() as u64 {
                if let Some(w) = watchers.iter_mut().find(|w| w.is_finished()) {
                    let e = match w.await {
                        Ok(Err(e)) => e.to_string(),
                        _ => "ended early".into(),
                    };
                    bail!("imap watcher on {imap}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t0 = Instant::now();
            let (mut report, out) = send(&cli, a, plan, t0).await;
            let deadline = Instant::now() + Duration::from_secs(*wait);
            let expected = out.accepted.len();
            let waiting = Arc::new(AtomicU64::new(0));
            let line = ProgressLine::start(
                cli.quiet,
                "delivered",
                waiting.clone(),
                Arc::new(AtomicU64::new(0)),
                Some(expected as u64),
            );
            loop {
                let seen = {
                    let map = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                    out.accepted
                        .iter()
                        .filter(|x| map.contains_key(&x.index))
                        .count()
                };
                waiting.store(seen as u64, Ordering::Relaxed);
                if seen >= expected
                    || Instant::now() >= deadline
                    || watchers.iter().all(|w| w.is_finished())
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(line);
            stop.store(true, Ordering::Relaxed);
            let mut watch_errors = stats::Errors::default();
            let mut watch = scenario::WatchStats::default();
            for w in watchers {
                match tokio::time::timeout(timeout, w).await {
                    Ok(Ok(Ok(w))) => {
                        watch.noop_misses += w.noop_misses;
                        watch.reordered += w.reordered;
                    }
                    Ok(Ok(Err(e))) => watch_errors.add(&format!("imap-{}", e.kind())),
                    _ => watch_errors.add("imap-watcher"),
                }
            }
            let map = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let d = scenario::delivery(&out.accepted, &map, t0);
            report["delivery"] = serde_json::to_value(&d)?;
            report["watch_errors"] = serde_json::to_value(&watch_errors)?;
            report["watch"] = serde_json::to_value(watch)?;
            output(&cli, "e2e", report, |r| {
                print_smtp(r);
                println!(
                    "  delivered   {} of {} accepted ({} missing) in {:.2} s: {:.1} msg/s end to end",
                    d.delivered, expected, d.missing, d.elapsed_s, d.end_to_end_per_s
                );
                println!("  accept→visible {}", latency_line(&d.delivery_latency));
                println!("  send→visible   {}", latency_line(&d.end_to_end_latency));
                if watch.noop_misses > 0 {
                    println!(
                        "  note        {} times a periodic SELECT found messages that NOOP had not reported",
                        watch.noop_misses
                    );
                }
                if watch.reordered > 0 {
                    println!(
                        "  note        {} messages appeared with a UID below one already visible",
                        watch.reordered
                    );
                }
                if watch_errors.total() > 0 {
                    println!("  watcher errors {}", watch_errors.describe());
                }
            });
            if d.delivered == 0 && expected > 0 {
                bail!("no accepted message became visible over IMAP within {wait} s");
            }
        }
        Scenario::Outbound {
            smtp: a,
            sink: sink_at,
            sink_delay_ms,
            wait,
        } => {
            let plan = smtp_plan(&cli, a).await?;
            let sink_addr = resolve(sink_at, cli.allow_remote).await?;
            let arrivals = sink::arrivals();
            let sink = sink::Sink::start(
                sink_addr,
                Duration::from_millis(*sink_delay_ms),
                plan.run_id.clone(),
                arrivals.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("sink on {sink_addr}: {e}"))?;
            let t0 = Instant::now();
            let (mut report, out) = send(&cli, a, plan, t0).await;
            let expected: Vec<u64> = out.accepted.iter().map(|x| x.index).collect();
            let counted = Arc::new(AtomicU64::new(0));
            let line = ProgressLine::start(
                cli.quiet,
                "at the sink",
                counted.clone(),
                Arc::new(AtomicU64::new(0)),
                Some(expected.len() as u64),
            );
            let deadline = Instant::now() + Duration::from_secs(*wait);
            let mirror = {
                let (arrivals, counted, expected) =
                    (arrivals.clone(), counted.clone(), expected.clone());
                tokio::spawn(async move {
                    loop {
                        let n = sink::wait_for(&arrivals, &expected, Instant::now()).await;
                        counted.store(n as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            };
            sink::wait_for(&arrivals, &expected, deadline).await;
            mirror.abort();
            drop(line);
            let stats = sink.stats();
            let listened = sink.addr;
            drop(sink);
            let map = arrivals.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let d = scenario::delivery(&out.accepted, &map, t0);
            let first = out
                .accepted
                .iter()
                .filter_map(|x| map.get(&x.index))
                .min()
                .copied();
            // Delivered per second at the sink, first to last arrival: the
            // relay rate itself, whatever the submission rate was.
            let sink_per_s = match first {
                Some(first) if d.delivered > 1 => rate(
                    d.delivered - 1,
                    (t0 + Duration::from_secs_f64(d.elapsed_s)) - first,
                ),
                _ => 0.0,
            };
            report["delivery"] = serde_json::to_value(&d)?;
            report["sink"] = serde_json::to_value(&stats)?;
            report["sink"]["addr"] = json!(listened.to_string());
            report["sink"]["delay_ms"] = json!(sink_delay_ms);
            report["sink"]["per_s"] = json!(sink_per_s);
            output(&cli, "outbound", report, |r| {
                print_smtp(r);
                println!(
                    "  at the sink {} of {} accepted ({} missing) in {:.2} s: {:.1} msg/s from first send, \
                     {sink_per_s:.1} msg/s first to last arrival",
                    d.delivered,
                    expected.len(),
                    d.missing,
                    d.elapsed_s,
                    d.end_to_end_per_s
                );
                println!("  accept→sink {}", latency_line(&d.delivery_latency));
                println!(
                    "  sink        {} connections (at most {} at once), {} messages, {} from other runs, \
                     {} duplicates, {} broken sessions",
                    stats.connections,
                    stats.peak_connections,
                    stats.messages,
                    stats.foreign,
                    stats.duplicates,
                    stats.broken_sessions
                );
            });
            if d.delivered == 0 && !expected.is_empty() {
                bail!("no accepted message reached the sink within {wait} s");
            }
        }
        Scenario::Imap {
            imap,
            sessions,
            user,
            password,
            mix,
            duration,
        } => {
            let plan = Arc::new(scenario::ImapPlan {
                addr: resolve(imap, cli.allow_remote).await?,
                sessions: *sessions,
                users: user.clone(),
                password: password.clone(),
                mix: mix.clone(),
                duration: Duration::from_secs(*duration),
                timeout,
            });
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let line =
                ProgressLine::start(cli.quiet, "operations", done.clone(), failed.clone(), None);
            let r = scenario::imap(plan, done, failed).await;
            drop(line);
            let mut report = serde_json::to_value(&r)?;
            report["target"] = json!(imap);
            report["mix"] = json!(
                mix.0
                    .iter()
                    .map(|(op, w)| format!("{}:{w}", op.name()))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            output(&cli, "imap", report, |_| {
                println!(
                    "imap {imap}: {} sessions, {} operations in {:.2} s",
                    r.sessions, r.ops, r.elapsed_s
                );
                println!("  throughput  {:.1} ops/s", r.ops_per_s);
                println!("  login+select {}", latency_line(&r.login));
                println!("  all ops     {}", latency_line(&r.latency));
                for (op, l) in &r.by_op {
                    println!("  {op:<13} {}", latency_line(l));
                }
                println!("  errors      {}", r.errors.describe());
            });
        }
        Scenario::Idle {
            imap,
            connections,
            user,
            password,
            connect_concurrency,
            hold,
            pid,
            children,
        } => {
            let plan = Arc::new(scenario::IdlePlan {
                addr: resolve(imap, cli.allow_remote).await?,
                connections: *connections,
                users: user.clone(),
                password: password.clone(),
                connect_concurrency: *connect_concurrency,
                hold: Duration::from_secs(*hold),
                timeout,
                pids: pid.clone(),
                children: *children,
            });
            let est = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let line = ProgressLine::start(
                cli.quiet,
                "sessions idling",
                est.clone(),
                failed.clone(),
                Some(*connections as u64),
            );
            let r = scenario::idle(plan, est, failed).await;
            drop(line);
            let mut report = serde_json::to_value(&r)?;
            report["target"] = json!(imap);
            output(&cli, "idle", report, |_| {
                println!(
                    "idle {imap}: {} of {} sessions idling after {:.2} s set-up, {} still alive after the hold",
                    r.established, r.requested, r.setup_s, r.alive_after_hold
                );
                if !pid.is_empty() {
                    println!(
                        "  server memory {} → {} kB RSS, {} → {} kB PSS ({} processes)",
                        r.memory_before.rss_kb,
                        r.memory_held.rss_kb,
                        r.memory_before.pss_kb,
                        r.memory_held.pss_kb,
                        r.memory_held.processes
                    );
                    println!(
                        "  per connection {:.1} kB RSS, {:.1} kB PSS",
                        r.rss_per_connection_kb, r.pss_per_connection_kb
                    );
                    println!(
                        "  after close   {} kB RSS, {} kB PSS ({} processes)",
                        r.memory_after_close.rss_kb,
                        r.memory_after_close.pss_kb,
                        r.memory_after_close.processes
                    );
                }
                println!("  errors      {}", r.errors.describe());
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "x",
            "smtp",
            "--to",
            "a@b,c@d",
            "-c",
            "20",
            "-s",
            "4k:70,100k:30",
            "--rate",
            "50",
            "--json",
        ])
        .unwrap();
        let Scenario::Smtp(a) = cli.scenario else {
            panic!()
        };
        assert_eq!(a.to, ["a@b", "c@d"]);
        assert_eq!(a.rate, Some(50.0));
        assert!(cli.json);
        assert!(
            Cli::try_parse_from([
                "x",
                "imap",
                "--user",
                "u",
                "--password",
                "p",
                "--mix",
                "bogus:1"
            ])
            .is_err()
        );
    }

    #[tokio::test]
    async fn remote_targets_are_refused_by_default() {
        let cli = Cli::try_parse_from(["x", "smtp", "--to", "a@b", "-t", "192.0.2.1:25"]).unwrap();
        let Scenario::Smtp(a) = &cli.scenario else {
            panic!()
        };
        let err = smtp_plan(&cli, a).await.err().unwrap().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
    }
}
