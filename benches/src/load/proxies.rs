//! The proxies under test, as child processes pinned with `taskset`: the
//! edge (release build) and its peers from Debian (HAProxy, nginx's stream
//! module, sniproxy), configured with the same two SNI routes:
//! `shop.example.com` to the answering backend (optionally with a PROXY
//! header) and `bulk.example.co1` to the sink. Each constructor checks that
//! a connection with the shop SNI is answered `ok\n` before returning.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_tests::edge::{Route, Toml};
use edge_tests::ports::free_port;

use super::CURL_HELLO;

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
    wait_routing(addr, "edge");
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
    let bin = require("haproxy", "haproxy");
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    wait_routing(addr, "haproxy");
    Proxy {
        name: "haproxy".into(),
        addr,
        child: Some(child),
        _dir: Some(dir),
    }
}

/// Where Debian's nginx-light keeps the stream module
/// (`libnginx-mod-stream`).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx 1.22's stream module on core 1: one process that does the work
/// (`master_process off`, `worker_processes 1`), `ssl_preread` with a
/// `map` on the SNI, its defaults otherwise. nginx sends PROXY v1 (text)
/// only, and per server rather than per route: with `setup.proxy_v2` both
/// routes get `proxy_protocol on` (only the shop route is exercised then).
pub fn nginx(setup: Setup) -> Proxy {
    let bin = require("nginx", "nginx-light (or nginx)");
    assert!(
        Path::new(NGINX_STREAM_MODULE).exists(),
        "{NGINX_STREAM_MODULE} missing: apt-get install libnginx-mod-stream"
    );
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let pp = if setup.proxy_v2 {
        "\n        proxy_protocol on;"
    } else {
        ""
    };
    let cfg = format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{\n    worker_connections 10000;\n}}\n\
         stream {{\n    \
         map $ssl_preread_server_name $backend {{\n        \
         shop.example.com [::1]:{};\n        \
         bulk.example.co1 [::1]:{};\n    }}\n    \
         server {{\n        listen [::1]:{port};\n        \
         ssl_preread on;\n        proxy_pass $backend;{pp}\n    }}\n}}\n",
        setup.answer.port(),
        setup.sink.port()
    );
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, cfg).expect("write nginx.conf");
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    wait_routing(addr, "nginx");
    Proxy {
        name: "nginx".into(),
        addr,
        child: Some(child),
        _dir: Some(dir),
    }
}

/// sniproxy 0.6 on core 1, in the foreground (`-f`), one `tls` listener
/// and a table with the two routes, its defaults otherwise. It can send
/// only PROXY v1, so it has no PROXY v2 setup: `setup.proxy_v2` panics.
/// (Started as root, it drops to user `daemon`; its binder helper process
/// does no proxying and exits when the proxy is killed.)
pub fn sniproxy(setup: Setup) -> Proxy {
    assert!(!setup.proxy_v2, "sniproxy cannot send PROXY v2");
    let bin = require("sniproxy", "sniproxy");
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let cfg = format!(
        "pidfile {d}/sniproxy.pid\n\
         error_log {{\n    filename {d}/error.log\n    priority warning\n}}\n\
         listener [::1]:{port} {{\n    protocol tls\n    table routes\n}}\n\
         table routes {{\n    \
         ^shop\\.example\\.com$ [::1]:{}\n    \
         ^bulk\\.example\\.co1$ [::1]:{}\n}}\n",
        setup.answer.port(),
        setup.sink.port()
    );
    let config = dir.path().join("sniproxy.conf");
    std::fs::write(&config, cfg).expect("write sniproxy.conf");
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin)
        .arg("-f")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sniproxy");
    let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    wait_routing(addr, "sniproxy");
    Proxy {
        name: "sniproxy".into(),
        addr,
        child: Some(child),
        _dir: Some(dir),
    }
}

/// The absolute path of `bin` (on PATH or in /usr/sbin), or a panic naming
/// the Debian package that ships it.
fn require(bin: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{bin} not found on PATH: apt-get install {package}"))
}

/// Waits for `addr` to accept, then checks that it routes by SNI: a
/// connection replaying the shop hello is answered `ok\n`.
fn wait_routing(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = std::net::TcpStream::connect(addr).expect("connect to check routing");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s.write_all(CURL_HELLO).expect("send the shop hello");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(
        got, b"ok\n",
        "{what} did not route the shop SNI to the answering backend"
    );
}
