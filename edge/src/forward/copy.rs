//! The portable way to move bytes: `read(2)` into a buffer, `write(2)` out.
//!
//! Every direction starts here: for the few small chunks of a short
//! request/response exchange a read/write pair is cheaper than two splices
//! through a pipe. Buffers come from a per-thread pool and are held only
//! while bytes are in flight, so an idle tunnel holds none and a busy one
//! allocates nothing per read.
//!
//! When the peer's FIN has already arrived (the readiness says
//! read-closed) and a read drained the socket, the end of the stream is
//! known before the bytes are written: they go out with `MSG_MORE` and the
//! half-close that follows at once carries them, one segment where there
//! would be two (data, then FIN). That is the common end of a short
//! connection: a backend answers and closes.

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes moved per read: one TLS record plus headroom, so a full record
/// moves in one read/write pair. Held only while bytes are in flight.
pub(crate) const BUFFER_BYTES: usize = 16 * 1024 + 512;

/// What one chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// `n` bytes moved; `full` if the read filled the buffer (more is
    /// likely waiting: a bulk transfer).
    Moved { n: usize, full: bool },
    /// The socket had nothing after all (a spurious wake-up).
    Nothing,
    /// `from` sent EOF; nothing was pending.
    Eof,
    /// `n` bytes were queued with `MSG_MORE` and `from` sent EOF: the
    /// caller must half-close `to` now, which sends them with the FIN.
    LastQueued { n: usize },
}

/// Moves what `from` has now to `to` (the caller saw `from` readable,
/// read-closed if `read_closed`) and says what it moved.
pub(crate) async fn chunk(
    from: &TcpStream,
    to: &TcpStream,
    read_closed: bool,
) -> io::Result<Chunk> {
    let mut buf = pool::take();
    let mut n = match from.try_read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pool::give(buf);
            return Ok(Chunk::Nothing);
        }
        Err(e) => return Err(e),
    };
    if n == 0 {
        pool::give(buf);
        return Ok(Chunk::Eof);
    }
    if read_closed && n < buf.len() {
        // The read the next round would make, made now: 0 confirms EOF.
        match from.try_read(&mut buf[n..]) {
            Ok(0) => {
                // Queued, not sent, until the half-close.
                let queued = send_all(to, &buf[..n], libc::MSG_MORE).await;
                pool::give(buf);
                queued?;
                return Ok(Chunk::LastQueued { n });
            }
            Ok(more) => n += more,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let written = write_all(to, &buf[..n]).await;
    let full = n == buf.len();
    pool::give(buf);
    written?;
    Ok(Chunk::Moved { n, full })
}

/// Writes all of `bytes` to `to`, waiting for room as needed.
pub(crate) async fn write_all(to: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    send_all(to, bytes, 0).await
}

/// `send(2)`s all of `bytes` with `flags` (and `MSG_NOSIGNAL`), waiting
/// for room as needed.
async fn send_all(to: &TcpStream, mut bytes: &[u8], flags: i32) -> io::Result<()> {
    let sock = socket2::SockRef::from(to);
    while !bytes.is_empty() {
        let sent = to.try_io(Interest::WRITABLE, || {
            sock.send_with_flags(bytes, flags | libc::MSG_NOSIGNAL)
        });
        match sent {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copy buffers, pooled per worker thread. A task may take a buffer on one
/// thread and give it back on another; pools stay bounded either way.
mod pool {
    use std::cell::RefCell;

    use super::BUFFER_BYTES;

    /// Buffers kept per thread for reuse; more are freed.
    const KEEP: usize = 64;

    thread_local! {
        static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> Box<[u8]> {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_BYTES].into_boxed_slice())
    }

    pub(super) fn give(buf: Box<[u8]>) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(buf);
            }
        });
    }
}
