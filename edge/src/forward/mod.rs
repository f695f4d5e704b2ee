//! Moving bytes both ways through an established tunnel.
//!
//! Two ways to move them:
//! - [`copy`]: `read(2)` into a pooled buffer and `write(2)` out. Every
//!   direction starts with it: a short exchange (a request, an answer, a
//!   close) costs fewer system calls and kernel work this way than through
//!   a pipe. With `[forwarding] splice = false` it is the only way.
//! - [`splice`] (Linux, on by default): once a read fills the copy buffer
//!   (a bulk transfer), the direction switches for good to `splice(2)`
//!   from the socket into a pipe and from the pipe into the other socket.
//!   The bytes never enter user space; the kernel passes page references
//!   along, so a busy tunnel costs two system calls per chunk and no copy.
//!   A chunk falls back to the copy when no pipe can be had (descriptors
//!   exhausted).
//!
//! Either way a direction waits for its socket to be readable and only then
//! takes a pipe or buffer from a per-thread pool, moves what is there, and
//! gives it back once it is empty: an idle tunnel holds no user-space
//! buffer and no pipe. EOF from one side is passed on as a half-close
//! (`shutdown(SHUT_WR)`) and the other direction keeps running; the tunnel
//! ends when both directions have ended, when one side fails (reset), when
//! neither side has sent a byte for `idle_timeout`, or when the tunnel's
//! route is withdrawn.

pub mod copy;
pub mod splice;

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use copy::Chunk;

/// How established tunnels move bytes (`[forwarding]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `splice(2)` through a pooled pipe, falling back to [`Mode::Copy`]
    /// for a chunk when no pipe can be made.
    Splice,
    /// Read into a pooled user-space buffer, write it out.
    Copy,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their write side.
    Done,
    /// A read or write failed (usually a reset).
    Error,
    /// Nothing moved for `idle_timeout`.
    IdleTimeout,
    /// The route was deleted and its grace period ran out.
    RouteDeleted,
}

impl Ended {
    pub const fn as_str(self) -> &'static str {
        match self {
            Ended::Done => "done",
            Ended::Error => "error",
            Ended::IdleTimeout => "idle_timeout",
            Ended::RouteDeleted => "route_deleted",
        }
    }
}

/// Counters the tunnel adds its bytes to.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    pub to_backend: IntCounter,
    pub to_client: IntCounter,
    /// Both directions' bytes that went through a pipe.
    pub spliced: IntCounter,
}

/// Runs the tunnel until it ends. `withdrawn` resolves when the route is
/// gone for good.
pub async fn tunnel(
    client: &TcpStream,
    backend: &TcpStream,
    mode: Mode,
    idle_timeout: Duration,
    counters: &ByteCounters,
    withdrawn: impl std::future::Future<Output = ()>,
) -> Ended {
    let shared = TunnelState::new();
    let upstream = Direction {
        from: client,
        to: backend,
        counter: &counters.to_backend,
        spliced: &counters.spliced,
        state: &shared,
    };
    let downstream = Direction {
        from: backend,
        to: client,
        counter: &counters.to_client,
        spliced: &counters.spliced,
        state: &shared,
    };
    let both = async { tokio::try_join!(upstream.run(mode), downstream.run(mode)) };
    tokio::select! {
        result = both => match result {
            Ok(_) => Ended::Done,
            Err(_) => Ended::Error,
        },
        () = idle(&shared.activity, idle_timeout) => Ended::IdleTimeout,
        () = withdrawn => Ended::RouteDeleted,
    }
}

/// State both directions of one tunnel share.
struct TunnelState {
    activity: Activity,
    /// Set by the first direction to reach EOF.
    one_done: AtomicBool,
}

impl TunnelState {
    fn new() -> TunnelState {
        TunnelState {
            activity: Activity::new(),
            one_done: AtomicBool::new(false),
        }
    }
}

/// One direction of a tunnel: `from`'s bytes go to `to`.
pub(crate) struct Direction<'a> {
    pub(crate) from: &'a TcpStream,
    pub(crate) to: &'a TcpStream,
    counter: &'a IntCounter,
    spliced: &'a IntCounter,
    state: &'a TunnelState,
}

impl Direction<'_> {
    /// Copies until EOF or, in splice mode, until a read fills the buffer
    /// and splicing takes over.
    async fn run(&self, mode: Mode) -> io::Result<()> {
        loop {
            let ready = self.from.ready(Interest::READABLE).await?;
            let chunk = copy::chunk(self, ready.is_read_closed()).await?;
            if self.ended_after(chunk) {
                return Ok(());
            }
            if chunk == (Chunk::Moved { full: true }) && mode == Mode::Splice {
                return splice::pump(self).await;
            }
        }
    }

    /// Passes EOF on if `chunk` met it; `true` once the direction is over.
    pub(crate) fn ended_after(&self, chunk: Chunk) -> bool {
        match chunk {
            Chunk::Moved { .. } | Chunk::Nothing => false,
            Chunk::Eof => {
                self.finish(false);
                true
            }
            Chunk::LastQueued => {
                self.finish(true);
                true
            }
        }
    }

    /// Bytes moved: count them and note the activity.
    pub(crate) fn moved(&self, n: usize) {
        self.counter.inc_by(n as u64);
        self.state.activity.touch();
    }

    /// Bytes moved through a pipe.
    pub(crate) fn spliced(&self, n: usize) {
        self.spliced.inc_by(n as u64);
        self.moved(n);
    }

    /// `from` sent EOF: pass it on as a half-close. The direction that
    /// finishes second skips it (unless bytes are queued behind `MSG_MORE`,
    /// `flush`): both sockets are closed right after, and `close(2)` sends
    /// the same FIN without a system call of its own.
    pub(crate) fn finish(&self, flush: bool) {
        if self.state.one_done.swap(true, Ordering::AcqRel) && !flush {
            return;
        }
        // The peer may already be gone, which is fine.
        let _ = socket2::SockRef::from(self.to).shutdown(Shutdown::Write);
    }
}

/// Writes all of `bytes` to `to`, waiting for room as needed.
pub(crate) async fn write_all(to: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    send_all(to, bytes, 0).await
}

/// `send(2)`s all of `bytes` with `flags` (and `MSG_NOSIGNAL`), waiting
/// for room as needed.
pub(crate) async fn send_all(to: &TcpStream, mut bytes: &[u8], flags: i32) -> io::Result<()> {
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

/// When bytes last moved, as milliseconds since the tunnel started (an
/// atomic, so the tunnel future stays `Send`).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Resolves once nothing has moved for `timeout`.
async fn idle(last_activity: &Activity, timeout: Duration) {
    loop {
        let deadline = last_activity.last() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}
