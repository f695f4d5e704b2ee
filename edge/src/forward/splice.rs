//! Zero-copy forwarding on Linux: `splice(2)` from the socket into a pipe,
//! then from the pipe into the other socket.
//!
//! The kernel moves page references, not bytes, so the proxy never copies
//! what it forwards. `SPLICE_F_MORE` is never passed: it would hold back a
//! partial segment the way `TCP_CORK` does and add latency to interactive
//! protocols.
//!
//! Pipes come from a per-thread pool and are held only while bytes sit in
//! them (from the read until the other socket has taken them all), so an
//! idle tunnel holds no pipe and no descriptors beyond its two sockets. A
//! pipe that still holds bytes when its tunnel fails is closed, never
//! pooled. When no pipe can be had (more than [`MAX_PIPES`] alive, or
//! descriptors or pipe memory exhausted) the chunk is copied through user
//! space instead ([`super::copy`]).
//!
//! Memory: a pipe pins the pages it holds, outside the kernel's TCP memory
//! accounting, so the pipes alive at once are capped: at most
//! `MAX_PIPES * PIPE_BYTES` (1 GiB) of in-flight bytes, however many
//! tunnels are busy.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;

use super::copy;
use super::Direction;

/// Bytes one pipe holds: `fs.pipe-max-size`'s default, the most an
/// unprivileged process may ask for. Against the default 64 KiB it cuts
/// the system calls per byte by up to 16 and lets a slow receiver's
/// backlog sit in the pipe while the sender keeps going. Where
/// `F_SETPIPE_SZ` is refused (`fs.pipe-user-pages-soft` reached) the pipe
/// keeps its default size and still works.
const PIPE_BYTES: usize = 1024 * 1024;

/// Pipes alive at once (pooled ones included), process-wide.
pub const MAX_PIPES: usize = 1024;

static LIVE_PIPES: AtomicUsize = AtomicUsize::new(0);

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Splices until `from` sends EOF, then half-closes `to`.
pub(crate) async fn pump(dir: &Direction<'_>) -> io::Result<()> {
    loop {
        let ready = dir.from.ready(Interest::READABLE).await?;
        let ended = match pool::take() {
            Ok(pipe) => {
                let ended = !chunk(dir, pipe).await?;
                if ended {
                    dir.finish(false);
                }
                ended
            }
            Err(_) => dir.ended_after(copy::chunk(dir, ready.is_read_closed()).await?),
        };
        if ended {
            return Ok(());
        }
    }
}

/// Moves bytes through `pipe` until `from` has nothing more for now and
/// the pipe is empty again (`Ok(true)`), or `from` sent EOF and the pipe is
/// empty (`Ok(false)`). Reading and writing overlap: while `to` has no
/// room, `from` keeps filling the pipe, so one slow side does not stall
/// the other for a whole round trip.
async fn chunk(dir: &Direction<'_>, pipe: Pipe) -> io::Result<bool> {
    let mut held = 0usize;
    let mut eof = false;
    let mut dry = false;
    loop {
        if !eof && !dry && held < PIPE_BYTES {
            let read = dir.from.try_io(Interest::READABLE, || {
                splice(dir.from, None, &pipe.write, None, PIPE_BYTES - held, FLAGS)
                    .map_err(io::Error::from)
            });
            match read {
                Ok(0) => eof = true,
                Ok(n) => held += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dry = true,
                // Bytes still in the pipe are lost with the tunnel: the
                // pipe is closed here, never pooled.
                Err(e) => return Err(e),
            }
        }
        if held > 0 {
            let wrote = dir.to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dir.to, None, held, FLAGS).map_err(io::Error::from)
            });
            match wrote {
                Ok(m) => {
                    held -= m;
                    dir.spliced(m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if held == 0 && (eof || dry) {
            pool::give(pipe);
            return Ok(!eof);
        }
        let can_read = !eof && held < PIPE_BYTES;
        tokio::select! {
            r = dir.to.writable(), if held > 0 => r?,
            r = dir.from.readable(), if can_read => {
                r?;
                dry = false;
            }
        }
    }
}

/// Both ends of one non-blocking pipe.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        if LIVE_PIPES.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            LIVE_PIPES.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("MAX_PIPES pipes alive"));
        }
        let (read, write) = match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
            Ok(ends) => ends,
            Err(e) => {
                LIVE_PIPES.fetch_sub(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let _ = rustix::pipe::fcntl_setpipe_size(&write, PIPE_BYTES);
        Ok(Pipe { read, write })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        LIVE_PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Empty pipes, pooled per worker thread. Bounded: a burst of busy
/// tunnels makes more, and those beyond [`pool::KEEP`] are closed.
mod pool {
    use std::cell::RefCell;
    use std::io;

    use super::Pipe;

    /// Empty pipes kept per thread (two descriptors each).
    pub const KEEP: usize = 16;

    thread_local! {
        static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> io::Result<Pipe> {
        match FREE.with(|f| f.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to the pool.
    pub fn give(pipe: Pipe) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < KEEP {
                f.push(pipe);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus::IntCounter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::Pipe;
    use crate::forward::{tunnel, ByteCounters, Ended, Mode};

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("[::1]:0").await.unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    /// 8 MiB through a splice-mode tunnel: with every pipe taken (the cap
    /// or the descriptor limit, whichever comes first) each chunk is
    /// copied and the bytes still arrive intact; with pipes to be had they
    /// are spliced.
    #[tokio::test]
    async fn copies_when_no_pipe_can_be_had_and_splices_otherwise() {
        if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
        let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        for pipes_available in [false, true] {
            let (client_far, client) = pair().await;
            let (backend, backend_far) = pair().await;
            let held: Vec<Pipe> = if pipes_available {
                Vec::new()
            } else {
                std::iter::from_fn(|| Pipe::new().ok()).collect()
            };
            assert_eq!(Pipe::new().is_ok(), pipes_available);
            let counters = ByteCounters {
                to_backend: IntCounter::new("up", "up").unwrap(),
                to_client: IntCounter::new("down", "down").unwrap(),
                spliced: IntCounter::new("spliced", "spliced").unwrap(),
            };
            let (mut client_far, mut backend_far) = (client_far, backend_far);
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                client_far.write_all(&sent).await.unwrap();
                client_far.shutdown().await.unwrap();
                client_far
            });
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                backend_far.read_to_end(&mut got).await.unwrap();
                backend_far.shutdown().await.unwrap();
                got
            });
            let ended = tunnel(
                &client,
                &backend,
                Mode::Splice,
                Duration::from_secs(30),
                &counters,
                std::future::pending::<()>(),
            )
            .await;
            let got = reader.await.unwrap();
            drop(writer.await.unwrap());
            drop(held);
            assert_eq!(ended, Ended::Done);
            assert!(
                got == payload,
                "bytes arrived changed ({} bytes)",
                got.len()
            );
            assert_eq!(counters.to_backend.get(), payload.len() as u64);
            let spliced = counters.spliced.get();
            if pipes_available {
                assert!(spliced > 0, "nothing spliced with pipes to be had");
            } else {
                assert_eq!(spliced, 0, "spliced without a pipe");
            }
        }
    }
}
