//! The testkit DNS server answered by a real hickory resolver over UDP and
//! TCP: every record type the mail tests need, zones from text, PTR in
//! in-addr.arpa, NXDOMAIN outside the data, and stop on drop.

use std::net::{IpAddr, Ipv4Addr};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use mailfleet_testkit::{DnsServer, Zone};

fn zones() -> Vec<Zone> {
    let dkim_key = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
    vec![
        Zone::new("example.test")
            .mx("@", 10, "mx1")
            .mx("@", 20, "mx2.example.test.")
            .a("mx1", Ipv4Addr::new(192, 0, 2, 25))
            .aaaa("mx1", "2001:db8::25".parse().unwrap())
            .a("mx2", Ipv4Addr::new(192, 0, 2, 26))
            .txt("@", "v=spf1 ip4:192.0.2.0/24 -all")
            .txt("_dmarc", "v=DMARC1; p=reject")
            .txt("sel._domainkey", &dkim_key)
            .cname("www", "mx1"),
        Zone::parse(
            "other.test",
            "$TTL 60\n\
             @      IN MX  0 .\n\
             host   IN A   198.51.100.7\n\
             @      IN TXT \"v=spf1 -all\"\n",
        )
        .unwrap(),
        Zone::reverse_v4().ptr("192.0.2.25".parse().unwrap(), "mx1.example.test."),
        Zone::new("bl.test").dnsbl_listing("192.0.2.99".parse().unwrap(), "listed for tests"),
    ]
}

fn tcp_only_resolver(dns: &DnsServer) -> TokioResolver {
    let mut server = NameServerConfig::tcp(dns.addr().ip());
    server.connections[0].port = dns.addr().port();
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(ResolverOpts::default())
        .build()
        .unwrap()
}

#[tokio::test]
async fn serves_mail_records_over_udp_and_tcp() {
    let dns = DnsServer::start(zones()).await;
    assert!(dns.addr().ip().is_loopback());
    let resolver = dns.resolver();

    let mx = resolver.mx_lookup("example.test.").await.unwrap();
    let mut exchanges: Vec<(u16, String)> = mx
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::MX(mx) => {
                Some((mx.preference, mx.exchange.to_ascii()))
            }
            _ => None,
        })
        .collect();
    exchanges.sort();
    assert_eq!(
        exchanges,
        [
            (10, "mx1.example.test.".to_string()),
            (20, "mx2.example.test.".to_string())
        ]
    );

    let ips = resolver.lookup_ip("mx1.example.test.").await.unwrap();
    let mut ips: Vec<IpAddr> = ips.iter().collect();
    ips.sort();
    assert_eq!(
        ips,
        [
            IpAddr::from([192, 0, 2, 25]),
            "2001:db8::25".parse::<IpAddr>().unwrap()
        ]
    );

    let txt = resolver
        .txt_lookup("sel._domainkey.example.test.")
        .await
        .unwrap();
    let joined: String = txt
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    assert!(joined.starts_with("v=DKIM1; k=rsa; p=AAAA"), "{joined}");
    assert_eq!(joined.len(), "v=DKIM1; k=rsa; p=".len() + 400);

    let cname = resolver
        .lookup("www.example.test.", RecordType::A)
        .await
        .unwrap();
    assert!(
        cname
            .answers()
            .iter()
            .any(|r| r.record_type() == RecordType::CNAME)
    );
    assert!(
        cname.answers().iter().any(|r| r.data
            == hickory_resolver::proto::rr::RData::A(Ipv4Addr::new(192, 0, 2, 25).into()))
    );

    let ptr = resolver
        .reverse_lookup("192.0.2.25".parse::<IpAddr>().unwrap())
        .await
        .unwrap();
    let names: Vec<String> = ptr.answers().iter().map(|r| r.data.to_string()).collect();
    assert_eq!(names, ["mx1.example.test."]);

    // DNSBL listing (RFC 5782): A 127.0.0.2 under the reversed address.
    let listed = resolver.lookup_ip("99.2.0.192.bl.test.").await.unwrap();
    assert_eq!(
        listed.iter().collect::<Vec<_>>(),
        [IpAddr::from([127, 0, 0, 2])]
    );
    assert!(resolver.lookup_ip("1.2.0.192.bl.test.").await.is_err());

    // Zone from text, null MX (RFC 7505), over TCP only.
    let tcp = tcp_only_resolver(&dns);
    let mx = tcp.mx_lookup("other.test.").await.unwrap();
    assert_eq!(mx.answers().len(), 1);
    let ip = tcp.lookup_ip("host.other.test.").await.unwrap();
    assert_eq!(
        ip.iter().collect::<Vec<_>>(),
        [IpAddr::from([198, 51, 100, 7])]
    );
    let dmarc = tcp.txt_lookup("_dmarc.example.test.").await.unwrap();
    assert_eq!(dmarc.answers().len(), 1);

    // Names without data: NXDOMAIN, not a timeout.
    assert!(resolver.txt_lookup("_dmarc.other.test.").await.is_err());
    assert!(resolver.lookup_ip("nothing.example.test.").await.is_err());
    // Outside every zone: NXDOMAIN from the implicit root, not REFUSED.
    let err = resolver.txt_lookup("_dmarc.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
}

#[tokio::test]
async fn records_can_be_added_while_running() {
    let dns = DnsServer::start([Zone::new("late.test")]).await;
    let resolver = dns.resolver();
    assert!(resolver.lookup_ip("new.late.test.").await.is_err());
    let record = hickory_resolver::proto::rr::Record::from_rdata(
        "new.late.test.".parse().unwrap(),
        60,
        hickory_resolver::proto::rr::RData::A(Ipv4Addr::new(203, 0, 113, 1).into()),
    );
    dns.upsert(record).await.unwrap();
    let fresh = dns.resolver();
    let ip = fresh.lookup_ip("new.late.test.").await.unwrap();
    assert_eq!(
        ip.iter().collect::<Vec<_>>(),
        [IpAddr::from([203, 0, 113, 1])]
    );
}

#[tokio::test]
async fn bad_zones_are_errors_and_drop_stops_the_server() {
    assert!(Zone::parse("broken.test", "@ IN MX notanumber\n").is_err());
    let outside = Zone::new("a.test").a("b.test.", Ipv4Addr::LOCALHOST);
    assert!(
        DnsServer::try_start("127.0.0.1:0".parse().unwrap(), [outside])
            .await
            .is_err()
    );

    let dns = DnsServer::start([Zone::new("gone.test").a("x", Ipv4Addr::LOCALHOST)]).await;
    let addr = dns.addr();
    drop(dns);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // The TCP port is closed once the server has stopped.
    let mut refused = false;
    for _ in 0..20 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused, "tcp {addr} still accepts after drop");
}
