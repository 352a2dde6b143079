//! A testkit DNS server as a process, for end-to-end tests in other
//! languages: `dns-server [--addr 127.0.0.1:0] ZONE_ORIGIN=ZONE_FILE...`.
//! It prints `listening 127.0.0.1:PORT` on stdout, then serves until its
//! standard input closes or it is killed.

use std::net::SocketAddr;

use mailfleet_testkit::{DnsServer, Zone};
use tokio::io::AsyncReadExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut zones = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--addr" {
            addr = args.next().ok_or("--addr needs a value")?.parse()?;
            continue;
        }
        let (origin, path) = arg
            .split_once('=')
            .ok_or("zones are given as ORIGIN=FILE")?;
        let text = std::fs::read_to_string(path)?;
        zones.push(Zone::parse(origin, &text)?);
    }
    let dns = DnsServer::try_start(addr, zones).await?;
    println!("listening {}", dns.addr());
    // Serve until stdin reaches EOF (the parent test went away) or a kill.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    Ok(())
}
