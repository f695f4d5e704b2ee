//! Public listeners: binding exactly the `(IP, port)` pairs the table needs
//! and the accept loop of each.
//!
//! Sockets are made with socket2: `IPV6_V6ONLY` on IPv6 (an IPv4 client is
//! only ever seen on the env's IPv4 listener), `IP_FREEBIND` so an address
//! that is not configured yet (a dedicated IPv4 being routed to the node)
//! can still be bound, and a configurable backlog. The accept loop survives
//! descriptor exhaustion without spinning: the pending connection stays in
//! the kernel's queue while the loop sleeps [`FD_EXHAUSTED_BACKOFF`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::conn;
use crate::limits::Refused;
use crate::reject::Reject;

/// How long the accept loop pauses when the process (or system) is out of
/// file descriptors or socket memory: long enough not to spin a core,
/// short enough that connections resume promptly once fds are freed.
pub const FD_EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);

/// Binds and listens on `addr` (non-blocking, ready for tokio).
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
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
pub fn prepare(listener: std::net::TcpListener) -> io::Result<std::net::TcpListener> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    Ok(listener)
}

/// Accepts on `listener` (bound to `addr`) until the task is aborted.
pub async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
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
                tokio::spawn(conn::serve(Arc::clone(&shared), stream, peer, addr, permit));
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
