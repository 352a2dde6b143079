//! Where mail for a domain goes: MX lookup (RFC 5321 §5.1) with the shared
//! hickory resolver. Hosts are tried by preference, in random order among
//! equal preferences (to spread load as the domain intends); a domain
//! without MX records is its own implicit MX (its A/AAAA); a null MX
//! (RFC 7505) means the domain accepts no mail at all. An MX that names a
//! CNAME is tolerated: the address lookup follows it, as most MTAs do.
//!
//! The ordering and the null MX rule are pure functions over records.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::error::{DeliveryError, Diagnostic};

/// The mail exchangers of a domain, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    Hosts(Vec<MxHost>),
    /// RFC 7505: `MX 0 .` — the domain declares it receives no mail.
    NullMx,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Without the trailing dot.
    pub name: String,
    pub preference: u16,
    /// The domain itself, used because it has no MX records (RFC 5321 §5.1).
    pub implicit: bool,
}

/// Orders MX records `(preference, exchange)` for delivery.
pub fn plan(records: &[(u16, String)], rng: &mut impl Rng) -> MxPlan {
    let is_root = |name: &str| name.is_empty() || name == ".";
    // RFC 7505 §3: a null MX is a single record with preference 0 and
    // exchange ".". A "." among other MX records is a misconfiguration; it
    // cannot be connected to, so it is skipped like an unusable host.
    if records.len() == 1 && records[0].0 == 0 && is_root(&records[0].1) {
        return MxPlan::NullMx;
    }
    let mut hosts: Vec<MxHost> = Vec::with_capacity(records.len());
    for (preference, exchange) in records {
        if is_root(exchange) {
            continue;
        }
        let name = exchange.trim_end_matches('.').to_ascii_lowercase();
        if hosts.iter().any(|h| h.name == name) {
            continue;
        }
        hosts.push(MxHost {
            name,
            preference: *preference,
            implicit: false,
        });
    }
    if hosts.is_empty() {
        return MxPlan::NullMx;
    }
    // Shuffle first, then a stable sort by preference: equal preferences
    // stay in random order.
    hosts.shuffle(rng);
    hosts.sort_by_key(|h| h.preference);
    MxPlan::Hosts(hosts)
}

/// The delivery plan for `domain`.
pub async fn lookup(resolver: &TokioResolver, domain: &str) -> Result<MxPlan, DeliveryError> {
    let fqdn = fqdn(domain)?;
    match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let records: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                // An answer without MX data (a CNAME chain only): no MX.
                return Ok(implicit(domain));
            }
            Ok(plan(&records, &mut rand::rng()))
        }
        // RFC 5321 §5.1: the domain exists but has no MX: itself.
        Err(error) if error.is_no_records_found() && !error.is_nx_domain() => Ok(implicit(domain)),
        Err(error) if error.is_nx_domain() => Err(DeliveryError::Permanent(Diagnostic::local(
            "5.1.2",
            format!("domain {domain} does not exist"),
        ))),
        Err(error) => Err(DeliveryError::Transient(Diagnostic::local(
            "4.4.3",
            format!("MX lookup for {domain} failed: {error}"),
        ))),
    }
}

fn implicit(domain: &str) -> MxPlan {
    MxPlan::Hosts(vec![MxHost {
        name: domain.trim_end_matches('.').to_ascii_lowercase(),
        preference: 0,
        implicit: true,
    }])
}

/// The addresses of one MX host (CNAMEs followed). No address is final
/// for an implicit MX (the domain has no mail server at all), transient for
/// a named one (someone's DNS is broken, which tends to get fixed).
pub async fn addresses(
    resolver: &TokioResolver,
    host: &MxHost,
) -> Result<Vec<IpAddr>, DeliveryError> {
    // A relay may be given as an address.
    if let Ok(ip) = host.name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let fqdn = fqdn(&host.name)?;
    match resolver.lookup_ip(fqdn.as_str()).await {
        Ok(lookup) => {
            let ips: Vec<IpAddr> = lookup.iter().collect();
            if ips.is_empty() {
                Err(no_address(host))
            } else {
                Ok(ips)
            }
        }
        Err(error) if error.is_no_records_found() => Err(no_address(host)),
        Err(error) => Err(DeliveryError::Transient(Diagnostic::local(
            "4.4.3",
            format!("address lookup for {} failed: {error}", host.name),
        ))),
    }
}

fn no_address(host: &MxHost) -> DeliveryError {
    let text = format!("no A/AAAA record for {}", host.name);
    if host.implicit {
        DeliveryError::Permanent(Diagnostic::local("5.1.2", text))
    } else {
        DeliveryError::Transient(Diagnostic::local("4.4.3", text))
    }
}

/// The absolute form of a domain; a name that is not one is refused for
/// good (it cannot become valid later).
fn fqdn(domain: &str) -> Result<String, DeliveryError> {
    let domain = domain.trim_end_matches('.');
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || !b.is_ascii())
        });
    if !valid {
        return Err(DeliveryError::Permanent(Diagnostic::local(
            "5.1.2",
            format!("{domain:?} is not a valid domain name"),
        )));
    }
    Ok(format!("{domain}."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn records(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    fn names(plan: MxPlan) -> Vec<String> {
        match plan {
            MxPlan::Hosts(hosts) => hosts.into_iter().map(|h| h.name).collect(),
            MxPlan::NullMx => vec![],
        }
    }

    #[test]
    fn preference_order() {
        let mut rng = StdRng::seed_from_u64(1);
        let plan = plan(
            &records(&[(20, "b.example."), (10, "A.example."), (30, "c.example.")]),
            &mut rng,
        );
        assert_eq!(names(plan), ["a.example", "b.example", "c.example"]);
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let recs = records(&[
            (10, "a."),
            (10, "b."),
            (10, "c."),
            (5, "first."),
            (20, "last."),
        ]);
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let order = names(plan(&recs, &mut StdRng::seed_from_u64(seed)));
            assert_eq!(order[0], "first");
            assert_eq!(order[4], "last");
            firsts.insert(order[1].clone());
        }
        assert_eq!(firsts.len(), 3, "every equal host comes first sometimes");
    }

    #[test]
    fn null_mx() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(plan(&records(&[(0, ".")]), &mut rng), MxPlan::NullMx);
        // A "." among real hosts is skipped, the others used.
        assert_eq!(
            names(plan(&records(&[(0, "."), (10, "mx.example.")]), &mut rng)),
            ["mx.example"]
        );
        // Duplicates collapse.
        assert_eq!(
            names(plan(&records(&[(10, "mx."), (20, "MX.")]), &mut rng)),
            ["mx"]
        );
    }

    #[test]
    fn invalid_domains_are_permanent() {
        for bad in ["", "a..b", "[192.0.2.1]", "sp ace.test", &"a".repeat(64)] {
            assert!(
                matches!(fqdn(bad), Err(DeliveryError::Permanent(_))),
                "{bad:?}"
            );
        }
        assert_eq!(fqdn("Example.TEST.").unwrap(), "Example.TEST.");
    }
}
