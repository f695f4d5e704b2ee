//! Unit tests on real captures and hand-built hellos. The rustls-generated
//! property tests live in `tests/`.

use super::*;

pub(crate) const CHROMIUM_PQ: &[u8] = include_bytes!("../testdata/chromium-pq.bin");
pub(crate) const CURL: &[u8] = include_bytes!("../testdata/curl-openssl3.bin");
pub(crate) const OPENSSL_NOSNI: &[u8] = include_bytes!("../testdata/openssl-s_client-nosni.bin");
pub(crate) const OPENSSL_TLS12: &[u8] = include_bytes!("../testdata/openssl-s_client-tls12.bin");
pub(crate) const RUSTLS: &[u8] = include_bytes!("../testdata/rustls-0.23.bin");

const MAX: usize = 16_384;

/// The answer, owned, so answers from different peekers can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Incomplete,
    Complete(Option<String>, Vec<Vec<u8>>),
    Reject(Reason),
}

fn answer(peek: Peek<'_>) -> Answer {
    match peek {
        Peek::Incomplete { needed } => {
            assert!(needed >= 1);
            Answer::Incomplete
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

/// Feeds every prefix in turn, as a one-byte-per-segment client would.
fn byte_at_a_time(bytes: &[u8], max: usize) -> Answer {
    let mut p = Peeker::new(max);
    for end in 1..bytes.len() {
        match answer(p.feed(&bytes[..end])) {
            Answer::Incomplete => {}
            done => return done,
        }
    }
    answer(p.feed(bytes))
}

/// Splits the handshake message of a one-record hello into records of at
/// most `size` payload bytes.
pub(crate) fn reframe(hello: &[u8], size: usize) -> Vec<u8> {
    let payload = &hello[5..];
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[22, hello[1], hello[2]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A ClientHello record with the given extensions, built by hand.
fn hello_with(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    let mut ext_bytes = Vec::new();
    for (kind, data) in exts {
        ext_bytes.extend_from_slice(&kind.to_be_bytes());
        ext_bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext_bytes.extend_from_slice(data);
    }
    body.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext_bytes);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    for chunk in msg.chunks(MAX_RECORD_PAYLOAD) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn sni_ext(names: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    (0, data)
}

fn complete(sni: Option<&str>) -> Answer {
    Answer::Complete(sni.map(String::from), Vec::new())
}

#[test]
fn captures_give_their_sni_and_alpn() {
    let h2 = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    assert_eq!(
        one_shot(CHROMIUM_PQ, MAX),
        Answer::Complete(Some("shop.example.com".into()), h2.clone())
    );
    assert_eq!(
        one_shot(CURL, MAX),
        Answer::Complete(Some("shop.example.com".into()), h2)
    );
    assert!(matches!(
        one_shot(OPENSSL_NOSNI, MAX),
        Answer::Complete(None, _)
    ));
    assert!(
        matches!(one_shot(OPENSSL_TLS12, MAX), Answer::Complete(Some(s), _) if s == "Shop.Example.COM")
    );
}

#[test]
fn every_prefix_of_every_capture_is_incomplete_and_byte_at_a_time_agrees() {
    for capture in [CHROMIUM_PQ, CURL, OPENSSL_NOSNI, OPENSSL_TLS12, RUSTLS] {
        for end in 0..capture.len() {
            assert_eq!(
                one_shot(&capture[..end], MAX),
                Answer::Incomplete,
                "prefix {end}"
            );
        }
        assert_eq!(byte_at_a_time(capture, MAX), one_shot(capture, MAX));
    }
}

#[test]
fn a_hello_over_several_records_is_reassembled_at_any_split() {
    for capture in [CHROMIUM_PQ, CURL, OPENSSL_TLS12] {
        let whole = one_shot(capture, MAX);
        for size in [1, 2, 3, 4, 5, 100, 1400, 1500] {
            let framed = reframe(capture, size);
            assert_eq!(one_shot(&framed, MAX * 8), whole, "records of {size}");
            assert_eq!(
                byte_at_a_time(&framed, MAX * 8),
                whole,
                "records of {size}, byte at a time"
            );
        }
    }
}

#[test]
fn the_limit_counts_record_headers_and_rejects_as_soon_as_it_is_known() {
    let framed = reframe(CHROMIUM_PQ, 100); // 1919 payload bytes in 20 records
    assert_eq!(one_shot(&framed, framed.len()), one_shot(CHROMIUM_PQ, MAX));
    assert_eq!(
        one_shot(&framed, framed.len() - 1),
        Answer::Reject(Reason::TooLarge)
    );
    assert_eq!(
        one_shot(CHROMIUM_PQ, CHROMIUM_PQ.len() - 1),
        Answer::Reject(Reason::TooLarge)
    );
    // The handshake header alone proves a 1.9 KB hello cannot fit in 1 KB.
    assert_eq!(
        one_shot(&CHROMIUM_PQ[..9], 1024),
        Answer::Reject(Reason::TooLarge)
    );
}

#[test]
fn a_record_or_message_claiming_huge_lengths_is_refused_on_its_header() {
    // Handshake length 2^24 - 1: refused after nine bytes.
    assert_eq!(
        one_shot(&[22, 3, 1, 0x40, 0, 1, 0xff, 0xff, 0xff], MAX),
        Answer::Reject(Reason::TooLarge)
    );
    // A record over 2^14 bytes is not valid plaintext.
    assert_eq!(
        one_shot(&[22, 3, 1, 0x40, 1], MAX),
        Answer::Reject(Reason::Malformed)
    );
    assert_eq!(
        one_shot(&[22, 3, 1, 0, 0], MAX),
        Answer::Reject(Reason::Malformed)
    );
}

#[test]
fn other_protocols_are_not_tls_on_their_first_bytes() {
    for banner in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"EHLO mail.example.com\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c",
        &[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5],
        &[22, 2, 0],
        &[22, 3, 9],
    ] {
        assert_eq!(
            one_shot(banner, MAX),
            Answer::Reject(Reason::NotTls),
            "{banner:?}"
        );
    }
}

#[test]
fn sslv2_server_hello_and_interleaved_records_are_refused() {
    assert_eq!(
        one_shot(&[0x80, 0x2e, 0x01, 0x00, 0x02], MAX),
        Answer::Reject(Reason::Sslv2)
    );
    assert_eq!(one_shot(&[0x80, 0x2e], MAX), Answer::Incomplete);
    assert_eq!(
        one_shot(&[22, 3, 3, 0, 4, 2, 0, 0, 0], MAX),
        Answer::Reject(Reason::NotClientHello)
    );
    let mut framed = reframe(CURL, 100);
    framed[105] = 21; // second record turned into an alert
    assert_eq!(one_shot(&framed, MAX), Answer::Reject(Reason::Malformed));
}

#[test]
fn sni_rules() {
    let name = |n: &[u8]| one_shot(&hello_with(&[sni_ext(&[(0, n)])]), MAX);
    assert_eq!(name(b"a.example.com"), complete(Some("a.example.com")));
    assert_eq!(
        name(b"under_score.example"),
        complete(Some("under_score.example"))
    );
    let long = vec![b'a'; 255];
    assert_eq!(
        name(&long),
        complete(Some(std::str::from_utf8(&long).unwrap()))
    );
    assert_eq!(name(&[b'a'; 256]), Answer::Reject(Reason::InvalidSni));
    for bad in [
        &b""[..],
        b"a\0b.example",
        b"a b.example",
        "é.example".as_bytes(),
        b"a\xffb",
    ] {
        assert_eq!(name(bad), Answer::Reject(Reason::InvalidSni), "{bad:?}");
    }
    let two = hello_with(&[sni_ext(&[(0, b"a.example"), (0, b"b.example")])]);
    assert_eq!(one_shot(&two, MAX), Answer::Reject(Reason::InvalidSni));
    let other_type_only = hello_with(&[sni_ext(&[(1, b"a.example")])]);
    assert_eq!(
        one_shot(&other_type_only, MAX),
        Answer::Reject(Reason::InvalidSni)
    );
    let empty_ext = hello_with(&[(0, Vec::new())]);
    assert_eq!(
        one_shot(&empty_ext, MAX),
        Answer::Reject(Reason::InvalidSni)
    );
    let empty_list = hello_with(&[(0, vec![0, 0])]);
    assert_eq!(
        one_shot(&empty_list, MAX),
        Answer::Reject(Reason::InvalidSni)
    );
    let duplicate = hello_with(&[sni_ext(&[(0, b"a.example")]), sni_ext(&[(0, b"a.example")])]);
    assert_eq!(one_shot(&duplicate, MAX), Answer::Reject(Reason::Malformed));
}

#[test]
fn padding_and_bad_lengths() {
    let padded = hello_with(&[sni_ext(&[(0, b"a.example")]), (21, vec![0; 16 * 1024])]);
    assert_eq!(one_shot(&padded, MAX), Answer::Reject(Reason::TooLarge));
    assert_eq!(one_shot(&padded, 2 * MAX), complete(Some("a.example")));
    assert_eq!(
        byte_at_a_time(&padded, 2 * MAX),
        complete(Some("a.example"))
    );
    // An extension list longer than the message.
    let mut bad = hello_with(&[sni_ext(&[(0, b"a.example")])]);
    let ext_len_at = 5 + 4 + 2 + 32 + 1 + 4 + 2;
    bad[ext_len_at] = 0xff;
    assert_eq!(one_shot(&bad, MAX), Answer::Reject(Reason::Malformed));
    // A message too short to hold a hello.
    assert_eq!(
        one_shot(&[22, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3], MAX),
        Answer::Reject(Reason::Malformed)
    );
    let alpn_empty_name = hello_with(&[(16, vec![0, 1, 0])]);
    assert_eq!(
        one_shot(&alpn_empty_name, MAX),
        Answer::Reject(Reason::Malformed)
    );
}

#[test]
fn a_verdict_sticks() {
    let mut p = Peeker::new(MAX);
    assert_eq!(answer(p.feed(b"G")), Answer::Reject(Reason::NotTls));
    assert_eq!(answer(p.feed(CURL)), Answer::Reject(Reason::NotTls));
}
