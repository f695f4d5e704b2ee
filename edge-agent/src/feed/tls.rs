//! mTLS to the control plane (`[feed] tls = { ca, cert, key }`): the PEM
//! files read and checked once at load, then handed to tonic's rustls
//! transport (gRPC) and to a rustls client config (polling). No
//! hand-rolled crypto: rustls verifies the server against `ca` only and
//! presents `cert` + `key` as the client certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS files cannot be used; `field` is the config key.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {path}: {message}")]
pub struct TlsError {
    pub field: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// The client's trust and identity, as PEM, validated.
#[derive(Clone)]
pub struct FeedTls {
    ca_pem: Vec<u8>,
    /// Certificate chain and key; `None` presents no client certificate
    /// (a feed that requires one refuses the handshake).
    identity: Option<(Vec<u8>, Vec<u8>)>,
    rustls: Arc<ClientConfig>,
}

impl std::fmt::Debug for FeedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl FeedTls {
    /// Reads and checks `ca`, and `cert` + `key` when given.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<FeedTls, TlsError> {
        let ca_pem = read("feed.tls.ca", ca)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| error("feed.tls.ca", ca, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| error("feed.tls.ca", ca, e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(error(
                "feed.tls.ca",
                ca,
                "no certificate in the file".into(),
            ));
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots);
        let (rustls, identity) = match identity {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let cert_pem = read("feed.tls.cert", cert)?;
                let key_pem = read("feed.tls.key", key)?;
                let chain = CertificateDer::pem_slice_iter(&cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| error("feed.tls.cert", cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(error(
                        "feed.tls.cert",
                        cert,
                        "no certificate in the file".into(),
                    ));
                }
                let private = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| error("feed.tls.key", key, e.to_string()))?;
                let config = builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| error("feed.tls.key", key, e.to_string()))?;
                (config, Some((cert_pem, key_pem)))
            }
        };
        Ok(FeedTls {
            ca_pem,
            identity,
            rustls: Arc::new(rustls),
        })
    }

    /// tonic's rustls client config (ALPN h2 is tonic's).
    pub fn grpc(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }

    /// The rustls config for polling over HTTP/1.1.
    pub fn poll(&self) -> Arc<ClientConfig> {
        let mut config = (*self.rustls).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// How long a diagnostic handshake may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl FeedTls {
    /// After a gRPC failure: one TLS handshake to `endpoint`
    /// (`https://host:port[/...]`) with the same trust and identity, and a
    /// read, to name what the TLS layer refused (an unknown issuer, or the
    /// server's alert for a missing client certificate), which tonic's
    /// error hides behind "connection closed". `None`: TLS is fine.
    pub async fn probe(&self, endpoint: &str) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let authority = endpoint.strip_prefix("https://")?.split('/').next()?;
        let host = match authority.strip_prefix('[') {
            Some(rest) => rest.split(']').next()?,
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
        let mut config = (*self.rustls).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let probe = async {
            let tcp = tokio::net::TcpStream::connect(authority).await.ok()?;
            let mut tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
            {
                Ok(tls) => tls,
                Err(e) => return Some(crate::feed::chain(&e)),
            };
            // TLS 1.3: the server judges the client certificate after the
            // client's handshake is done; its verdict arrives as an alert.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(std::time::Duration::from_millis(500), tls.read(&mut byte))
                .await
            {
                Ok(Err(e)) => Some(crate::feed::chain(&e)),
                _ => None,
            }
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .ok()
            .flatten()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(field, path, e.to_string()))
}

fn error(field: &'static str, path: &Path, message: String) -> TlsError {
    TlsError {
        field,
        path: path.to_owned(),
        message,
    }
}
