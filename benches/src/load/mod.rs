//! The load harness's parts (used by `benches/benches/load.rs`): the
//! backends it dials through each proxy, the proxies under test, the load
//! generator's phases and `/proc` readings. See docs/benchmarks.md.

pub mod backends;
pub mod phases;
pub mod procfs;
pub mod proxies;

/// The real ClientHello every connection replays (curl 8 with OpenSSL 3,
/// SNI `shop.example.com`, 517 bytes).
pub const CURL_HELLO: &[u8] = include_bytes!("../../../tls-peek/testdata/curl-openssl3.bin");

/// The same hello addressed to the bulk route (`bulk.example.co1`, the
/// same length, so the record stays valid).
pub fn bulk_hello() -> Vec<u8> {
    let mut h = CURL_HELLO.to_vec();
    let at = h
        .windows(16)
        .position(|w| w == b"shop.example.com")
        .expect("the capture names shop.example.com");
    h[at..at + 16].copy_from_slice(b"bulk.example.co1");
    h
}

/// The median of `v` (upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
