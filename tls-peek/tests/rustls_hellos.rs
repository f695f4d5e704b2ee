//! Property tests on ClientHellos that rustls generates as a client.
//!
//! The peeker's contract is that its answer depends only on the bytes, never
//! on how they were split into TLS records or TCP segments. Hand-written
//! hellos and a few captures cannot cover the shapes real clients produce,
//! so here rustls builds hellos with and without SNI, TLS 1.2-only and 1.3,
//! and ALPN lists up to several KB, and the tests prove that:
//! - any re-framing into records of 1..=16384 bytes, delivered in any
//!   chunks, answers Incomplete until the last byte and then exactly what
//!   the one-record hello answers, which is what rustls was configured with
//!   and what `tls-parser` (the oracle) reads;
//! - any mutation of such a hello (over several records, with limits down
//!   to 0) never panics and gives, at every prefix, the same answer fed in
//!   chunks as fed at once, `needed` included; it never completes sooner
//!   than `needed` said, and when accepted it reads as `tls-parser` reads it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};
use tls_peek::{Peek, Peeker, Reason};

const MAX: usize = 1 << 20;

/// The answer, owned, so answers from different peekers can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Incomplete(usize),
    Complete(Option<String>, Vec<Vec<u8>>),
    Reject(Reason),
}

fn answer(peek: Peek<'_>) -> Answer {
    match peek {
        Peek::Incomplete { needed } => {
            assert!(needed >= 1, "Incomplete must ask for at least one byte");
            Answer::Incomplete(needed)
        }
        Peek::Complete(h) => Answer::Complete(
            h.sni().map(String::from),
            h.alpn().map(<[u8]>::to_vec).collect(),
        ),
        Peek::Reject(r) => Answer::Reject(r),
    }
}

fn one_shot(bytes: &[u8], max: usize) -> Answer {
    answer(Peeker::new(max).feed(bytes))
}

/// Feeds one peeker every prefix ending at a chunk boundary (chunk sizes
/// cycled) and returns each prefix length with the answer it got.
fn chunked(bytes: &[u8], chunks: &[usize], max: usize) -> Vec<(usize, Answer)> {
    let (mut peeker, mut answers, mut end) = (Peeker::new(max), Vec::new(), 0);
    while end < bytes.len() {
        end = (end + chunks[answers.len() % chunks.len()]).min(bytes.len());
        answers.push((end, answer(peeker.feed(&bytes[..end]))));
    }
    answers
}

/// What the client is configured with; no SNI means an IP address.
#[derive(Debug, Clone)]
struct Spec {
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
    tls12_only: bool,
}

fn dns_name() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        "[a-zA-Z0-9_]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?",
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
    ];
    // rustls refuses a last label that reads as a number, so it starts
    // with a letter.
    let last = "[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?";
    (vec(label, 0..=3), last)
        .prop_map(|(mut labels, last)| {
            labels.push(last);
            labels.join(".")
        })
        .prop_filter("a DNS name is at most 253 bytes", |n| n.len() <= 253)
}

fn spec() -> impl Strategy<Value = Spec> {
    let alpn = prop_oneof![
        Just(Vec::new()),
        vec(vec(any::<u8>(), 1..=8), 1..=4),
        vec(vec(any::<u8>(), 1..=200), 0..=60),
        vec(vec(any::<u8>(), 150..=200), 40..=60),
    ];
    let sni = prop::option::weighted(0.8, dns_name());
    (sni, alpn, any::<bool>()).prop_map(|(sni, alpn, tls12_only)| Spec {
        sni,
        alpn,
        tls12_only,
    })
}

/// The first flight rustls sends: its ClientHello in one record `22, 3, 1`.
fn rustls_hello(spec: &Spec) -> Vec<u8> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()));
    let builder = if spec.tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = spec.alpn.clone();
    let name = match &spec.sni {
        Some(dns) => ServerName::try_from(dns.clone()).unwrap(),
        None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)).into()),
    };
    let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut flight = Vec::new();
    conn.write_tls(&mut flight).unwrap();
    // Even a hello with 12 KB of ALPN fits one record: rustls sends it so.
    assert_eq!(flight[..3], [22, 3, 1]);
    assert_eq!(
        usize::from(u16::from_be_bytes([flight[3], flight[4]])),
        flight.len() - 5
    );
    flight
}

/// Frames `message` into records of the given payload sizes (cycled), each
/// header `22, 3, 1` or `22, 3, 3`.
fn frame(message: &[u8], sizes: &[usize], tls12: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut rest, mut i) = (message, 0);
    while !rest.is_empty() {
        let take = sizes[i % sizes.len()].min(rest.len());
        let minor = if tls12[i % tls12.len()] { 3 } else { 1 };
        out.extend_from_slice(&[22, 3, minor]);
        out.extend_from_slice(&(take as u16).to_be_bytes());
        out.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        i += 1;
    }
    out
}

/// SNI and ALPN as `tls-parser` reads them from a hello in one record, or
/// `None` if it cannot parse the record, its hello or the extensions.
fn oracle(record: &[u8]) -> Option<(Option<String>, Vec<Vec<u8>>)> {
    let (_, plaintext) = tls_parser::parse_tls_plaintext(record).ok()?;
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) =
        plaintext.msg.first()
    else {
        return None;
    };
    // It stops at the first extension it cannot parse: then it has no answer.
    let (rest, exts) = tls_parser::parse_tls_extensions(hello.ext.unwrap_or(&[])).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let (mut sni, mut alpn) = (None, Vec::new());
    for ext in exts {
        match ext {
            TlsExtension::SNI(names) => {
                let host = names.iter().find(|(kind, _)| kind.0 == 0)?.1;
                sni = Some(String::from_utf8(host.to_vec()).ok()?);
            }
            TlsExtension::ALPN(names) => alpn = names.iter().map(|n| n.to_vec()).collect(),
            _ => {}
        }
    }
    Some((sni, alpn))
}

fn sizes(max: usize) -> impl Strategy<Value = Vec<usize>> {
    let size = prop_oneof![1..=8usize, 1..=300usize, 1..=max];
    vec(size, 1..=16)
}

/// Applies `(kind, where, bytes)`: kinds 0-3 flip bits (XOR `bytes[0]`),
/// 4 truncates, 5 inserts `bytes`, 6 removes `bytes.len()` bytes.
fn mutate(bytes: &mut Vec<u8>, (kind, at, new): &(u8, Index, Vec<u8>)) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    let at = at.index(len + 1);
    match kind {
        0..=3 => bytes[at.min(len - 1)] ^= new[0].max(1),
        4 => bytes.truncate(at),
        5 => drop(bytes.splice(at..at, new.iter().copied())),
        _ => drop(bytes.drain(at..(at + new.len()).min(len))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_framing_and_chunking_gives_the_configured_answer(
        spec in spec(),
        records in sizes(16_384),
        versions in vec(any::<bool>(), 1..=4),
        chunks in sizes(4_096),
    ) {
        let original = rustls_hello(&spec);
        let expected = Answer::Complete(spec.sni.clone(), spec.alpn.clone());
        prop_assert_eq!(one_shot(&original, MAX), expected.clone());
        let (sni, alpn) = oracle(&original).expect("tls-parser reads rustls's hello");
        prop_assert_eq!(Answer::Complete(sni, alpn), expected.clone());

        let framed = frame(&original[5..], &records, &versions);
        let answers = chunked(&framed, &chunks, MAX);
        let ((_, last), before) = answers.split_last().unwrap();
        for (end, a) in before {
            prop_assert!(matches!(a, Answer::Incomplete(_)), "{:?} at {} of {}", a, end, framed.len());
        }
        prop_assert_eq!(last, &expected);
    }

    #[test]
    fn mutated_hellos_answer_the_same_however_split(
        spec in spec(),
        records in sizes(2_048),
        mutations in vec((0..7u8, any::<Index>(), vec(any::<u8>(), 1..=8)), 1..=4),
        chunks in sizes(1_024),
        max in prop_oneof![3 => Just(MAX), 1 => 0..=4_096usize],
    ) {
        let original = rustls_hello(&spec);
        let mut bytes = frame(&original[5..], &records, &[false, true]);
        for m in &mutations {
            mutate(&mut bytes, m);
        }
        // Each answer on the way equals the one-shot answer on that prefix,
        // and no hello completes before `needed` more bytes. (A reject may
        // come sooner: `needed` counts to the next header's end.)
        for (end, a) in chunked(&bytes, &chunks, max) {
            prop_assert_eq!(&a, &one_shot(&bytes[..end], max), "at {} of {}", end, bytes.len());
            if let Answer::Incomplete(needed) = a {
                let short = (end + needed - 1).min(bytes.len());
                let got = one_shot(&bytes[..short], max);
                prop_assert!(!matches!(got, Answer::Complete(..)), "{:?} at {}", got, short);
            }
        }
        // A mutant the peeker accepts reads the same to tls-parser, if that
        // parses it (it skips a hello spread over records).
        if let (Answer::Complete(sni, alpn), Some(oracle)) = (one_shot(&bytes, max), oracle(&bytes)) {
            prop_assert_eq!((sni, alpn), oracle);
        }
    }
}
