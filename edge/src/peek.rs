//! The I/O around the sans-IO ClientHello parser: one small loop under one
//! deadline that reads until `tls_peek` has an answer and returns the SNI
//! and every byte read, which are replayed to the backend first.
//!
//! The first read is made at once, before any wait for readiness (the
//! hello is usually there already). Each read lands in a buffer on the stack of the poll (never held across
//! an await, so it does not grow the connection's task) and is appended to
//! a buffer sized to what has arrived: a stalled or slow client costs the
//! bytes it sent, not a preallocated maximum, and never more than
//! `max_client_hello_bytes`.

use std::io;
use std::time::Duration;

use tls_peek::{Peek, Peeker};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::reject::Reject;

/// Most bytes one read takes: a classic hello (250-600 B) and a
/// post-quantum one (1.5-2.1 KB) arrive in one read; larger ones take a
/// few.
const READ_CHUNK: usize = 4096;

/// A complete ClientHello and what the edge needs from it.
#[derive(Debug)]
pub(crate) struct Peeked {
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
pub(crate) async fn client_hello(
    stream: &mut TcpStream,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Peeked, Reject> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut peeker = Peeker::new(max_bytes);
    let mut bytes: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        if !first {
            match tokio::time::timeout_at(deadline, stream.readable()).await {
                Err(_) => return Err(Reject::HelloTimeout),
                Ok(Err(_)) => return Err(Reject::ClientClosed),
                Ok(Ok(())) => {}
            }
        }
        let room = max_bytes.saturating_sub(bytes.len()).min(READ_CHUNK);
        if room == 0 {
            // The parser rejects at the cap; this keeps the loop finite even
            // if it did not.
            return Err(Reject::Hello(tls_peek::Reason::TooLarge));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let read = if !first {
            stream.try_read(&mut chunk[..room])
        } else {
            // The first read is tried before any wait: the hello usually
            // arrives right behind the handshake's last ACK and is there
            // at accept, and tokio's readiness for a socket just
            // registered is still unknown, so `try_read` alone would not
            // even try. Nothing there: wait for readiness as usual.
            first = false;
            std::io::Read::read(&mut &*socket2::SockRef::from(&*stream), &mut chunk[..room])
        };
        match read {
            Ok(0) => return Err(Reject::ClientClosed),
            Ok(n) => {
                if bytes.is_empty() {
                    // Exact for the usual single read; amortised after.
                    bytes.reserve_exact(n);
                }
                bytes.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Reject::ClientClosed),
        }
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
