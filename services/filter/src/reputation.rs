//! Reputation lookups: the client IP in DNS blocklists (RFC 5782) and the
//! domains linked from the body in URI blocklists. All queries of one
//! message run concurrently; an unreachable list counts as "not listed".

use std::net::IpAddr;

use hickory_resolver::TokioResolver;

/// Most body domains looked up per message, so a message stuffed with
/// links cannot fan out into hundreds of queries.
pub const MAX_URI_DOMAINS: usize = 20;

/// A listing: which zone listed which item.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub zone: String,
    pub item: String,
}

/// The query name for `ip` in a DNSBL zone (RFC 5782 §2.1 for IPv4,
/// §2.4 nibbles for IPv6).
pub fn dnsbl_query(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.{zone}.")
        }
        IpAddr::V6(ip) => {
            let mut name = String::with_capacity(64 + zone.len() + 2);
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str(zone);
            name.push('.');
            name
        }
    }
}

/// Whether a name is listed: RFC 5782 §2.1 says listings are A records in
/// 127.0.0.0/8; 127.255.255.0/24 are error codes of some lists (query
/// refused, rate limited), not listings.
async fn listed(resolver: &TokioResolver, name: String) -> bool {
    let Ok(lookup) = resolver.ipv4_lookup(name.as_str()).await else {
        return false;
    };
    lookup.answers().iter().any(|record| match &record.data {
        hickory_resolver::proto::rr::RData::A(a) => {
            let [first, second, third, _] = a.0.octets();
            first == 127 && !(second == 255 && third == 255)
        }
        _ => false,
    })
}

/// The zones of `zones` that list `ip`.
pub async fn check_ip(resolver: &TokioResolver, ip: IpAddr, zones: &[String]) -> Vec<Listing> {
    let checks = zones.iter().map(|zone| async move {
        listed(resolver, dnsbl_query(ip, zone))
            .await
            .then(|| Listing {
                zone: zone.clone(),
                item: ip.to_string(),
            })
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The (zone, domain) pairs listed among `domains` in `zones`.
pub async fn check_domains(
    resolver: &TokioResolver,
    domains: &[String],
    zones: &[String],
) -> Vec<Listing> {
    let checks = zones.iter().flat_map(|zone| {
        domains
            .iter()
            .take(MAX_URI_DOMAINS)
            .map(move |domain| async move {
                let name = format!("{}.{}.", domain, zone.trim_end_matches('.'));
                listed(resolver, name).await.then(|| Listing {
                    zone: zone.clone(),
                    item: domain.clone(),
                })
            })
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(
            dnsbl_query("192.0.2.99".parse().unwrap(), "bl.example."),
            "99.2.0.192.bl.example."
        );
        let v6 = dnsbl_query("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "bl.example");
        assert_eq!(
            v6,
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example."
        );
    }
}
