//! The fixture most tests start from: env `acme/shop/prod` on `[::1]`
//! (optionally with `127.0.0.1` as its dedicated IPv4), one `web` instance
//! on `[::1]`, route `r-shop` for `shop.example.com` on a free port, and a
//! TLS backend tagged `web` holding that name's certificate.

use std::net::{Ipv6Addr, SocketAddr};

use crate::backend::{Backend, Mode};
use crate::ca::TestCa;
use crate::edge::{Route, Toml};
use crate::ports::free_port;

pub const ENV: &str = "acme/shop/prod";
pub const HOST: &str = "shop.example.com";

pub struct Shop {
    pub ca: TestCa,
    pub backend: Backend,
    pub port: u16,
}

impl Shop {
    pub async fn new() -> Shop {
        let ca = TestCa::new();
        let backend = Backend::start(
            "[::1]:0".parse().expect("addr"),
            "web",
            Mode::Tls(ca.server_config(&[HOST])),
            false,
        )
        .await;
        Shop {
            ca,
            backend,
            port: free_port(),
        }
    }

    /// `base` plus the port in `ipv6_extra_ports`, the env (with
    /// `127.0.0.1` requesting the port when `ipv4`), the instance and the route.
    pub fn toml(&self, base: Toml, ipv4: bool) -> Toml {
        let (v4, ports) = if ipv4 {
            (Some("127.0.0.1"), vec![self.port])
        } else {
            (None, vec![])
        };
        base.policy("ipv6_extra_ports", &format!("[{}]", self.port))
            .env(ENV, &["::1"], v4, &ports)
            .instance("i-1", ENV, "web", "::1")
            .route(Route::tls(
                "r-shop",
                ENV,
                HOST,
                self.port,
                self.backend.addr.port(),
            ))
    }

    /// `[::1]:port`.
    pub fn v6(&self) -> SocketAddr {
        SocketAddr::from((Ipv6Addr::LOCALHOST, self.port))
    }

    /// `127.0.0.1:port`.
    pub fn v4(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}
