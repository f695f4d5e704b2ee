//! A throwaway certificate authority: every test run has its own, so a
//! client that verifies the chain proves it reached the backend that holds
//! the name, through an edge that never sees a key.

use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    root: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            root: cert.der().clone(),
            cert,
            key,
        }
    }

    /// A server config holding a certificate for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.root.clone()], key)
            .expect("server config");
        Arc::new(config)
    }

    /// A client config that trusts only this CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("root");
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The CA certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), usable
    /// by a server or a client: `(chain DER, key DER, chain PEM, key PEM)`.
    pub fn leaf(
        &self,
        names: &[&str],
    ) -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf cert");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (
            vec![cert.der().clone()],
            der,
            cert.pem(),
            key.serialize_pem(),
        )
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
