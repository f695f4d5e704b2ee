//! Binding a feed's listeners: HTTP always, gRPC when asked, both behind
//! client-certificate TLS when configured. Used by `edge-feed serve` and
//! by tests that run a feed in-process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::feed::Feed;
use crate::tls::{TlsError, TlsFiles};

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Running listeners; stopped when dropped.
#[derive(Debug)]
pub struct Running {
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Running {
    /// Waits until a server task ends (it does not, unless it fails).
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Binds `http` (and `grpc`) and serves `feed` on them (port 0: any).
pub async fn start(
    feed: Arc<Feed>,
    http: SocketAddr,
    grpc: Option<SocketAddr>,
    tls: Option<&TlsFiles>,
) -> Result<Running, ServeError> {
    let acceptor = tls
        .map(|t| t.http_config().map(TlsAcceptor::from))
        .transpose()?;
    let grpc_tls = tls.map(TlsFiles::grpc_config).transpose()?;
    let http_listener = bind(http).await?;
    let http = http_listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr: http, source })?;
    let mut tasks = Vec::new();
    let grpc = match grpc {
        Some(addr) => {
            let listener = bind(addr).await?;
            let local = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            tasks.push(crate::grpc::serve(Arc::clone(&feed), listener, grpc_tls)?);
            Some(local)
        }
        None => None,
    };
    tasks.push(crate::http::serve(feed, http_listener, acceptor));
    Ok(Running { http, grpc, tasks })
}
