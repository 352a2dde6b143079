//! The one DNS resolver of a process: a caching hickory `TokioResolver`
//! shared by filter (SPF/DKIM/DMARC/DNSBL through mail-auth) and delivery
//! (MX routing), so both warm the same cache. `[dns] servers` points it at
//! given servers (tests run their own authoritative server); empty uses the
//! system's `/etc/resolv.conf`.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::Dns;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns.servers: {0:?} is not an IP:port address")]
    BadServer(String),
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

/// Parses `dns.servers` entries (`IP:port`, or a bare IP meaning port 53).
pub fn parse_servers(servers: &[String]) -> Result<Vec<SocketAddr>, DnsError> {
    servers
        .iter()
        .map(|s| {
            s.parse::<SocketAddr>()
                .or_else(|_| {
                    s.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| DnsError::BadServer(s.clone()))
        })
        .collect()
}

/// Builds the resolver for `config`.
pub fn resolver(config: &Dns) -> Result<TokioResolver, DnsError> {
    let servers = parse_servers(&config.servers)?;
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DnsError::Setup(e.to_string()))?
    } else {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = Duration::from_secs(config.timeout_secs.max(1));
    options.attempts = config.attempts.max(1);
    options.cache_size = config.cache_size;
    builder.build().map_err(|e| DnsError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_with_default_port() {
        let parsed = parse_servers(&["127.0.0.1:5353".into(), "::1".into()]).unwrap();
        assert_eq!(parsed[0], "127.0.0.1:5353".parse().unwrap());
        assert_eq!(parsed[1], "[::1]:53".parse().unwrap());
        assert!(parse_servers(&["dns.example".into()]).is_err());
    }

    #[tokio::test]
    async fn resolver_builds_for_given_servers() {
        let config = Dns {
            servers: vec!["127.0.0.1:5353".into()],
            ..Dns::default()
        };
        resolver(&config).unwrap();
    }
}
