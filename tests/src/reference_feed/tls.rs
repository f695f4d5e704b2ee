//! mTLS for the tests' feed: a server certificate from a test CA and the
//! CA its clients must be signed by, written to files and loaded by
//! edge-feed's own TLS code (`edge_feed::tls::TlsFiles`), as
//! `edge-feed serve --tls-cert --tls-key --client-ca` does.

use std::sync::Arc;

use edge_feed::tls::TlsFiles;

/// The feed's certificate and the CA its clients must be signed by.
#[derive(Clone)]
pub struct FeedServerTls {
    files: TlsFiles,
    _dir: Arc<tempfile::TempDir>,
}

impl FeedServerTls {
    /// A certificate for `names` from `ca`, and clients signed by
    /// `client_ca` required.
    pub fn new(
        ca: &crate::ca::TestCa,
        names: &[&str],
        client_ca: &crate::ca::TestCa,
    ) -> FeedServerTls {
        let (_, _, cert, key) = ca.leaf(names);
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a TLS file");
            path
        };
        let files = TlsFiles {
            cert: write("feed.pem", &cert),
            key: write("feed.key", &key),
            client_ca: write("client-ca.pem", &client_ca.root_pem()),
        };
        FeedServerTls {
            files,
            _dir: Arc::new(dir),
        }
    }

    /// The files, as `edge-feed serve` takes them.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
