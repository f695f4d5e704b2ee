//! Moving bytes both ways through an established tunnel.
//!
//! Each direction waits for its socket to be readable and only then takes a
//! buffer from a per-thread pool, reads, writes everything out, and gives
//! the buffer back: an idle tunnel holds no user-space buffer (thousands of
//! idle tunnels cost kernel socket memory only), and a busy one reuses
//! pooled buffers, so there is no allocation per read. EOF from one side is
//! passed on as a half-close (`shutdown(SHUT_WR)`) and the other direction
//! keeps running; the tunnel ends when both directions have ended, when one
//! side fails (reset), when neither side has sent a byte for
//! `idle_timeout`, or when the tunnel's route is withdrawn.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes moved per read: one TLS record plus headroom, so a full record
/// moves in one read/write pair. Held only while bytes are in flight.
pub const BUFFER_BYTES: usize = 16 * 1024 + 512;

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
}

/// Runs the tunnel until it ends. `withdrawn` resolves when the route is
/// gone for good.
pub async fn tunnel(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle_timeout: Duration,
    counters: &ByteCounters,
    withdrawn: impl std::future::Future<Output = ()>,
) -> Ended {
    let last_activity = Activity::new();
    let (client_read, mut client_write) = client.split();
    let (backend_read, mut backend_write) = backend.split();
    let upstream = pump(
        &client_read,
        &mut backend_write,
        &counters.to_backend,
        &last_activity,
    );
    let downstream = pump(
        &backend_read,
        &mut client_write,
        &counters.to_client,
        &last_activity,
    );
    let both = async { tokio::try_join!(upstream, downstream) };
    tokio::select! {
        result = both => match result {
            Ok(_) => Ended::Done,
            Err(_) => Ended::Error,
        },
        () = idle(&last_activity, idle_timeout) => Ended::IdleTimeout,
        () = withdrawn => Ended::RouteDeleted,
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`.
async fn pump(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    counter: &IntCounter,
    last_activity: &Activity,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = pool::take();
        let n = match from.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pool::give(buf);
                continue; // a spurious wake-up
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            pool::give(buf);
            // Half-close; the peer may already be gone, which is fine.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let written = to.write_all(&buf[..n]).await;
        pool::give(buf);
        written?;
        counter.inc_by(n as u64);
        last_activity.touch();
    }
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
