//! The proxies under test, as child processes pinned with `taskset`: the
//! edge (release build) and Debian's HAProxy, configured with the same two
//! SNI routes: `shop.example.com` to the answering backend (optionally
//! with PROXY v2) and `bulk.example.co1` to the sink.

use std::net::{Ipv6Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::edge::{Route, Toml};
use edge_tests::ports::free_port;

const ENV: &str = "acme/bench/prod";

/// A running proxy; killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Proxy {
    /// No proxy at all: the generator dials `addr` itself (the baseline).
    pub fn direct(addr: SocketAddr) -> Proxy {
        Proxy {
            name: "direct".into(),
            addr,
            child: None,
            _dir: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the routes ask of the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    pub answer: SocketAddr,
    pub sink: SocketAddr,
    pub proxy_v2: bool,
}

/// The edge on `cores` (a `taskset -c` list).
pub fn edge(setup: Setup, cores: &str, splice: bool) -> Proxy {
    let port = free_port();
    let mut shop = Route::tls("r-shop", ENV, "shop.example.com", port, setup.answer.port());
    if setup.proxy_v2 {
        shop = shop.proxy_protocol();
    }
    let toml = Toml::new()
        .policy("ipv6_extra_ports", &format!("[{port}]"))
        .env(ENV, &["::1"], None, &[])
        .instance("i-1", ENV, "web", "::1")
        .route(shop)
        .route(Route::tls(
            "r-bulk",
            ENV,
            "bulk.example.co1",
            port,
            setup.sink.port(),
        ))
        .splice(splice);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, toml.render()).expect("write edge.toml");
    let child = Command::new("taskset")
        .args(["-c", cores])
        .arg(std::env::var("EDGE_BIN").expect("EDGE_BIN set by release_binaries"))
        .arg("--config")
        .arg(&config)
        .env("EDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the edge");
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    wait_listening(addr, "edge");
    let splice = if splice { "" } else { ", copy" };
    Proxy {
        name: format!("edge (cores {cores}{splice})"),
        addr,
        child: Some(child),
        _dir: Some(dir),
    }
}

/// HAProxy 2.6 on core 1 with one thread, its defaults otherwise (no
/// splice), `tcp-request content` SNI routing as its documentation shows.
pub fn haproxy(setup: Setup) -> Proxy {
    let port = free_port();
    let pp = if setup.proxy_v2 { " send-proxy-v2" } else { "" };
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 9500\n\n\
         defaults\n  mode tcp\n  timeout connect 3s\n  timeout client 1h\n  timeout server 1h\n\n\
         frontend fe\n  bind [::1]:{port}\n  tcp-request inspect-delay 5s\n  \
         tcp-request content accept if {{ req_ssl_hello_type 1 }}\n  \
         use_backend shop if {{ req_ssl_sni -i shop.example.com }}\n  \
         use_backend bulk if {{ req_ssl_sni -i bulk.example.co1 }}\n\n\
         backend shop\n  server s1 [::1]:{}{pp}\n\n\
         backend bulk\n  server s1 [::1]:{}\n",
        setup.answer.port(),
        setup.sink.port()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(&config, cfg).expect("write haproxy.cfg");
    let child = Command::new("taskset")
        .args(["-c", "1", "haproxy", "-db", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy on PATH (apt-get install haproxy)");
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    wait_listening(addr, "haproxy");
    Proxy {
        name: "haproxy".into(),
        addr,
        child: Some(child),
        _dir: Some(dir),
    }
}

fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}
