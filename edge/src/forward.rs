//! Moving bytes both ways through an established tunnel.
//!
//! Each direction is a read/write loop over one fixed buffer allocated when
//! the tunnel is set up (no allocation per read). EOF from one side is
//! passed on as a half-close (`shutdown(SHUT_WR)`) and the other direction
//! keeps running; the tunnel ends when both directions have ended, when one
//! side fails (reset), when neither side has sent a byte for
//! `idle_timeout`, or when the tunnel's route is withdrawn.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes moved per read: one TLS record plus headroom, so a full record
/// moves in one read/write pair; 2 x 16 KiB per tunnel.
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
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let upstream = pump(
        &mut client_read,
        &mut backend_write,
        &counters.to_backend,
        &last_activity,
    );
    let downstream = pump(
        &mut backend_read,
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
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    counter: &IntCounter,
    last_activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_BYTES].into_boxed_slice();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close; the peer may already be gone, which is fine.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        counter.inc_by(n as u64);
        last_activity.touch();
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
