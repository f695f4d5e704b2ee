//! Public listeners: binding exactly the `(IP, port)` pairs the table needs
//! and the accept loop of each.
//!
//! Sockets are made with socket2: `IPV6_V6ONLY` on IPv6 (an IPv4 client is
//! only ever seen on the env's IPv4 listener), `IP_FREEBIND` so an address
//! that is not configured yet (a dedicated IPv4 being routed to the node)
//! can still be bound, and a configurable backlog. The accept loop survives
//! descriptor exhaustion without spinning: the pending connection stays in
//! the kernel's queue while the loop sleeps [`FD_EXHAUSTED_BACKOFF`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use route_model::RouteTable;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admission::Refused;
use crate::conn;
use crate::reject::Reject;
use crate::shared::Shared;

/// How long the accept loop pauses when the process (or system) is out of
/// file descriptors or socket memory: long enough not to spin a core,
/// short enough that connections resume promptly once fds are freed.
pub(crate) const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// The listening sockets of the live table, with their accept loops.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    running: Mutex<HashMap<SocketAddr, Running>>,
    /// A duplicate of each listening socket, for handing over to a new
    /// process at upgrade; closed with its listener.
    fds: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    /// Listening sockets received from the previous process, adopted
    /// instead of binding when the table needs their pair.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
}

/// One listener's accept loop.
#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    /// Whether connections on it are TLS (peeked for SNI), as the live
    /// table says; read once per connection instead of the table.
    tls: Arc<AtomicBool>,
}

/// A listening socket bound (or adopted) for a table not yet live.
#[derive(Debug)]
pub(crate) struct Pending {
    addr: SocketAddr,
    listener: TcpListener,
}

impl Listeners {
    /// Closes listeners whose pair is gone from `table` and binds the new
    /// ones; counts the pairs that could not be bound in `shared.unbound`.
    ///
    /// New and adopted sockets are bound and listening when this returns,
    /// but nothing accepts on them yet: the caller starts their accept
    /// loops ([`Listeners::start`]) once the table that needs them is
    /// live. Accepting earlier would route a connection by the previous
    /// table: after an upgrade, the empty table of a process that has not
    /// applied its first one, which closes the connection unanswered.
    /// (Until then connections wait in the listen backlog.)
    pub(crate) fn sync(&self, table: &RouteTable, shared: &Shared) -> Vec<Pending> {
        let wanted: HashSet<SocketAddr> = table.listeners().map(|(a, _)| *a).collect();
        let mut running = lock(&self.running);
        let mut fds = lock(&self.fds);
        running.retain(|addr, r| {
            let keep = wanted.contains(addr);
            if !keep {
                r.task.abort();
                fds.remove(addr);
                tracing::info!(%addr, "listener closed");
            }
            keep
        });
        let mut inherited = lock(&self.inherited);
        let mut unbound = 0;
        let mut pending = Vec::new();
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let (listener, how) = match inherited.remove(&addr) {
                Some(l) => (Ok(l), "listener adopted from the previous process"),
                None => (bind(addr, shared.limits.listen_backlog), "listener bound"),
            };
            let ready = listener.and_then(|l| {
                let l = prepare(l)?;
                let dup = l.try_clone()?;
                Ok((TcpListener::from_std(l)?, dup))
            });
            match ready {
                Ok((listener, dup)) => {
                    tracing::info!(%addr, "{how}");
                    pending.push(Pending { addr, listener });
                    fds.insert(addr, dup);
                }
                Err(e) => {
                    unbound += 1;
                    tracing::error!(%addr, error = %e, "cannot bind listener; retrying");
                }
            }
        }
        shared.unbound.store(unbound, Ordering::Release);
        shared.metrics.listeners_unbound.set(unbound as i64);
        pending
    }

    /// Once `table` is live: starts the accept loops of `pending` and
    /// tells every loop whether its connections are TLS now.
    pub(crate) fn start(&self, pending: Vec<Pending>, table: &RouteTable, shared: &Arc<Shared>) {
        let mut running = lock(&self.running);
        for Pending { addr, listener } in pending {
            let tls = Arc::new(AtomicBool::new(table.needs_peek(&addr)));
            let task = tokio::spawn(accept_loop(
                listener,
                addr,
                Arc::clone(&tls),
                Arc::clone(shared),
            ));
            running.insert(addr, Running { task, tls });
        }
        for (addr, r) in running.iter() {
            r.tls.store(table.needs_peek(addr), Ordering::Relaxed);
        }
    }

    /// Listening sockets received from a previous process (upgrade); an
    /// empty map closes those not adopted.
    pub(crate) fn inherit(&self, listeners: HashMap<SocketAddr, std::net::TcpListener>) {
        *lock(&self.inherited) = listeners;
    }

    /// Closes the inherited listening sockets the first table did not
    /// adopt: once the previous process has closed its copies too, their
    /// pairs refuse connections instead of queueing them where no one
    /// accepts.
    pub(crate) fn close_unadopted(&self) {
        let left = std::mem::take(&mut *lock(&self.inherited));
        for addr in left.keys() {
            tracing::info!(%addr, "upgrade: closing an inherited listener the table does not need");
        }
    }

    /// Duplicates of every live listening socket, for an upgrade handoff.
    pub(crate) fn dups(&self) -> io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
        lock(&self.fds)
            .iter()
            .map(|(a, l)| Ok((*a, l.try_clone()?)))
            .collect()
    }

    /// Stops every accept loop and closes this process's listening sockets.
    pub(crate) fn close_all(&self) {
        for (_, r) in lock(&self.running).drain() {
            r.task.abort();
        }
        lock(&self.fds).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds and listens on `addr` (non-blocking, ready for tokio).
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Readies a listener, freshly bound or inherited from the previous
/// process, for [`accept_loop`]: non-blocking, and `TCP_NODELAY`, which
/// Linux copies to every socket the listener accepts (one system call per
/// listener instead of one per connection).
pub(crate) fn prepare(listener: std::net::TcpListener) -> io::Result<std::net::TcpListener> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    Ok(listener)
}

/// Accepts on `listener` (bound to `addr`) until the task is aborted;
/// connections are peeked for SNI while `tls` is set.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    tls: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if fd_exhausted(&e) => {
                shared.metrics.accept_error("fd_exhausted");
                shared.fd_exhausted_log(&e);
                tokio::time::sleep(FD_EXHAUSTED_BACKOFF).await;
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends concern one connection only.
                shared.metrics.accept_error("other");
                tracing::debug!(%addr, error = %e, "accept failed");
                continue;
            }
        };
        shared.metrics.accepted.inc();
        match shared.admission.admit(peer.ip()) {
            Ok(permit) => {
                let tls = tls.load(Ordering::Relaxed);
                tokio::spawn(conn::serve(
                    Arc::clone(&shared),
                    stream,
                    peer,
                    addr,
                    tls,
                    permit,
                ));
            }
            Err(refused) => {
                let reject = match refused {
                    Refused::PerSource => Reject::SourceLimit,
                    Refused::MaxConnections => Reject::MaxConnections,
                };
                drop(stream);
                shared
                    .rejects
                    .record(&shared.metrics, reject, peer, addr, None);
            }
        }
    }
}

fn fd_exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_sockets_have_nodelay_from_the_prepared_listener() {
        let bound = super::bind("[::1]:0".parse().unwrap(), 8).unwrap();
        let listener = super::prepare(bound).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
