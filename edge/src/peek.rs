//! The I/O around the sans-IO ClientHello parser: one small loop under one
//! deadline that reads until `tls_peek` has an answer and returns the SNI
//! and every byte read, which are replayed to the backend first.
//!
//! The buffer starts at [`INITIAL_PEEK_BYTES`] and doubles only for larger
//! hellos, never beyond `max_client_hello_bytes`: a stalled or hostile
//! client costs at most that, and a typical one a single small allocation.

use std::time::Duration;

use tls_peek::{Peek, Peeker};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::reject::Reject;

/// Holds a classic hello (250-600 B) and a post-quantum one (1.5-2.1 KB)
/// in one allocation; larger hellos grow the buffer by doubling.
pub const INITIAL_PEEK_BYTES: usize = 2048;

/// A complete ClientHello and what the edge needs from it.
#[derive(Debug)]
pub struct Peeked {
    /// Every byte read from the client so far, to replay to the backend.
    pub bytes: Vec<u8>,
    /// The server name exactly as the client sent it.
    pub sni: Option<Box<str>>,
    /// The first ALPN protocol offered, as a metric label.
    pub alpn: &'static str,
    /// Time from the start of the peek to a complete hello.
    pub elapsed: Duration,
}

/// Reads from `stream` until a ClientHello is complete, rejected, or the
/// deadline passes.
pub async fn client_hello(
    stream: &mut TcpStream,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Peeked, Reject> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut peeker = Peeker::new(max_bytes);
    let mut bytes: Vec<u8> = Vec::with_capacity(INITIAL_PEEK_BYTES.min(max_bytes));
    loop {
        match peeker.feed(&bytes) {
            Peek::Complete(hello) => {
                let sni = hello.sni().map(Box::from);
                let alpn = alpn_label(hello.alpn().next());
                return Ok(Peeked {
                    bytes,
                    sni,
                    alpn,
                    elapsed: started.elapsed(),
                });
            }
            Peek::Reject(reason) => return Err(Reject::Hello(reason)),
            Peek::Incomplete { .. } => {}
        }
        if bytes.len() == bytes.capacity() {
            let grow = bytes
                .len()
                .max(INITIAL_PEEK_BYTES)
                .min(max_bytes - bytes.len());
            bytes.reserve_exact(grow);
        }
        let filled = bytes.len();
        let room = bytes.capacity().min(max_bytes).saturating_sub(filled);
        if room == 0 {
            // The parser rejects at the cap; this keeps the loop finite even
            // if it did not.
            return Err(Reject::Hello(tls_peek::Reason::TooLarge));
        }
        bytes.resize(filled + room, 0);
        let read = tokio::time::timeout_at(deadline, stream.read(&mut bytes[filled..])).await;
        let n = match read {
            Err(_) => return Err(Reject::HelloTimeout),
            Ok(Err(_)) | Ok(Ok(0)) => return Err(Reject::ClientClosed),
            Ok(Ok(n)) => n,
        };
        bytes.truncate(filled + n);
    }
}

/// `h2`, `http_1_1`, `other` or `none`: a bounded label set.
fn alpn_label(first: Option<&[u8]>) -> &'static str {
    match first {
        None => "none",
        Some(b"h2") => "h2",
        Some(b"http/1.1") => "http_1_1",
        Some(_) => "other",
    }
}
