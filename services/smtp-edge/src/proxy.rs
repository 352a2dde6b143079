//! PROXY protocol v1 (text) and v2 (binary), as load balancers send it
//! (HAProxy's proxy-protocol.txt): the first bytes of a connection name the
//! real client. Parsing is pure; [`read_header`] reads exactly the header's
//! bytes, so what follows (an implicit-TLS ClientHello, say) stays unread.
//!
//! Only connections from `smtp.proxy_trusted_networks` are read this way,
//! and those must send a header: anyone else could otherwise claim any
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1: at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// v2 TLVs beyond the addresses are skipped, but bounded.
const V2_MAX_BODY: usize = 2048;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The real client.
    Client(SocketAddr),
    /// v2 LOCAL, v1 UNKNOWN or an unspecified family: a health check from
    /// the proxy itself; the connection's own address stands.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    Invalid,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses a v1 line (`PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n`).
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ProxyError::Invalid)?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Invalid)?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::Invalid);
    }
    let family = parts.next().ok_or(ProxyError::Invalid)?;
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(ProxyError::Invalid);
    };
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(src.parse().map_err(|_| ProxyError::Invalid)?),
        "TCP6" => IpAddr::V6(src.parse().map_err(|_| ProxyError::Invalid)?),
        _ => return Err(ProxyError::Invalid),
    };
    // Ports are decimal without leading zeros or signs.
    if sport.is_empty() || !sport.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::Invalid);
    }
    let port: u16 = sport.parse().map_err(|_| ProxyError::Invalid)?;
    Ok(ProxyHeader::Client(SocketAddr::new(ip, port)))
}

/// Parses a v2 header: its 16 fixed bytes and the `len` bytes after them.
pub fn parse_v2(fixed: &[u8; 16], body: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if fixed[..12] != V2_SIGNATURE || fixed[12] >> 4 != 2 {
        return Err(ProxyError::Invalid);
    }
    match fixed[12] & 0x0f {
        0 => return Ok(ProxyHeader::Local),
        1 => {}
        _ => return Err(ProxyError::Invalid),
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if body.len() != len {
        return Err(ProxyError::Invalid);
    }
    // High nibble: address family; low nibble: 1 = STREAM.
    match fixed[13] {
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(ProxyHeader::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(ProxyHeader::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC, UNIX sockets, datagrams: nothing usable, keep our own.
        0x00 | 0x31 | 0x32 | 0x12 | 0x22 => Ok(ProxyHeader::Local),
        _ => Err(ProxyError::Invalid),
    }
}

/// Reads one header (v1 or v2, told apart by the first byte) and nothing
/// after it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyError> {
    let first = stream.read_u8().await?;
    match first {
        b'P' => {
            // v1 is short and ends with CRLF: byte by byte, never past it.
            let mut line = vec![first];
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Err(ProxyError::Invalid);
                }
                line.push(stream.read_u8().await?);
            }
            parse_v1(&line)
        }
        b'\r' => {
            let mut fixed = [0u8; 16];
            fixed[0] = first;
            stream.read_exact(&mut fixed[1..]).await?;
            if fixed[..12] != V2_SIGNATURE {
                return Err(ProxyError::Invalid);
            }
            let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            if len > V2_MAX_BODY {
                return Err(ProxyError::Invalid);
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).await?;
            parse_v2(&fixed, &body)
        }
        _ => Err(ProxyError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n").unwrap(),
            ProxyHeader::Client("192.0.2.1:56324".parse().unwrap())
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 25\r\n").unwrap(),
            ProxyHeader::Client("[2001:db8::1]:4000".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), ProxyHeader::Local);
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 +1 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.1 1\r\n",
            b"EHLO x\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn v2_headers_and_nothing_more_is_read() {
        let mut body = vec![192, 0, 2, 9, 198, 51, 100, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, skipped
        let mut input = v2(1, 0x11, &body);
        input.extend_from_slice(b"\x16\x03\x01");
        let mut reader = &input[..];
        assert_eq!(
            read_header(&mut reader).await.unwrap(),
            ProxyHeader::Client("192.0.2.9:4242".parse().unwrap())
        );
        assert_eq!(reader, b"\x16\x03\x01");

        let mut body = vec![0u8; 36];
        body[15] = 1;
        body[32..34].copy_from_slice(&993u16.to_be_bytes());
        let input = v2(1, 0x21, &body);
        assert_eq!(
            read_header(&mut &input[..]).await.unwrap(),
            ProxyHeader::Client("[::1]:993".parse().unwrap())
        );
        assert_eq!(
            read_header(&mut &v2(0, 0, &[])[..]).await.unwrap(),
            ProxyHeader::Local
        );
        // Too short for its family, bad version, junk.
        assert!(read_header(&mut &v2(1, 0x11, &[1, 2])[..]).await.is_err());
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x11;
        assert!(read_header(&mut &bad[..]).await.is_err());
        assert!(read_header(&mut &b"EHLO x\r\n"[..]).await.is_err());
        let mut v1 = &b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\nEHLO"[..];
        assert_eq!(
            read_header(&mut v1).await.unwrap(),
            ProxyHeader::Client("192.0.2.1:56324".parse().unwrap())
        );
        assert_eq!(v1, b"EHLO");
    }
}
