//! The ClientHello parser on attacker bytes: never panics, and the answer
//! after feeding the bytes in chunks equals the one-shot answer (the first
//! byte of the input picks the chunk sizes; the rest is the stream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_peek::{Peek, Peeker};

#[derive(Debug, PartialEq)]
enum Answer {
    Incomplete,
    Complete(Option<String>, Vec<Vec<u8>>),
    Reject(tls_peek::Reason),
}

fn answer(p: Peek<'_>) -> Answer {
    match p {
        Peek::Incomplete { .. } => Answer::Incomplete,
        Peek::Complete(h) => Answer::Complete(
            h.sni().map(String::from),
            h.alpn().map(<[u8]>::to_vec).collect(),
        ),
        Peek::Reject(r) => Answer::Reject(r),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pattern, bytes)) = data.split_first() else {
        return;
    };
    let max = if pattern & 0x80 != 0 { 16_384 } else { 1 << 20 };
    let whole = answer(Peeker::new(max).feed(bytes));
    let mut p = Peeker::new(max);
    let mut end = 0;
    let mut step = 0usize;
    let mut last = Answer::Incomplete;
    while end < bytes.len() {
        step += 1;
        end = (end + 1 + (usize::from(pattern & 0x7f) * step) % 97).min(bytes.len());
        last = answer(p.feed(&bytes[..end]));
        if last != Answer::Incomplete {
            break;
        }
    }
    if bytes.is_empty() {
        last = answer(p.feed(bytes));
    }
    // A verdict reached early must be the verdict on the whole input.
    assert_eq!(last, whole, "chunked answer differs from one-shot");
});
