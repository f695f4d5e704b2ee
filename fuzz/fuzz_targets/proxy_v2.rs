//! The edge's PROXY v2 encoder, decoded by the independent `ppp` crate:
//! source, destination (IPv4 stays AF_INET, mapped addresses unmapped)
//! and the AUTHORITY TLV round-trip exactly.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ppp::v2::{Addresses, Header};

#[derive(Arbitrary, Debug)]
struct Input {
    src_v4: bool,
    dst_v4: bool,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    authority: Option<Vec<u8>>,
}

fn addr(v4: bool, bytes: [u8; 16], port: u16) -> SocketAddr {
    let ip = if v4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

fuzz_target!(|input: Input| {
    let src = addr(input.src_v4, input.src, input.src_port);
    let dst = addr(input.dst_v4, input.dst, input.dst_port);
    let authority = input.authority.map(|mut a| {
        a.truncate(255);
        a
    });
    let mut out = Vec::new();
    edge::proxy_v2::encode(src, dst, authority.as_deref(), &mut out);
    let header = Header::try_from(out.as_slice()).expect("ppp parses what the edge writes");
    assert_eq!(header.len(), out.len());
    let (s, d) = (unmapped(src), unmapped(dst));
    match header.addresses {
        Addresses::IPv4(a) => {
            assert!(s.is_ipv4() && d.is_ipv4());
            assert_eq!(
                SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                s
            );
            assert_eq!(
                SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
                d
            );
        }
        Addresses::IPv6(a) => {
            assert!(!(s.is_ipv4() && d.is_ipv4()));
            let six = |x: SocketAddr| match x.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            assert_eq!(a.source_address, six(s));
            assert_eq!(a.destination_address, six(d));
            assert_eq!((a.source_port, a.destination_port), (s.port(), d.port()));
        }
        other => panic!("unexpected family {other:?}"),
    }
    let tlvs: Vec<_> = header.tlvs().collect::<Result<_, _>>().expect("TLVs parse");
    match authority {
        Some(a) => {
            assert_eq!(tlvs.len(), 1);
            assert_eq!(tlvs[0].kind, 0x02);
            assert_eq!(&*tlvs[0].value, &a[..]);
        }
        None => assert!(tlvs.is_empty()),
    }
});
