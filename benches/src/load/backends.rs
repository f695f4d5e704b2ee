//! Backends the proxies forward to, run inside the harness (core 0).

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

/// Reads once, answers `ok\n` and closes: the shape of a short request.
pub async fn answering() -> SocketAddr {
    serve(|mut s| async move {
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(b"ok\n").await;
    })
    .await
}

/// Discards everything until EOF with `recv(MSG_TRUNC)`, which Linux TCP
/// consumes without copying to user space: the sink costs its core almost
/// nothing per byte, so the bulk figures measure the proxy, not the sink.
pub async fn sink() -> SocketAddr {
    serve(|s| async move {
        let mut scratch = vec![MaybeUninit::<u8>::uninit(); 4 << 20];
        let sock = socket2::SockRef::from(&s);
        loop {
            if s.readable().await.is_err() {
                return;
            }
            let got = s.try_io(Interest::READABLE, || {
                sock.recv_with_flags(&mut scratch, libc::MSG_TRUNC)
            });
            match got {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    })
    .await
}

async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("[::1]:0").await.expect("bind a backend");
    let addr = l.local_addr().expect("backend address");
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = l.accept().await {
                tokio::spawn(handle(s));
            }
        }
    });
    addr
}
