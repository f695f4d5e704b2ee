//! The connections the figures hold open, and the backend behind them.
//!
//! Clients bind one of [`SOURCES`] IPv4 loopback addresses (any 127/8
//! address works on `lo` without setup), round robin, and connect to a
//! proxy on `127.0.0.1`, a wave of [`WAVE`] connections at a time (each
//! wave's connections run concurrently; the next wave starts when all of
//! them are done).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::load::CURL_HELLO;

/// Source addresses: 127.0.0.2 ..= 127.0.0.25.
pub const SOURCES: usize = 24;
/// Connections opened concurrently.
pub const WAVE: usize = 256;
/// What the backend answers to a hello, as a TLS server's first flight
/// would (its length is all that matters).
pub const ANSWER: &[u8] = b"ok\n";

const PATIENCE: Duration = Duration::from_secs(20);

/// A backend that answers like a TLS server and then holds the
/// connection: on accept it reads a whole ClientHello (curl's, 517
/// bytes), writes [`ANSWER`], and keeps the connection open and idle
/// until the proxy closes it. Stops accepting when dropped.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("[::1]:0")
            .await
            .expect("bind the backend");
        let addr = listener.local_addr().expect("backend address");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut hello = vec![0u8; CURL_HELLO.len()];
                    if s.read_exact(&mut hello).await.is_err() || s.write_all(ANSWER).await.is_err()
                    {
                        return;
                    }
                    // Idle until the proxy closes its side.
                    let mut buf = [0u8; 512];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        Backend { addr, accept }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8)
}

async fn connect_from(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(i), 0)))?;
    socket.connect(to).await
}

/// One established tunnel: connect, send curl's ClientHello, read the
/// backend's answer.
async fn tunnel(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = connect_from(i, to).await?;
    s.write_all(CURL_HELLO).await?;
    let mut answer = [0u8; ANSWER.len()];
    s.read_exact(&mut answer).await?;
    if answer != ANSWER {
        return Err(std::io::Error::other(format!(
            "the backend's answer came back as {answer:?}"
        )));
    }
    Ok(s)
}

/// One stalled handshake: connect, send the first half of the hello.
async fn stalled(i: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = connect_from(i, to).await?;
    s.write_all(&CURL_HELLO[..CURL_HELLO.len() / 2]).await?;
    Ok(s)
}

/// `n` tunnels established through the proxy at `to`, each answered.
pub async fn tunnels(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    waves(to, n, "tunnel", |i, to| Box::pin(tunnel(i, to))).await
}

/// `n` connections that sent half a ClientHello and stopped.
pub async fn stalled_handshakes(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    waves(to, n, "stalled handshake", |i, to| Box::pin(stalled(i, to))).await
}

type Opening =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>;

async fn waves(
    to: SocketAddr,
    n: usize,
    what: &str,
    open: impl Fn(usize, SocketAddr) -> Opening,
) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let first = held.len();
        let mut wave = JoinSet::new();
        for i in first..(first + WAVE).min(n) {
            let opening = open(i, to);
            wave.spawn(async move { (i, tokio::time::timeout(PATIENCE, opening).await) });
        }
        while let Some(done) = wave.join_next().await {
            match done.expect("a connection task") {
                (_, Ok(Ok(s))) => held.push(s),
                (i, Ok(Err(e))) => panic!("{what} {i} (from {}) failed: {e}", source(i)),
                (i, Err(_)) => panic!("{what} {i} (from {}) timed out", source(i)),
            }
        }
    }
    held
}

/// How many of `streams` are still open: nothing to read and no EOF
/// (a non-blocking `MSG_PEEK` says `EAGAIN`).
pub fn still_open(streams: &[TcpStream]) -> usize {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    streams
        .iter()
        .filter(|s| {
            let peeked = socket2::SockRef::from(*s).recv_with_flags(&mut buf, libc::MSG_PEEK);
            matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}
