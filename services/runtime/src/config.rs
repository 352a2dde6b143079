//! Typed configuration: one TOML file, every key overridable by
//! `MAILFLEET__SECTION__KEY` environment variables, checked before any port
//! is bound. Defaults are a working single node on 127.0.0.1.
//!
//! Environment is read through [`Env`] so tests never set process variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where configuration overrides come from. The process environment in
/// production; a plain list in tests.
pub trait Env {
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for Vec<(String, String)> {
    fn vars(&self) -> Vec<(String, String)> {
        self.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML in {origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The prefix of override variables: `MAILFLEET__SMTP__MAX_MESSAGE_SIZE=1000`.
pub const ENV_PREFIX: &str = "MAILFLEET__";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the single node keeps its SQLite files, blobs and admin token.
    pub data_dir: PathBuf,
    /// The name this server gives itself in greetings and `Received:`.
    pub hostname: String,
    pub listen: Listen,
    pub services: Services,
    pub backends: Backends,
    pub smtp: Smtp,
    pub delivery: Delivery,
    pub telemetry: Telemetry,
    pub shutdown: Shutdown,
    pub dns: Dns,
    pub tls: Tls,
    pub filter: Filter,
    pub mailstore: Mailstore,
    pub access: Access,
    pub cluster: Cluster,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            hostname: "localhost".into(),
            listen: Listen::default(),
            services: Services::default(),
            backends: Backends::default(),
            smtp: Smtp::default(),
            delivery: Delivery::default(),
            telemetry: Telemetry::default(),
            shutdown: Shutdown::default(),
            dns: Dns::default(),
            tls: Tls::default(),
            filter: Filter::default(),
            mailstore: Mailstore::default(),
            access: Access::default(),
            cluster: Cluster::default(),
        }
    }
}

/// Listen addresses. A key set to an empty string is not served.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub smtp: String,
    pub submission: String,
    pub submissions: String,
    pub imap: String,
    pub imaps: String,
    pub pop3: String,
    pub pop3s: String,
    /// HTTP: /healthz, /readyz, /metrics and the admin API.
    pub admin: String,
    /// gRPC of the filter target.
    pub filter_grpc: String,
    /// gRPC of the mailstore target (directory and mailboxes).
    pub mailstore_grpc: String,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            smtp: "127.0.0.1:2525".into(),
            submission: "127.0.0.1:2587".into(),
            submissions: "127.0.0.1:2465".into(),
            imap: "127.0.0.1:1143".into(),
            imaps: "127.0.0.1:1993".into(),
            pop3: "127.0.0.1:1110".into(),
            pop3s: "127.0.0.1:1995".into(),
            admin: "127.0.0.1:8080".into(),
            filter_grpc: "127.0.0.1:7401".into(),
            mailstore_grpc: "127.0.0.1:7402".into(),
        }
    }
}

impl Listen {
    /// Parses one listen address; `None` when the key is empty (disabled).
    pub fn addr(value: &str) -> Option<SocketAddr> {
        if value.is_empty() {
            None
        } else {
            value.parse().ok()
        }
    }
}

/// Where a process reaches the gRPC services of other targets.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Services {
    pub filter_url: String,
    pub mailstore_url: String,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            filter_url: "http://127.0.0.1:7401".into(),
            mailstore_url: "http://127.0.0.1:7402".into(),
        }
    }
}

/// Backends are chosen by URL: empty means the single-node implementation
/// under `data_dir`; `nats://`, `postgres://`, `redis://` the cluster one.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backends {
    /// Empty: SQLite queue in `<data_dir>/queue.db`. `nats://host:4222`: JetStream.
    pub queue_url: String,
    /// Empty: in-process broadcast. `nats://host:4222`: NATS core subjects.
    pub events_url: String,
    /// Empty: SQLite in `<data_dir>/mailstore.db`. `postgres://...`: PostgreSQL.
    pub metadata_url: String,
    /// Empty: in memory. `redis://host:6379`: Redis.
    pub counters_url: String,
    /// Empty: `<data_dir>/blobs`. A directory shared by every process in a cluster.
    pub blob_dir: String,
    /// Empty: blobs in `blob_dir`. `s3://bucket/prefix`: an S3 bucket
    /// (credentials and region from the standard `AWS_*` variables).
    pub blob_url: String,
    /// S3-compatible endpoint for `blob_url` (`http://minio:9000`); empty for AWS.
    pub blob_s3_endpoint: String,
    /// Allow plain HTTP to `blob_s3_endpoint` (a server on a private network).
    pub blob_s3_allow_http: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Smtp {
    /// Largest message accepted, in bytes (advertised in EHLO SIZE).
    pub max_message_size: u64,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Longest command line in bytes, CRLF included (RFC 5321 §4.5.3.1.4: 512).
    pub max_line_length: usize,
    /// Bad commands before the session is closed.
    pub max_errors: u32,
    /// Seconds to wait for a command (RFC 5321 §4.5.3.2: at least 5 minutes).
    pub command_timeout_secs: u64,
    /// Seconds to wait for each DATA chunk (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_timeout_secs: u64,
    /// Concurrent sessions in total.
    pub max_connections: usize,
    /// Messages accepted per client IP per minute (0: no limit).
    pub messages_per_ip_per_minute: u64,
    /// A bare LF in DATA: `normalize` (stored as CRLF; never ends the
    /// message) or `reject` (`550 5.6.0`).
    pub bare_lf: String,
    /// Sessions at once from one client IP (0: no limit); more get `421 4.7.0`.
    /// Behind a load balancer without the PROXY protocol every client shares
    /// the balancer's addresses: set `proxy_trusted_networks`, or 0.
    pub max_connections_per_ip: usize,
    /// `Received:` headers a message may carry; more is a mail loop and
    /// gets `554 5.4.6` (RFC 5321 §6.3).
    pub max_hops: usize,
    /// CIDRs whose clients may relay (send to domains that are not ours)
    /// without AUTH. Empty: only authenticated users relay.
    pub relay_networks: Vec<String>,
    /// CIDRs whose clients may AUTH on submission without TLS (plain-text
    /// passwords on the wire). Empty: AUTH only after TLS.
    pub trusted_networks: Vec<String>,
    /// CIDRs of load balancers that must open each connection with a PROXY
    /// protocol v1/v2 header; the client address in it is the one used.
    pub proxy_trusted_networks: Vec<String>,
    /// Failed AUTH attempts per client IP per window before AUTH is refused
    /// (`454 4.7.0`); from the fourth failure on, each answer is delayed.
    pub auth_failures_per_ip: u64,
    /// The window of `auth_failures_per_ip`, in seconds.
    pub auth_failure_window_secs: u64,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 512,
            max_errors: 10,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            max_connections: 1000,
            messages_per_ip_per_minute: 0,
            bare_lf: "normalize".into(),
            max_connections_per_ip: 20,
            max_hops: 50,
            relay_networks: Vec::new(),
            trusted_networks: Vec::new(),
            proxy_trusted_networks: Vec::new(),
            auth_failures_per_ip: 10,
            auth_failure_window_secs: 900,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Delivery {
    /// Concurrent deliveries per `delivery` process.
    pub workers: usize,
    /// Seconds a taken entry stays leased before another worker may take it.
    pub lease_secs: u64,
    /// Waits between attempts of a destination after a transient failure
    /// ("30s", "5m", "1h", "2d"); the last one repeats.
    pub retry_intervals: Vec<String>,
    /// How long a message is retried before it bounces ("5d").
    pub max_queue_lifetime: String,
    /// After how long in the queue the sender is told that a message is
    /// still being retried (a DSN with Action: delayed); "" never.
    pub delay_warning_after: String,
    /// TCP port of remote MX servers: 25, another one in tests.
    pub remote_smtp_port: u16,
    /// Connections at once to one remote domain, over every worker of the
    /// cluster (Redis) or of the node; 0: no limit.
    pub max_connections_per_domain: usize,
    /// Delivery attempts started per minute to one remote domain, over
    /// every worker; 0: no limit.
    pub messages_per_domain_per_minute: u64,
    /// Local address outgoing connections are made from ("" lets the
    /// system choose): operators pin a pool of delivery workers to IPs
    /// whose PTR names `ehlo_name`.
    pub source_ip: String,
    /// The name given in EHLO to remote servers; "" means `hostname`.
    pub ehlo_name: String,
    /// A smarthost ("host" or "host:port", port 587 by default) that gets
    /// every remote message instead of the recipient domain's MX; "": none.
    pub relay_host: String,
    /// Credentials for the smarthost (AUTH PLAIN, only inside STARTTLS).
    pub relay_username: String,
    pub relay_password: String,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            workers: 4,
            lease_secs: 300,
            retry_intervals: ["5m", "10m", "30m", "1h", "2h", "4h"]
                .map(String::from)
                .to_vec(),
            max_queue_lifetime: "5d".into(),
            delay_warning_after: "4h".into(),
            remote_smtp_port: 25,
            max_connections_per_domain: 10,
            messages_per_domain_per_minute: 0,
            source_ip: String::new(),
            ehlo_name: String::new(),
            relay_host: String::new(),
            relay_username: String::new(),
            relay_password: String::new(),
        }
    }
}

impl Delivery {
    /// `retry_intervals` parsed; invalid entries were refused by `validate`.
    pub fn retry_schedule(&self) -> Vec<Duration> {
        self.retry_intervals
            .iter()
            .filter_map(|s| parse_duration(s))
            .collect()
    }

    /// `delay_warning_after` parsed; `None` when "" (no warnings).
    pub fn delay_warning(&self) -> Option<Duration> {
        parse_duration(&self.delay_warning_after)
    }

    /// `relay_host` as (host, port); `None` when empty or invalid.
    pub fn relay(&self) -> Option<(String, u16)> {
        let value = self.relay_host.trim();
        if value.is_empty() {
            return None;
        }
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.starts_with('[') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse().ok()?,
            ),
            _ => (value, 587),
        };
        (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
    }

    /// `max_queue_lifetime` parsed (5 days if invalid, which `validate` refuses).
    pub fn queue_lifetime(&self) -> Duration {
        parse_duration(&self.max_queue_lifetime).unwrap_or(Duration::from_secs(5 * 86400))
    }
}

/// A duration as written in the config: a number and a unit, `s`, `m`,
/// `h` or `d` ("90s", "5m", "4h", "5d").
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.checked_mul(unit_secs).map(Duration::from_secs)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// `text` or `json`.
    pub log_format: String,
    /// Default filter when `RUST_LOG` is unset.
    pub log_level: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Seconds sessions get to finish after SIGTERM before they are cut.
    pub grace_secs: u64,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { grace_secs: 20 }
    }
}

/// The DNS resolver shared by filter and delivery (see `runtime::dns`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    /// Servers as `IP:port` (or `IP` for port 53); empty: `/etc/resolv.conf`.
    pub servers: Vec<String>,
    /// Seconds per query attempt.
    pub timeout_secs: u64,
    /// Attempts per query.
    pub attempts: usize,
    /// Records kept in the resolver's cache.
    pub cache_size: u64,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            timeout_secs: 5,
            attempts: 2,
            cache_size: 4096,
        }
    }
}

/// Mailboxes and the directory (the `mailstore` target).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mailstore {
    /// A delivery to an account over its quota fails permanently (the
    /// sender gets a DSN, 5.2.2) instead of being retried (4.2.2).
    pub over_quota_permanent: bool,
    /// Message history (`mailfleet trace`) older than this many days is
    /// deleted, so the table stays bounded; 0 keeps it for ever.
    pub history_retention_days: u32,
}

impl Default for Mailstore {
    fn default() -> Self {
        Mailstore {
            over_quota_permanent: false,
            history_retention_days: 30,
        }
    }
}

/// IMAP and POP3 (the `access` target).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Access {
    /// Largest message an IMAP APPEND may upload, in bytes.
    pub max_append_size: u64,
    /// Networks (CIDR) where LOGIN and plain-text authentication are
    /// allowed without TLS, besides loopback.
    pub trusted_networks: Vec<String>,
    /// Train the filter's Bayesian classifier from IMAP users' moves: into
    /// the Junk mailbox as spam, out of it (except into Trash) as ham.
    pub learn_from_junk_moves: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            max_append_size: 25 * 1024 * 1024,
            trusted_networks: Vec::new(),
            learn_from_junk_moves: true,
        }
    }
}

/// Cluster-wide coordination: who does the singleton housekeeping jobs
/// (see `runtime::leader`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `auto` (Kubernetes Leases when `KUBERNETES_SERVICE_HOST` is set,
    /// else `off`), `kubernetes`, `nats` (a JetStream KV bucket on
    /// `backends.queue_url`), or `off` (every process does the jobs).
    pub leader_election: String,
    /// Seconds a Lease lives without renewal; renewed every third of it.
    pub lease_duration_secs: u64,
    /// Lease names are `<prefix>-<job>`; two releases in one namespace
    /// need different prefixes (the chart uses the release's full name).
    pub lease_name_prefix: String,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            leader_election: "auto".into(),
            lease_duration_secs: 15,
            lease_name_prefix: "mailfleet".into(),
        }
    }
}

/// The server certificate of every TLS listener (see `runtime::tls`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain. Empty (with `key_file`): a self-signed
    /// certificate for `hostname` is generated into `<data_dir>/tls/`.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// Sender authentication and spam scoring (the `filter` target).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// The authserv-id naming this server in `Authentication-Results:`
    /// (RFC 8601 §2.5); empty: `hostname`.
    pub authserv_id: String,
    /// Also add a `Received-SPF:` header (RFC 7208 §9.1).
    pub received_spf: bool,
    /// Act on DMARC policies: `p=reject` refuses the message (550 5.7.1),
    /// `p=quarantine` delivers it to Junk. False: report only.
    pub dmarc_enforce: bool,
    /// DNS blocklist zones queried with the client IP (RFC 5782).
    pub dnsbl_zones: Vec<String>,
    /// URI blocklist zones queried with the domains linked in the body.
    pub uribl_zones: Vec<String>,
    /// Score added per DNSBL / URIBL listing.
    pub dnsbl_score: f64,
    pub uribl_score: f64,
    /// Score from which `X-Spam-Flag: YES` is added.
    pub add_header_score: f64,
    /// Score from which a message goes to Junk.
    pub junk_score: f64,
    /// Score from which a message is refused (550 5.7.1).
    pub reject_score: f64,
    /// Score from which an unknown (client /24, sender, recipient) triplet
    /// is greylisted with 451 4.7.1 once; 0 turns greylisting off.
    pub greylist_score: f64,
    /// Seconds a greylisting triplet is remembered from its first attempt;
    /// after that its next attempt is greylisted again.
    pub greylist_window_secs: u64,
    /// Seconds a greylisted triplet must wait before a retry passes (RFC
    /// 6647 §2.1); an earlier retry gets 451 4.7.1 again.
    pub greylist_delay_secs: u64,
    /// Attachment name extensions scored as suspicious.
    pub attachment_extensions: Vec<String>,
    /// Refuse messages with such attachments instead of scoring them.
    pub reject_attachments: bool,
    /// Domains whose names in a display name (`"example.org support"
    /// <x@elsewhere>`) are spoofing; the recipients' domains count too.
    pub local_domains: Vec<String>,
    /// Brand names whose use in a From display name from another domain
    /// is scored as spoofing.
    pub brands: Vec<String>,
    /// Score messages with the Bayesian classifier (trained with
    /// `mailfleet filter train`); tokens in `<data_dir>/bayes.db`, or in
    /// Redis when `backends.counters_url` is set.
    pub bayes: bool,
    /// Operator rules: `{ name, header, pattern, score }`, a regex over a
    /// header's values (`header = ""`: over the text body).
    pub rules: Vec<FilterRule>,
}

/// One operator rule of `[[filter.rules]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterRule {
    pub name: String,
    pub header: String,
    pub pattern: String,
    pub score: f64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            authserv_id: String::new(),
            received_spf: false,
            dmarc_enforce: true,
            dnsbl_zones: Vec::new(),
            uribl_zones: Vec::new(),
            dnsbl_score: 4.0,
            uribl_score: 4.0,
            add_header_score: 3.0,
            junk_score: 5.0,
            reject_score: 15.0,
            greylist_score: 0.0,
            greylist_window_secs: 86400,
            greylist_delay_secs: 300,
            attachment_extensions: ["exe", "scr", "js", "vbs", "bat"]
                .map(String::from)
                .to_vec(),
            reject_attachments: false,
            local_domains: Vec::new(),
            brands: [
                "paypal",
                "apple",
                "microsoft",
                "amazon",
                "google",
                "netflix",
            ]
            .map(String::from)
            .to_vec(),
            bayes: true,
            rules: Vec::new(),
        }
    }
}

impl Config {
    /// Reads `path` (if any), applies `MAILFLEET__*` overrides from `env`,
    /// and checks the result. Every problem is reported at once.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: path
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "environment".into()),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses parse, URLs have a known scheme.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let l = &self.listen;
        for (key, value) in [
            ("listen.smtp", &l.smtp),
            ("listen.submission", &l.submission),
            ("listen.submissions", &l.submissions),
            ("listen.imap", &l.imap),
            ("listen.imaps", &l.imaps),
            ("listen.pop3", &l.pop3),
            ("listen.pop3s", &l.pop3s),
            ("listen.admin", &l.admin),
            ("listen.filter_grpc", &l.filter_grpc),
            ("listen.mailstore_grpc", &l.mailstore_grpc),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                problems.push(format!("{key} = {value:?} is not an IP:port address"));
            }
        }
        for (key, value) in [
            ("services.filter_url", &self.services.filter_url),
            ("services.mailstore_url", &self.services.mailstore_url),
        ] {
            if !value.starts_with("http://") && !value.starts_with("https://") {
                problems.push(format!(
                    "{key} = {value:?} must be an http:// or https:// URL"
                ));
            }
        }
        let b = &self.backends;
        for (key, value, schemes) in [
            ("backends.queue_url", &b.queue_url, &["nats://"][..]),
            ("backends.events_url", &b.events_url, &["nats://"][..]),
            (
                "backends.metadata_url",
                &b.metadata_url,
                &["postgres://", "postgresql://", "sqlite:"][..],
            ),
            (
                "backends.counters_url",
                &b.counters_url,
                &["redis://", "rediss://"][..],
            ),
            ("backends.blob_url", &b.blob_url, &["s3://", "s3a://"][..]),
        ] {
            if !value.is_empty() && !schemes.iter().any(|s| value.starts_with(s)) {
                problems.push(format!(
                    "{key} = {value:?} must be empty (single node) or start with {}",
                    schemes.join(" or ")
                ));
            }
        }
        if !["text", "json"].contains(&self.telemetry.log_format.as_str()) {
            problems.push(format!(
                "telemetry.log_format = {:?} must be \"text\" or \"json\"",
                self.telemetry.log_format
            ));
        }
        if !["normalize", "reject"].contains(&self.smtp.bare_lf.as_str()) {
            problems.push(format!(
                "smtp.bare_lf = {:?} must be \"normalize\" or \"reject\"",
                self.smtp.bare_lf
            ));
        }
        for (key, list) in [
            ("smtp.relay_networks", &self.smtp.relay_networks),
            ("smtp.trusted_networks", &self.smtp.trusted_networks),
            (
                "smtp.proxy_trusted_networks",
                &self.smtp.proxy_trusted_networks,
            ),
            ("access.trusted_networks", &self.access.trusted_networks),
        ] {
            for value in list {
                if value.parse::<Cidr>().is_err() {
                    problems.push(format!(
                        "{key}: {value:?} is not a CIDR such as \"10.0.0.0/8\" or \"::1/128\""
                    ));
                }
            }
        }
        let f = &self.filter;
        if !(f.add_header_score <= f.junk_score && f.junk_score <= f.reject_score) {
            problems.push(
                "filter scores must satisfy add_header_score <= junk_score <= reject_score".into(),
            );
        }
        for rule in &f.rules {
            if rule.name.is_empty() || rule.pattern.is_empty() {
                problems.push("filter.rules: every rule needs a name and a pattern".into());
            } else if let Err(e) = regex::Regex::new(&rule.pattern) {
                problems.push(format!(
                    "filter.rules {:?}: pattern is not a regex: {e}",
                    rule.name
                ));
            }
        }
        if self.smtp.max_hops == 0 {
            problems.push("smtp.max_hops must be at least 1".into());
        }
        if self.smtp.max_line_length < 512 {
            problems.push("smtp.max_line_length must be at least 512 (RFC 5321 §4.5.3.1.4)".into());
        }
        if self.delivery.workers == 0 {
            problems.push("delivery.workers must be at least 1".into());
        }
        if self.delivery.retry_intervals.is_empty() {
            problems.push("delivery.retry_intervals must not be empty".into());
        }
        for value in &self.delivery.retry_intervals {
            if parse_duration(value).is_none_or(|d| d.is_zero()) {
                problems.push(format!(
                    "delivery.retry_intervals: {value:?} is not a duration like \"30s\", \"5m\", \"4h\" or \"5d\""
                ));
            }
        }
        if parse_duration(&self.delivery.max_queue_lifetime).is_none() {
            problems.push(format!(
                "delivery.max_queue_lifetime = {:?} is not a duration like \"5d\"",
                self.delivery.max_queue_lifetime
            ));
        }
        if !self.delivery.source_ip.is_empty()
            && self.delivery.source_ip.parse::<std::net::IpAddr>().is_err()
        {
            problems.push(format!(
                "delivery.source_ip = {:?} is not an IP address",
                self.delivery.source_ip
            ));
        }
        if !self.delivery.relay_username.is_empty() && self.delivery.relay_host.is_empty() {
            problems.push("delivery.relay_username is set without delivery.relay_host".into());
        }
        if !self.delivery.relay_host.is_empty() && self.delivery.relay().is_none() {
            problems.push(format!(
                "delivery.relay_host = {:?} is not \"host\" or \"host:port\"",
                self.delivery.relay_host
            ));
        }
        if !self.delivery.delay_warning_after.is_empty()
            && parse_duration(&self.delivery.delay_warning_after).is_none()
        {
            problems.push(format!(
                "delivery.delay_warning_after = {:?} is not a duration like \"4h\" (or \"\")",
                self.delivery.delay_warning_after
            ));
        }
        if self.delivery.remote_smtp_port == 0 {
            problems.push("delivery.remote_smtp_port must not be 0".into());
        }
        if let Err(e) = crate::dns::parse_servers(&self.dns.servers) {
            problems.push(e.to_string());
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            problems.push("tls.cert_file and tls.key_file must be set together".into());
        }
        if !["auto", "kubernetes", "nats", "off"].contains(&self.cluster.leader_election.as_str()) {
            problems.push(format!(
                "cluster.leader_election = {:?} must be \"auto\", \"kubernetes\", \"nats\" or \"off\"",
                self.cluster.leader_election
            ));
        }
        if self.cluster.leader_election == "nats" && !self.backends.queue_url.starts_with("nats://")
        {
            problems.push(
                "cluster.leader_election = \"nats\" needs backends.queue_url (JetStream)".into(),
            );
        }
        if !(3..=3600).contains(&self.cluster.lease_duration_secs) {
            problems.push("cluster.lease_duration_secs must be between 3 and 3600".into());
        }
        if self.cluster.lease_name_prefix.is_empty() {
            problems.push("cluster.lease_name_prefix must not be empty".into());
        }
        if self.hostname.is_empty() {
            problems.push("hostname must not be empty".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The blob directory, `<data_dir>/blobs` unless configured.
    pub fn blob_dir(&self) -> PathBuf {
        if self.backends.blob_dir.is_empty() {
            self.data_dir.join("blobs")
        } else {
            PathBuf::from(&self.backends.blob_dir)
        }
    }
}

/// An IP network, `192.0.2.0/24` or `2001:db8::/32`; a bare address is a
/// single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = ();

    fn from_str(value: &str) -> Result<Cidr, ()> {
        let (addr, prefix) = match value.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (value, None),
        };
        let network: std::net::IpAddr = addr.trim().parse().map_err(|_| ())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| ())?,
            None => max,
        };
        if prefix > max {
            return Err(());
        }
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    /// True if `ip` is inside; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (a, b, bits) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        if self.prefix == 0 {
            return true;
        }
        let shift = bits - u32::from(self.prefix);
        (a >> shift) == (b >> shift)
    }

    /// Parses a list checked by [`Config::validate`]; bad entries are skipped.
    pub fn parse_list(values: &[String]) -> Vec<Cidr> {
        values.iter().filter_map(|v| v.parse().ok()).collect()
    }
}

/// Sets `MAILFLEET__A__B=v` as key `a.b` of `table`. The value is read as a
/// TOML value when it parses as one (`25`, `true`, `["a"]`), else as a string.
fn apply_env(table: &mut toml::Table, env: &dyn Env) -> Result<(), ConfigError> {
    for (name, raw) in env.vars() {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Syntax {
                origin: name.clone(),
                message: "empty key segment".into(),
            });
        }
        let value = parse_env_value(&raw);
        let (last, parents) = keys.split_last().expect("split yields at least one key");
        let mut current = &mut *table;
        for key in parents {
            let entry = current
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Syntax {
                        origin: name.clone(),
                        message: format!("{key} is not a section"),
                    });
                }
            };
        }
        current.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let net: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.org/8".parse::<Cidr>().is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_a_single_node_on_loopback() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.listen.smtp, "127.0.0.1:2525");
        assert_eq!(c.listen.admin, "127.0.0.1:8080");
        assert_eq!(c.smtp.max_message_size, 25 * 1024 * 1024);
        assert!(c.backends.queue_url.is_empty());
    }

    #[test]
    fn env_overrides_file_and_keeps_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "hostname = \"mx.example\"\n[smtp]\nmax_recipients = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            &env(&[
                ("MAILFLEET__SMTP__MAX_RECIPIENTS", "7"),
                ("MAILFLEET__LISTEN__SMTP", "127.0.0.1:2626"),
                ("MAILFLEET__BACKENDS__QUEUE_URL", "nats://127.0.0.1:4222"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.hostname, "mx.example");
        assert_eq!(c.smtp.max_recipients, 7);
        assert_eq!(c.listen.smtp, "127.0.0.1:2626");
        assert_eq!(c.backends.queue_url, "nats://127.0.0.1:4222");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::load(
            None,
            &env(&[
                ("MAILFLEET__LISTEN__SMTP", "not-an-address"),
                ("MAILFLEET__BACKENDS__QUEUE_URL", "kafka://x"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("listen.smtp"), "{text}");
        assert!(text.contains("backends.queue_url"), "{text}");
    }

    /// The reference config documents every key with its default value.
    #[test]
    fn reference_config_is_complete_and_matches_defaults() {
        let text = include_str!("../../mailfleet/reference.toml");
        let reference: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(reference, defaults);
    }

    #[test]
    fn delivery_durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5d"), Some(Duration::from_secs(432_000)));
        for bad in ["", "5", "m", "5 m", "-5m", "5w", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        let d = Delivery::default();
        assert_eq!(d.retry_schedule().len(), 6);
        assert_eq!(d.queue_lifetime(), Duration::from_secs(5 * 86400));
        let err = Config::load(
            None,
            &env(&[("MAILFLEET__DELIVERY__RETRY_INTERVALS", "[\"5x\"]")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("retry_intervals"), "{err}");
    }

    #[test]
    fn relay_host_forms() {
        let relay = |value: &str| {
            Delivery {
                relay_host: value.into(),
                ..Delivery::default()
            }
            .relay()
        };
        assert_eq!(relay(""), None);
        assert_eq!(
            relay("smtp.example.net"),
            Some(("smtp.example.net".into(), 587))
        );
        assert_eq!(
            relay("smtp.example.net:2525"),
            Some(("smtp.example.net".into(), 2525))
        );
        assert_eq!(relay("[2001:db8::1]:25"), Some(("2001:db8::1".into(), 25)));
        assert_eq!(relay("host:notaport"), None);
        let err =
            Config::load(None, &env(&[("MAILFLEET__DELIVERY__RELAY_USERNAME", "u")])).unwrap_err();
        assert!(err.to_string().contains("relay_host"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::load(None, &env(&[("MAILFLEET__SMTP__NO_SUCH_KEY", "1")])).unwrap_err();
        assert!(err.to_string().contains("no_such_key"), "{err}");
    }

    #[test]
    fn filter_rules_and_scores_are_checked() {
        let err = Config::load(
            None,
            &env(&[
                (
                    "MAILFLEET__FILTER__RULES",
                    r#"[{ name = "BAD", pattern = "(" }]"#,
                ),
                ("MAILFLEET__FILTER__JUNK_SCORE", "20.0"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"BAD\": pattern is not a regex"), "{err}");
        assert!(err.contains("junk_score <= reject_score"), "{err}");
    }
}
