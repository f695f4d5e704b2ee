//! mTLS for the reference feed: a server certificate from the test CA and
//! a client verifier (rustls `WebPkiClientVerifier`) that requires a
//! client certificate signed by it, for both listeners. Handshakes run in
//! their own tasks, so a client that never finishes one holds up nobody.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The feed's certificate and the CA its clients must be signed by.
#[derive(Clone)]
pub struct FeedServerTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub client_ca: CertificateDer<'static>,
}

impl FeedServerTls {
    /// A certificate for `names` from `ca`, and clients signed by
    /// `client_ca` required.
    pub fn new(
        ca: &crate::ca::TestCa,
        names: &[&str],
        client_ca: &crate::ca::TestCa,
    ) -> FeedServerTls {
        let (chain, key, _, _) = ca.leaf(names);
        FeedServerTls {
            chain,
            key: Arc::new(key),
            client_ca: client_ca.root_der(),
        }
    }

    /// A rustls server config requiring a client certificate, with `alpn`.
    pub fn config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.client_ca.clone()).expect("client CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .expect("client verifier");
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Accepts on `listener` and yields the connections whose TLS handshake
/// (client certificate included) succeeded.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = tx.send(tls).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
