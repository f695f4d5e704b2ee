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
//!
//! The two ways only move bytes and say how many; [`Direction`] alone
//! counts them, notes activity and passes EOF on.

pub(crate) mod copy;
pub(crate) mod splice;

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::shared::Withdrawal;
pub(crate) use copy::write_all;
use copy::Chunk;
use splice::{Pump, Step};

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
pub(crate) enum Ended {
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
    pub(crate) const fn as_str(self) -> &'static str {
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
pub(crate) struct ByteCounters {
    pub to_backend: IntCounter,
    pub to_client: IntCounter,
    /// Both directions' bytes that went through a pipe.
    pub spliced: IntCounter,
}

/// Runs the tunnel until it ends, or until `withdrawn` says its route is
/// gone for good.
pub(crate) async fn tunnel(
    client: &TcpStream,
    backend: &TcpStream,
    mode: Mode,
    idle_timeout: Duration,
    counters: &ByteCounters,
    withdrawn: &mut Withdrawal,
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
        () = withdrawn.wait() => Ended::RouteDeleted,
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
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    counter: &'a IntCounter,
    spliced: &'a IntCounter,
    state: &'a TunnelState,
}

impl Direction<'_> {
    /// Moves bytes until `from` sends EOF: copies at first and, in splice
    /// mode, splices for good once a read fills the copy buffer.
    ///
    /// Each chunk's future is boxed: it lives only while bytes move, so an
    /// idle tunnel's task is sized by the wait for readiness, not by the
    /// largest chunk state (one small allocation per chunk against the
    /// two system calls each costs anyway).
    async fn run(&self, mode: Mode) -> io::Result<()> {
        let mut pump: Option<Pump<'_>> = None;
        loop {
            let chunk = match pump.as_mut() {
                Some(pump) => {
                    let read_closed = if pump.holds_pipe() {
                        false
                    } else {
                        self.readable().await?
                    };
                    match Box::pin(pump.step()).await? {
                        Step::Moved(n) => {
                            self.moved(n, true);
                            continue;
                        }
                        Step::Dry => continue,
                        Step::Eof => {
                            self.finish(false);
                            return Ok(());
                        }
                        Step::NoPipe => {
                            Box::pin(copy::chunk(self.from, self.to, read_closed)).await?
                        }
                    }
                }
                None => {
                    let read_closed = self.readable().await?;
                    Box::pin(copy::chunk(self.from, self.to, read_closed)).await?
                }
            };
            match chunk {
                Chunk::Moved { n, full } => {
                    self.moved(n, false);
                    if full && mode == Mode::Splice && pump.is_none() {
                        pump = Some(Pump::new(self.from, self.to));
                    }
                }
                Chunk::Nothing => {}
                Chunk::Eof => {
                    self.finish(false);
                    return Ok(());
                }
                Chunk::LastQueued { n } => {
                    self.moved(n, false);
                    self.finish(true);
                    return Ok(());
                }
            }
        }
    }

    /// Waits until `from` is readable; true if its peer's FIN has arrived.
    ///
    /// The wait is `poll_read_ready`, which keeps the waker in the socket's
    /// own slot (each socket has one reader: this direction), so an idle
    /// direction's future holds two references instead of tokio's 136-byte
    /// readiness future. The read-closed bit is then read from a `ready`
    /// future polled once, on the stack, which completes at once because
    /// the socket is readable.
    async fn readable(&self) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.from.poll_read_ready(cx)).await?;
        let ready = std::pin::pin!(self.from.ready(Interest::READABLE));
        let mut cx = Context::from_waker(Waker::noop());
        match ready.poll(&mut cx) {
            Poll::Ready(ready) => Ok(ready?.is_read_closed()),
            // Readable a moment ago; the read that follows will say.
            Poll::Pending => Ok(false),
        }
    }

    /// `n` bytes moved (through a pipe if `spliced`): count them and note
    /// the activity.
    fn moved(&self, n: usize, spliced: bool) {
        self.counter.inc_by(n as u64);
        if spliced {
            self.spliced.inc_by(n as u64);
        }
        self.state.activity.touch();
    }

    /// `from` sent EOF: pass it on as a half-close. The direction that
    /// finishes second skips it (unless bytes are queued behind `MSG_MORE`,
    /// `flush`): both sockets are closed right after, and `close(2)` sends
    /// the same FIN without a system call of its own.
    fn finish(&self, flush: bool) {
        if self.state.one_done.swap(true, Ordering::AcqRel) && !flush {
            return;
        }
        // The peer may already be gone, which is fine.
        let _ = socket2::SockRef::from(self.to).shutdown(Shutdown::Write);
    }
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

/// Resolves once nothing has moved for `timeout`. One timer, re-armed in
/// place (`Sleep::reset`) when bytes moved meanwhile.
async fn idle(last_activity: &Activity, timeout: Duration) {
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(last_activity.last() + timeout));
    loop {
        sleep.as_mut().await;
        let deadline = last_activity.last() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        sleep.as_mut().reset(deadline);
    }
}
