//! Clients as users run them: TLS that verifies the backend's certificate
//! through the edge, and raw sockets for bytes that are not TLS.

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::ca::TestCa;
use crate::PATIENCE;

/// Connects to `addr` and completes a verified TLS handshake for `sni`.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca: &TestCa,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tls_over(tcp, sni, ca).await
}

/// A verified TLS handshake over an existing stream.
pub async fn tls_over(
    tcp: TcpStream,
    sni: &str,
    ca: &TestCa,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name =
        ServerName::try_from(sni.to_owned()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let connector = TlsConnector::from(ca.client_config(&[b"h2"]));
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Connects over TLS and returns the backend's first line (its tag).
pub async fn who_answers(addr: SocketAddr, sni: &str, ca: &TestCa) -> std::io::Result<String> {
    let mut tls = tls_connect(addr, sni, ca).await?;
    read_line(&mut tls).await
}

/// Reads one `\n`-terminated line (without it), within [`PATIENCE`].
pub async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before a line",
                ));
            }
            if byte[0] == b'\n' {
                return Ok(());
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .map_err(|_| std::io::Error::other("no line in time"))??;
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What the edge did with a connection it should refuse.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// Closed (FIN or RST) without sending a byte.
    WithoutBytes,
    /// Sent these bytes: the edge must never speak.
    Sent(Vec<u8>),
    /// Still open after the wait.
    StillOpen,
}

/// Waits up to `wait` for the peer to close `stream`, collecting any bytes.
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Closed {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Closed::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) if got.is_empty() => return Closed::WithoutBytes,
            Ok(Ok(0)) | Ok(Err(_)) => return Closed::Sent(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Opens a raw connection and writes `bytes`, then reports how it closed.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Closed {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the edge");
    // The edge may close before every byte is written; that is fine.
    let _ = stream.write_all(bytes).await;
    closed_within(&mut stream, PATIENCE).await
}
