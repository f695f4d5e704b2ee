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
//! descriptors or pipe memory exhausted) [`Pump::step`] says so and the
//! caller copies that chunk through user space instead.
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
use tokio::net::TcpStream;

/// Bytes one pipe holds: `fs.pipe-max-size`'s default, the most an
/// unprivileged process may ask for. Against the default 64 KiB it cuts
/// the system calls per byte by up to 16 and lets a slow receiver's
/// backlog sit in the pipe while the sender keeps going. Where
/// `F_SETPIPE_SZ` is refused (`fs.pipe-user-pages-soft` reached) the pipe
/// keeps its default size and still works.
const PIPE_BYTES: usize = 1024 * 1024;

/// Pipes alive at once (pooled ones included), process-wide.
pub(crate) const MAX_PIPES: usize = 1024;

static LIVE_PIPES: AtomicUsize = AtomicUsize::new(0);

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// What one [`Pump::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// `n` bytes went from the pipe into `to`.
    Moved(usize),
    /// `from` has nothing for now and the pipe is empty (back in the pool).
    Dry,
    /// `from` sent EOF and the pipe is empty: nothing more will move.
    Eof,
    /// `from` has bytes but no pipe can be had: the caller copies this
    /// chunk instead.
    NoPipe,
}

/// One direction's splicing, `from` into `to`: the pipe it holds while
/// bytes sit in it, and how far the stream has got.
#[derive(Debug)]
pub(crate) struct Pump<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet taken by `to`.
    held: usize,
    /// `from` sent EOF.
    eof: bool,
    /// `from` had nothing at the last read.
    dry: bool,
}

impl<'a> Pump<'a> {
    pub(crate) fn new(from: &'a TcpStream, to: &'a TcpStream) -> Pump<'a> {
        Pump {
            from,
            to,
            pipe: None,
            held: 0,
            eof: false,
            dry: false,
        }
    }

    /// True while the pump holds a pipe (bytes in flight): the caller
    /// waits for `from` to be readable only when it does not.
    pub(crate) fn holds_pipe(&self) -> bool {
        self.pipe.is_some()
    }

    /// Moves bytes; returns at every write into `to`, so the caller counts
    /// bytes as they go. Without a pipe (idle) the caller has seen `from`
    /// readable: a pipe is taken only once there is something to move.
    /// Reading and writing overlap: while `to` has no room, `from` keeps
    /// filling the pipe, so one slow side does not stall the other for a
    /// round trip.
    pub(crate) async fn step(&mut self) -> io::Result<Step> {
        if self.eof && self.pipe.is_none() {
            return Ok(Step::Eof);
        }
        let pipe = match self.pipe.take() {
            Some(pipe) => pipe,
            None => match pool::take() {
                Ok(pipe) => {
                    self.dry = false;
                    pipe
                }
                Err(_) => return Ok(Step::NoPipe),
            },
        };
        // An error drops the pipe with the pump: bytes still in it are lost
        // with the tunnel, and it is closed, never pooled.
        let step = self.move_through(&pipe).await?;
        if self.held == 0 && (self.eof || self.dry) {
            pool::give(pipe);
        } else {
            self.pipe = Some(pipe);
        }
        Ok(step)
    }

    async fn move_through(&mut self, pipe: &Pipe) -> io::Result<Step> {
        let (from, to) = (self.from, self.to);
        loop {
            if !self.eof && !self.dry && self.held < PIPE_BYTES {
                let read = from.try_io(Interest::READABLE, || {
                    splice(from, None, &pipe.write, None, PIPE_BYTES - self.held, FLAGS)
                        .map_err(io::Error::from)
                });
                match read {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.held += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.dry = true,
                    Err(e) => return Err(e),
                }
            }
            if self.held > 0 {
                let wrote = to.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to, None, self.held, FLAGS).map_err(io::Error::from)
                });
                match wrote {
                    Ok(m) if m > 0 => {
                        self.held -= m;
                        return Ok(Step::Moved(m));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if self.held == 0 && self.eof {
                return Ok(Step::Eof);
            }
            if self.held == 0 && self.dry {
                return Ok(Step::Dry);
            }
            let can_read = !self.eof && self.held < PIPE_BYTES;
            tokio::select! {
                r = to.writable(), if self.held > 0 => r?,
                r = from.readable(), if can_read => {
                    r?;
                    self.dry = false;
                }
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
    pub(super) const KEEP: usize = 16;

    thread_local! {
        static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> io::Result<Pipe> {
        match FREE.with(|f| f.borrow_mut().pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to the pool.
    pub(super) fn give(pipe: Pipe) {
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
                &mut crate::shared::Withdrawals::default().subscribe(&"t".into()),
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
