//! Backends that stand in for microVMs: each says who it is, echoes what it
//! receives, answers a half-close with `bye\n`, and records the PROXY v2
//! header and SNI of every connection, parsed by `ppp` (a crate the edge
//! does not use to write them).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ppp::v2::{Addresses, Header};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The PP2_TYPE_AUTHORITY TLV.
const PP2_TYPE_AUTHORITY: u8 = 0x02;

/// What a backend saw at the start of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `(source, destination)` of the PROXY v2 header, if one was expected.
    pub proxy: Option<(SocketAddr, SocketAddr)>,
    /// The AUTHORITY TLV of the PROXY v2 header.
    pub authority: Option<String>,
    /// The SNI the TLS handshake carried (TLS backends).
    pub sni: Option<String>,
    /// The edge's address as the backend saw it.
    pub peer: SocketAddr,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub tag: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
pub enum Mode {
    Tls(Arc<ServerConfig>),
    Tcp,
}

impl Backend {
    /// Listens on `bind` (port 0 for any) and serves until dropped.
    pub async fn start(bind: SocketAddr, tag: &str, mode: Mode, expect_proxy: bool) -> Backend {
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind backend {bind}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(
            listener,
            tag.to_owned(),
            mode,
            expect_proxy,
            seen.clone(),
            accepted.clone(),
        ));
        Backend {
            addr,
            tag: tag.to_owned(),
            seen,
            accepted,
            task,
        }
    }

    /// Every connection seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Connections accepted so far (counted before any handshake).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    tag: String,
    mode: Mode,
    expect_proxy: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        // Small writes (the tag line) must not wait for a delayed ACK.
        let _ = stream.set_nodelay(true);
        let (tag, mode, seen) = (tag.clone(), mode.clone(), seen.clone());
        tokio::spawn(async move {
            let _ = connection(stream, peer, &tag, mode, expect_proxy, &seen).await;
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    tag: &str,
    mode: Mode,
    expect_proxy: bool,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut record = Seen {
        proxy: None,
        authority: None,
        sni: None,
        peer,
    };
    if expect_proxy {
        let (addrs, authority) = read_proxy_v2(&mut stream).await?;
        record.proxy = Some(addrs);
        record.authority = authority;
    }
    match mode {
        Mode::Tcp => {
            seen.lock().expect("seen").push(record);
            echo(stream, tag).await
        }
        Mode::Tls(config) => {
            let tls = TlsAcceptor::from(config).accept(stream).await?;
            record.sni = tls.get_ref().1.server_name().map(str::to_owned);
            seen.lock().expect("seen").push(record);
            echo(tls, tag).await
        }
    }
}

/// Reads exactly one PROXY v2 header (16 fixed bytes, then its length) and
/// parses it with `ppp`. Anything else is an error that drops the
/// connection, so a test sees it as a failed exchange.
pub async fn read_proxy_v2(
    stream: &mut TcpStream,
) -> std::io::Result<((SocketAddr, SocketAddr), Option<String>)> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut bytes = fixed.to_vec();
    bytes.resize(16 + len, 0);
    stream.read_exact(&mut bytes[16..]).await?;
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let header = Header::try_from(bytes.as_slice()).map_err(|e| bad(format!("PROXY v2: {e:?}")))?;
    let addrs = match header.addresses {
        Addresses::IPv4(a) => (
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        ),
        Addresses::IPv6(a) => (
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        ),
        other => return Err(bad(format!("unexpected addresses {other:?}"))),
    };
    let mut authority = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| bad(format!("TLV: {e:?}")))?;
        if tlv.kind == PP2_TYPE_AUTHORITY {
            authority = Some(String::from_utf8_lossy(&tlv.value).into_owned());
        }
    }
    Ok((addrs, authority))
}

/// `tag\n`, then every byte back; on the client's half-close, `bye\n` and
/// a close of our side.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, tag: &str) -> std::io::Result<()> {
    stream.write_all(format!("{tag}\n").as_bytes()).await?;
    stream.flush().await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n]).await?;
    }
    stream.write_all(b"bye\n").await?;
    stream.shutdown().await
}
