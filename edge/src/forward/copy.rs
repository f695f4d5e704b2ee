//! The portable way to move bytes: `read(2)` into a buffer, `write(2)` out.
//!
//! Buffers come from a per-thread pool and are held only while bytes are
//! in flight, so an idle tunnel holds none and a busy one allocates
//! nothing per read.

use std::io;

use super::{write_all, Direction};

/// Bytes moved per read: one TLS record plus headroom, so a full record
/// moves in one read/write pair. Held only while bytes are in flight.
pub const BUFFER_BYTES: usize = 16 * 1024 + 512;

/// Copies until `from` sends EOF, then half-closes `to`.
pub(crate) async fn pump(dir: &Direction<'_>) -> io::Result<()> {
    loop {
        dir.from.readable().await?;
        if !chunk(dir).await? {
            dir.finish();
            return Ok(());
        }
    }
}

/// Moves what `from` has now (the caller saw it readable). `Ok(false)` at
/// EOF. Also the splice path's fallback when it cannot get a pipe.
pub(crate) async fn chunk(dir: &Direction<'_>) -> io::Result<bool> {
    let mut buf = pool::take();
    let n = match dir.from.try_read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            pool::give(buf);
            return Ok(true); // a spurious wake-up
        }
        Err(e) => return Err(e),
    };
    if n == 0 {
        pool::give(buf);
        return Ok(false);
    }
    let written = write_all(dir.to, &buf[..n]).await;
    pool::give(buf);
    written?;
    dir.moved(n);
    Ok(true)
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

    pub fn take() -> Box<[u8]> {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_BYTES].into_boxed_slice())
    }

    pub fn give(buf: Box<[u8]>) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(buf);
            }
        });
    }
}
