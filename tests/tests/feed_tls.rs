//! Both listeners of `edge-feed serve --tls-cert --tls-key --client-ca`
//! refuse a client without a certificate signed by the client CA, and
//! serve one that has it. (edge-agent has no https feed support on this
//! branch yet, so the clients here are the test's own: tokio-rustls for
//! HTTP, tonic for gRPC.)

use std::path::Path;
use std::sync::Arc;

use edge_proto::feed::{EventFeedClient, SubscribeRequest};
use edge_tests::edge_feed::FeedProcess;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Ca {
    cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// `(cert PEM, key PEM)` of a leaf for `names` and `purpose`.
    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Pki {
    server_ca: Ca,
    client: (String, String),
    stranger: (String, String),
    _dir: tempfile::TempDir,
    args: Vec<String>,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("feed server CA");
    let client_ca = Ca::new("edge nodes CA");
    let other_ca = Ca::new("someone else's CA");
    let (cert, key) = server_ca.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let args = vec![
        "--tls-cert".into(),
        write("server.pem", &cert),
        "--tls-key".into(),
        write("server.key", &key),
        "--client-ca".into(),
        write("client-ca.pem", &client_ca.cert_pem),
    ];
    Pki {
        client: client_ca.leaf(&["edge-1"], ExtendedKeyUsagePurpose::ClientAuth),
        stranger: other_ca.leaf(&["edge-1"], ExtendedKeyUsagePurpose::ClientAuth),
        server_ca,
        _dir: dir,
        args,
    }
}

async fn feed_with_tls(pki: &Pki, log: &Path) -> FeedProcess {
    std::fs::write(
        log,
        "{\"aggregate_type\":\"env\",\"aggregate_id\":\"acme/shop/prod\",\"event_type\":\"env.configured\",\
         \"payload\":{\"id\":\"acme/shop/prod\",\"ipv6\":[\"::1\"],\"ipv4\":null,\"ports\":[]}}\n",
    )
    .unwrap();
    let args: Vec<&str> = pki.args.iter().map(String::as_str).collect();
    FeedProcess::start(&format!("file:{}", log.display()), &args).await
}

/// GET /events over TLS with `identity` (or none): the response's first
/// line, or the error that ended the exchange.
async fn https_get(pki: &Pki, feed: &FeedProcess, identity: Option<&(String, String)>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(feed.http).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        tls.write_all(
            b"GET /events?after=0&node_id=t HTTP/1.1\r\nHost: feed\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
    };
    match tokio::time::timeout(edge_tests::PATIENCE, exchange).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "error: timed out".into(),
    }
}

async fn subscribe(
    pki: &Pki,
    feed: &FeedProcess,
    identity: Option<&(String, String)>,
) -> Result<edge_proto::v1::EventBatch, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.server_ca.cert_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let attempt = async {
        let channel = Channel::from_shared(format!("https://{}", feed.grpc))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut stream = EventFeedClient::new(channel)
            .subscribe(SubscribeRequest {
                after: 0,
                node_id: "t".into(),
                event_types: vec![],
            })
            .await
            .map_err(|e| format!("subscribe: {e}"))?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|e| format!("stream: {e}"))?
            .ok_or_else(|| "stream ended".to_owned())
    };
    tokio::time::timeout(edge_tests::PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_requires_a_client_certificate_from_the_client_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let feed = feed_with_tls(&pki, &dir.path().join("events.jsonl")).await;
    let ok = https_get(&pki, &feed, Some(&pki.client)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"feed_id\":\"file-"), "{ok}");
    assert!(ok.contains("env.configured"), "{ok}");
    for (who, id) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&pki.stranger)),
    ] {
        let refused = https_get(&pki, &feed, id).await;
        assert!(!refused.contains("HTTP/1.1"), "{who}: served: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_requires_a_client_certificate_from_the_client_ca() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let feed = feed_with_tls(&pki, &dir.path().join("events.jsonl")).await;
    let batch = subscribe(&pki, &feed, Some(&pki.client)).await.unwrap();
    assert_eq!(batch.events.len(), 1);
    assert_eq!(batch.head, 1);
    assert!(batch.feed_id.starts_with("file-"), "{}", batch.feed_id);
    for (who, id) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&pki.stranger)),
    ] {
        let refused = subscribe(&pki, &feed, id).await;
        assert!(refused.is_err(), "{who}: served {refused:?}");
    }
}
