//! PROXY protocol v2 header encoder: a pure function from the client's
//! address, the address it connected to and its SNI to the bytes a backend
//! reads before any client byte.
//!
//! An IPv4 client is described with AF_INET even though the backend leg is
//! IPv6 (an IPv4-mapped IPv6 address is unmapped first). The SNI goes in a
//! PP2_TYPE_AUTHORITY TLV exactly as the client sent it. The caller writes
//! the header in one write. No I/O.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 (high nibble), command PROXY (low nibble 1).
pub const VERSION_COMMAND_PROXY: u8 = 0x21;
/// AF_INET (0x1_) + STREAM (0x_1).
pub const FAMILY_TCP4: u8 = 0x11;
/// AF_INET6 (0x2_) + STREAM (0x_1).
pub const FAMILY_TCP6: u8 = 0x21;
/// PP2_TYPE_AUTHORITY: the host name the client asked for (its SNI).
pub const TLV_AUTHORITY: u8 = 0x02;
/// Signature, version/command, family, 2-byte length.
pub const FIXED_HEADER_LEN: usize = 16;
/// Two IPv4 addresses and two ports.
const ADDRS_TCP4_LEN: usize = 12;
/// Two IPv6 addresses and two ports.
const ADDRS_TCP6_LEN: usize = 36;
/// TLV type and 2-byte length.
const TLV_HEADER_LEN: usize = 3;
/// An SNI is at most 255 bytes, so the longest header is this.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + ADDRS_TCP6_LEN + TLV_HEADER_LEN + 255;

/// Appends the header for a connection from `source` to `destination`
/// (the edge's public address) to `out`.
pub fn encode(
    source: SocketAddr,
    destination: SocketAddr,
    authority: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let (src_ip, dst_ip) = (unmap(source.ip()), unmap(destination.ip()));
    let tlv_len = authority.map_or(0, |a| TLV_HEADER_LEN + a.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_COMMAND_PROXY);
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(FAMILY_TCP4);
            out.extend_from_slice(&len16(ADDRS_TCP4_LEN + tlv_len));
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(FAMILY_TCP6);
            out.extend_from_slice(&len16(ADDRS_TCP6_LEN + tlv_len));
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    if let Some(authority) = authority {
        out.push(TLV_AUTHORITY);
        out.extend_from_slice(&len16(authority.len()));
        out.extend_from_slice(authority);
    }
    debug_assert_eq!(
        out.len() - start,
        FIXED_HEADER_LEN + u16::from_be_bytes([out[start + 14], out[start + 15]]) as usize,
        "the length field covers addresses and TLVs exactly"
    );
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn len16(n: usize) -> [u8; 2] {
    debug_assert!(n <= usize::from(u16::MAX), "PROXY v2 length fits 16 bits");
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> ppp::v2::Header<'_> {
        ppp::v2::Header::try_from(bytes).expect("an independent parser accepts the header")
    }

    #[test]
    fn ipv4_client_is_af_inet_with_authority() {
        let mut out = Vec::new();
        let src: SocketAddr = "198.51.100.9:50000".parse().unwrap();
        let dst: SocketAddr = "203.0.113.7:443".parse().unwrap();
        encode(src, dst, Some(b"Shop.Example.com"), &mut out);
        let h = decode(&out);
        assert_eq!(h.command, ppp::v2::Command::Proxy);
        assert_eq!(
            h.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new(
                [198, 51, 100, 9],
                [203, 0, 113, 7],
                50000,
                443
            ))
        );
        let tlvs: Vec<_> = h.tlvs().collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, TLV_AUTHORITY);
        assert_eq!(&tlvs[0].value[..], b"Shop.Example.com");
        assert_eq!(h.len(), out.len());
    }

    #[test]
    fn ipv6_and_mapped_clients() {
        let mut out = Vec::new();
        let src: SocketAddr = "[2001:db8::5]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::10]:443".parse().unwrap();
        encode(src, dst, None, &mut out);
        let h = decode(&out);
        assert!(
            matches!(h.addresses, ppp::v2::Addresses::IPv6(a) if a.source_address == "2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap() && a.destination_port == 443)
        );
        assert_eq!(h.tlvs().count(), 0);

        out.clear();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:1234".parse().unwrap();
        let dst4: SocketAddr = "[::ffff:203.0.113.7]:443".parse().unwrap();
        encode(mapped, dst4, None, &mut out);
        assert!(matches!(
            decode(&out).addresses,
            ppp::v2::Addresses::IPv4(_)
        ));
    }

    #[test]
    fn longest_sni_fits_the_bound() {
        let mut out = Vec::new();
        let name = vec![b'a'; 255];
        encode(
            "[::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            Some(&name),
            &mut out,
        );
        assert_eq!(out.len(), MAX_HEADER_LEN);
        decode(&out);
    }
}
