//! `netns-backend`: a microVM stand-in for the network-namespace topology
//! test (`tests/netns/topology.sh`). It answers every request with
//! `HTTP/1.1 200` and a body naming itself, over TLS with a self-signed
//! certificate for `--name`, or plain TCP with `--raw`; with `--proxy` it
//! first reads a PROXY v2 header (parsed by `ppp`) and puts its source and
//! destination in the body, so the client side can check them.
//!
//! `netns-backend --listen [fdaa::10]:8443 --tag a1 --name a.example.com [--proxy] [--raw]`

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use edge_tests::backend::read_proxy_v2;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    tag: String,
    /// Certificate name (TLS mode).
    #[arg(long, default_value = "localhost")]
    name: String,
    /// Expect a PROXY v2 header first.
    #[arg(long)]
    proxy: bool,
    /// Plain TCP instead of TLS.
    #[arg(long)]
    raw: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![cli.name.clone()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(cli.listen).await.expect("bind");
    println!("netns-backend {} listening on {}", cli.tag, cli.listen);
    let cli = Arc::new(cli);
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        let (cli, acceptor) = (cli.clone(), acceptor.clone());
        tokio::spawn(async move {
            let proxy = if cli.proxy {
                match read_proxy_v2(&mut stream).await {
                    Ok(((src, dst), authority)) => format!(
                        " proxy_src={src} proxy_dst={dst} authority={}",
                        authority.unwrap_or_default()
                    ),
                    Err(e) => {
                        eprintln!("bad PROXY header from {peer}: {e}");
                        return;
                    }
                }
            } else {
                String::new()
            };
            let body = format!("tag={} peer={peer}{proxy}\n", cli.tag);
            if cli.raw {
                let _ = answer(stream, &body).await;
            } else if let Ok(tls) = acceptor.accept(stream).await {
                let _ = answer(tls, &body).await;
            }
        });
    }
}

/// Reads the request head (or whatever comes first) and answers.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, body: &str) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).await?;
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(response.as_bytes()).await?;
    s.shutdown().await
}
