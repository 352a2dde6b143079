//! Test helpers shared by the services' tests (a dev-dependency only, never
//! shipped). It owns [`DnsServer`]: a real authoritative DNS server built on
//! `hickory-server`, bound to loopback inside the test process, serving test
//! zones for MX routing, SPF, DKIM, DMARC, PTR (iprev) and DNSBL tests. No
//! mocks: the code under test queries it over UDP and TCP like any server.
//! Names outside the given zones are answered NXDOMAIN (an implicit empty
//! root zone), as the Internet would answer them.
//!
//! ```no_run
//! # async fn demo() {
//! use mailfleet_testkit::{DnsServer, Zone};
//! let dns = DnsServer::start([
//!     Zone::new("example.test")
//!         .mx("@", 10, "mx.example.test.")
//!         .a("mx", "192.0.2.25".parse().unwrap())
//!         .txt("@", "v=spf1 ip4:192.0.2.0/24 -all"),
//!     Zone::reverse_v4().ptr("192.0.2.25".parse().unwrap(), "mx.example.test."),
//! ])
//! .await;
//! let servers = vec![dns.addr().to_string()]; // for `[dns] servers`
//! let resolver = dns.resolver();              // or a ready hickory resolver
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RrKey};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

/// TTL of the records a [`Zone`] builder adds. Short, so a test that changes
/// a record through [`DnsServer::upsert`] is not fooled for long by a cache.
pub const TTL: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("bad domain name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("zone file for {origin}: {reason}")]
    ZoneFile { origin: String, reason: String },
    #[error("zone {origin}: {reason}")]
    Zone { origin: String, reason: String },
    #[error("cannot bind the DNS server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{name} is not inside any zone of this server")]
    NoZone { name: String },
}

/// One authoritative zone: an origin and its records. Names given to the
/// builder methods are relative to the origin (`"mx"`, `"_dmarc"`,
/// `"sel._domainkey"`), `"@"` is the origin itself, and a name ending in a
/// dot is absolute. An SOA and an NS record are added unless the records
/// already have them.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
    error: Option<String>,
}

impl Zone {
    /// An empty zone for `origin` (e.g. `"example.test"`).
    ///
    /// An unparsable origin is reported by [`DnsServer::try_start`].
    pub fn new(origin: &str) -> Zone {
        match parse_fqdn(origin) {
            Ok(origin) => Zone {
                origin,
                records: Vec::new(),
                error: None,
            },
            Err(err) => Zone {
                origin: Name::root(),
                records: Vec::new(),
                error: Some(err.to_string()),
            },
        }
    }

    /// The zone `in-addr.arpa.`: every IPv4 PTR record can go in it.
    pub fn reverse_v4() -> Zone {
        Zone::new("in-addr.arpa.")
    }

    /// The zone `ip6.arpa.`: every IPv6 PTR record can go in it.
    pub fn reverse_v6() -> Zone {
        Zone::new("ip6.arpa.")
    }

    /// A zone from master-file text (RFC 1035 §5), e.g.
    ///
    /// ```text
    /// $TTL 60
    /// @     IN MX  10 mx
    /// mx    IN A   192.0.2.25
    /// @     IN TXT "v=spf1 mx -all"
    /// ```
    ///
    /// Relative names are relative to `origin`; SOA/NS may be omitted.
    pub fn parse(origin: &str, text: &str) -> Result<Zone, TestkitError> {
        let origin_name = parse_fqdn(origin)?;
        let (_, records) = Parser::new(text, None, Some(origin_name.clone()))
            .parse()
            .map_err(|err| TestkitError::ZoneFile {
                origin: origin.to_string(),
                reason: err.to_string(),
            })?;
        let records = records
            .into_values()
            .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
            .collect();
        Ok(Zone {
            origin: origin_name,
            records,
            error: None,
        })
    }

    /// The zone's origin, fully qualified.
    pub fn origin(&self) -> String {
        self.origin.to_ascii()
    }

    /// Adds a record with any rdata (for types without a helper).
    pub fn record(mut self, name: &str, rdata: RData) -> Zone {
        match self.name(name) {
            Ok(name) => self.records.push(Record::from_rdata(name, TTL, rdata)),
            Err(err) => self.fail(err),
        }
        self
    }

    pub fn a(self, name: &str, ip: Ipv4Addr) -> Zone {
        self.record(name, RData::A(A(ip)))
    }

    pub fn aaaa(self, name: &str, ip: Ipv6Addr) -> Zone {
        self.record(name, RData::AAAA(AAAA(ip)))
    }

    /// An A or AAAA record, whichever `ip` is.
    pub fn ip(self, name: &str, ip: IpAddr) -> Zone {
        match ip {
            IpAddr::V4(ip) => self.a(name, ip),
            IpAddr::V6(ip) => self.aaaa(name, ip),
        }
    }

    /// An MX record; `exchange` is relative to the origin unless it ends in
    /// a dot, and `"."` is the null MX of RFC 7505.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Zone {
        match self.name(exchange) {
            Ok(exchange) => self.record(name, RData::MX(MX::new(preference, exchange))),
            Err(err) => {
                self.fail(err);
                self
            }
        }
    }

    /// A TXT record holding `text`. Text longer than 255 bytes (a DKIM key)
    /// is split into several character-strings, which SPF, DKIM and DMARC
    /// readers concatenate (RFC 7208 §3.3, RFC 6376 §3.6.2.2).
    pub fn txt(self, name: &str, text: &str) -> Zone {
        self.record(name, RData::TXT(TXT::new(split_txt(text))))
    }

    /// A TXT record made of exactly these character-strings.
    pub fn txt_strings(self, name: &str, strings: &[&str]) -> Zone {
        let strings = strings.iter().map(|s| s.to_string()).collect();
        self.record(name, RData::TXT(TXT::new(strings)))
    }

    pub fn cname(mut self, name: &str, target: &str) -> Zone {
        match self.name(target) {
            Ok(target) => self.record(name, RData::CNAME(CNAME(target))),
            Err(err) => {
                self.fail(err);
                self
            }
        }
    }

    /// A PTR record for `ip` (its name under in-addr.arpa or ip6.arpa,
    /// which must be inside this zone, e.g. [`Zone::reverse_v4`]).
    pub fn ptr(mut self, ip: IpAddr, target: &str) -> Zone {
        match self.name(target) {
            Ok(target) => {
                let name = Name::from(ip);
                self.records
                    .push(Record::from_rdata(name, TTL, RData::PTR(PTR(target))));
            }
            Err(err) => self.fail(err),
        }
        self
    }

    /// A DNSBL-style listing of `ip` in this zone (RFC 5782 §2.1): the
    /// reversed octets as a name with A `127.0.0.2` and a TXT reason.
    pub fn dnsbl_listing(self, ip: IpAddr, reason: &str) -> Zone {
        let name = dnsbl_name(ip);
        self.a(&name, Ipv4Addr::new(127, 0, 0, 2))
            .txt(&name, reason)
    }

    fn name(&self, name: &str) -> Result<Name, TestkitError> {
        if name == "@" {
            return Ok(self.origin.clone());
        }
        let parsed = Name::from_ascii(name).map_err(|err| TestkitError::Name {
            name: name.to_string(),
            reason: err.to_string(),
        })?;
        if parsed.is_fqdn() {
            return Ok(parsed);
        }
        parsed
            .append_domain(&self.origin)
            .map_err(|err| TestkitError::Name {
                name: name.to_string(),
                reason: err.to_string(),
            })
    }

    fn fail(&mut self, err: TestkitError) {
        if self.error.is_none() {
            self.error = Some(err.to_string());
        }
    }

    /// The zone as hickory's record sets, with SOA and NS added if missing.
    fn into_record_sets(self) -> Result<(Name, BTreeMap<RrKey, RecordSet>), TestkitError> {
        let origin = self.origin;
        let zone_error = |reason: String| TestkitError::Zone {
            origin: origin.to_ascii(),
            reason,
        };
        if let Some(reason) = self.error {
            return Err(zone_error(reason));
        }
        let lower_origin = LowerName::new(&origin);
        let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
        for record in self.records {
            if !LowerName::new(&record.name).zone_of(&lower_origin)
                && !lower_origin.zone_of(&LowerName::new(&record.name))
            {
                return Err(zone_error(format!("{} is outside the zone", record.name)));
            }
            let key = RrKey::new(LowerName::new(&record.name), record.record_type());
            sets.entry(key)
                .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), 1))
                .insert(record, 1);
        }
        let ns_name = Name::from_ascii("ns.testkit.invalid.").expect("static name");
        let soa_key = RrKey::new(
            lower_origin.clone(),
            hickory_server::proto::rr::RecordType::SOA,
        );
        sets.entry(soa_key).or_insert_with(|| {
            let soa = SOA::new(
                ns_name.clone(),
                Name::from_ascii("hostmaster.testkit.invalid.").expect("static name"),
                1,
                3600,
                600,
                86400,
                TTL,
            );
            RecordSet::from(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)))
        });
        let ns_key = RrKey::new(lower_origin, hickory_server::proto::rr::RecordType::NS);
        sets.entry(ns_key).or_insert_with(|| {
            RecordSet::from(Record::from_rdata(
                origin.clone(),
                TTL,
                RData::NS(NS(ns_name)),
            ))
        });
        Ok((origin, sets))
    }
}

/// The name under which a DNSBL zone lists `ip` (RFC 5782 §2.1, §2.4),
/// relative to the zone: `2.0.0.127` for 127.0.0.2, nibbles for IPv6.
pub fn dnsbl_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(ip) => {
            let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
            let nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
            nibbles.join(".")
        }
    }
}

/// Splits TXT data into character-strings of at most 255 bytes, on char
/// boundaries.
fn split_txt(text: &str) -> Vec<String> {
    if text.is_empty() {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if current.len() + ch.len_utf8() > 255 {
            out.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn parse_fqdn(name: &str) -> Result<Name, TestkitError> {
    let mut parsed = Name::from_ascii(name).map_err(|err| TestkitError::Name {
        name: name.to_string(),
        reason: err.to_string(),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// A running authoritative DNS server on UDP and TCP of one loopback port.
/// It stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zones: Vec<(LowerName, Arc<InMemoryZoneHandler>)>,
    server: Option<Server<Catalog>>,
}

impl DnsServer {
    /// Starts a server for `zones` on `127.0.0.1:<free port>`, UDP and TCP.
    ///
    /// Panics when a zone is invalid or nothing can be bound: this is for
    /// tests, where that is a broken test. [`DnsServer::try_start`] returns
    /// the error instead.
    pub async fn start(zones: impl IntoIterator<Item = Zone>) -> DnsServer {
        match DnsServer::try_start("127.0.0.1:0".parse().expect("static addr"), zones).await {
            Ok(server) => server,
            Err(err) => panic!("testkit dns server: {err}"),
        }
    }

    /// Starts a server for `zones` on `addr` (port 0: a free port, the same
    /// one for UDP and TCP).
    pub async fn try_start(
        addr: SocketAddr,
        zones: impl IntoIterator<Item = Zone>,
    ) -> Result<DnsServer, TestkitError> {
        let mut catalog = Catalog::new();
        let mut handlers = Vec::new();
        let mut zones: Vec<Zone> = zones.into_iter().collect();
        // Names outside every zone get an authoritative NXDOMAIN from an
        // empty root zone, as they would on the Internet, instead of
        // REFUSED (which resolvers report as a temporary error: DMARC's
        // tree walk up to `_dmarc.test.` would then be a temperror).
        if !zones.iter().any(|z| z.origin.is_root()) {
            zones.push(Zone::new("."));
        }
        for zone in zones {
            let (origin, sets) = zone.into_record_sets()?;
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                sets,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .map_err(|reason| TestkitError::Zone {
                origin: origin.to_ascii(),
                reason,
            })?;
            let handler = Arc::new(handler);
            let lower = LowerName::new(&origin);
            catalog.upsert(lower.clone(), vec![handler.clone() as Arc<dyn ZoneHandler>]);
            handlers.push((lower, handler));
        }

        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp
            .local_addr()
            .map_err(|source| TestkitError::Bind { addr, source })?;
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        tracing::debug!(%addr, zones = handlers.len(), "testkit dns server started");
        Ok(DnsServer {
            addr,
            zones: handlers,
            server: Some(server),
        })
    }

    /// The address to give resolvers (`[dns] servers = ["127.0.0.1:PORT"]`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A hickory resolver that asks only this server, UDP then TCP, with
    /// its own cache. Services under test should build theirs from config
    /// with [`DnsServer::addr`]; this one is for checking zones.
    pub fn resolver(&self) -> TokioResolver {
        let mut server = NameServerConfig::udp_and_tcp(self.addr.ip());
        for connection in &mut server.connections {
            connection.port = self.addr.port();
        }
        let config = ResolverConfig::from_parts(None, vec![], vec![server]);
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(2);
        options.attempts = 1;
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .expect("a resolver over one loopback server builds")
    }

    /// Adds or replaces (for SOA and CNAME) a record while the server runs.
    /// Resolvers may still hold the old answer for up to [`TTL`] seconds.
    pub async fn upsert(&self, record: Record) -> Result<(), TestkitError> {
        let name = LowerName::new(&record.name);
        let zone = self
            .zones
            .iter()
            .filter(|(origin, _)| origin.zone_of(&name) && !origin.is_root())
            .max_by_key(|(origin, _)| origin.num_labels())
            .ok_or_else(|| TestkitError::NoZone {
                name: record.name.to_ascii(),
            })?;
        let serial = zone.1.serial().await.wrapping_add(1);
        zone.1.upsert(record, serial).await;
        Ok(())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Cancelling the token stops the UDP and TCP tasks; the sockets
            // close as they end.
            server.shutdown_token().cancel();
        }
    }
}

/// Binds UDP and TCP on the same port: with port 0, retries a few times
/// in case the free UDP port is taken for TCP.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), TestkitError> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| TestkitError::Bind { addr, source })?;
        let bound = udp
            .local_addr()
            .map_err(|source| TestkitError::Bind { addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if addr.port() == 0 => {
                last_error = Some(TestkitError::Bind {
                    addr: bound,
                    source,
                })
            }
            Err(source) => {
                return Err(TestkitError::Bind {
                    addr: bound,
                    source,
                });
            }
        }
    }
    Err(last_error.unwrap_or(TestkitError::Bind {
        addr,
        source: std::io::Error::other("no free port for UDP and TCP"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_longer_than_255_is_split() {
        let text = "k".repeat(600);
        let parts = split_txt(&text);
        assert_eq!(
            parts.iter().map(String::len).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn dnsbl_names_reverse_the_address() {
        assert_eq!(dnsbl_name("192.0.2.99".parse().unwrap()), "99.2.0.192");
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2"), "{v6}");
    }

    #[test]
    fn names_outside_the_zone_are_refused() {
        let zone = Zone::new("example.test").a("other.test.", Ipv4Addr::LOCALHOST);
        assert!(zone.into_record_sets().is_err());
    }
}
