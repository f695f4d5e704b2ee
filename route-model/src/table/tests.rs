//! Compile and lookup tests: precedence, the no-SNI rule, every rejection.

mod addresses;

use std::net::SocketAddr;

use super::*;
use crate::error::{RouteError, SpecError};
use crate::policy::{OverlayPolicy, PortPolicy, PortSet};
use crate::spec::RoutingSpec;

const ENVS: &str = r#"
[[envs]]
id = "acme/shop/prod"
ipv6 = ["2001:db8::10"]
ipv4 = "203.0.113.7"
ports = [5432, 6379]

[[envs]]
id = "acme/blog/prod"
ipv6 = ["2001:db8::20"]

[[instances]]
id = "i-1"
env = "acme/shop/prod"
process_type = "web"
addr = "fdaa::3"

[[instances]]
id = "i-2"
env = "acme/shop/prod"
process_type = "web"
addr = "fdaa::4"
healthy = false

[[instances]]
id = "i-0"
env = "acme/shop/prod"
process_type = "web"
addr = "fdaa::2"
"#;

fn route(id: &str, env: &str, host: &str, port: u16, protocol: &str) -> String {
    format!(
        "[[routes]]\nid = \"{id}\"\nenv = \"{env}\"\nhostname = \"{host}\"\nlisten_port = {port}\nprotocol = \"{protocol}\"\nbackend_port = 8443\n"
    )
}

fn build(routes: &[String]) -> Compiled {
    let text = format!("{ENVS}\n{}", routes.concat());
    let spec: RoutingSpec = toml::from_str(&text).unwrap();
    compile(&spec, &PortPolicy::default(), &OverlayPolicy::default(), 1)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn forwarded(table: &RouteTable, at: &str, sni: Option<&str>) -> Option<String> {
    match table.lookup(&addr(at), sni) {
        Decision::Forward(r) => Some(r.route.id.to_string()),
        Decision::Reject(_) => None,
    }
}

#[test]
fn exact_beats_wildcard_in_either_order() {
    for order in [["r-wild", "r-exact"], ["r-exact", "r-wild"]] {
        let routes: Vec<String> = order
            .iter()
            .map(|id| {
                let host = if *id == "r-wild" {
                    "*.example.com"
                } else {
                    "shop.example.com"
                };
                route(id, "acme/shop/prod", host, 443, "tls_passthrough")
            })
            .collect();
        let c = build(&routes);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let t = &c.table;
        assert_eq!(
            forwarded(t, "[2001:db8::10]:443", Some("SHOP.example.com.")).as_deref(),
            Some("r-exact")
        );
        assert_eq!(
            forwarded(t, "[2001:db8::10]:443", Some("blog.example.com")).as_deref(),
            Some("r-wild")
        );
        assert_eq!(
            t.lookup(&addr("[2001:db8::10]:443"), Some("a.b.example.com")),
            Decision::Reject(RejectReason::UnknownSni),
            "a wildcard matches exactly one label"
        );
        assert_eq!(
            t.lookup(&addr("[2001:db8::10]:443"), Some("example.com")),
            Decision::Reject(RejectReason::UnknownSni)
        );
    }
}

#[test]
fn no_sni_needs_exactly_one_route_on_the_pair() {
    let c = build(&[
        route(
            "r-1",
            "acme/shop/prod",
            "shop.example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-2",
            "acme/shop/prod",
            "api.example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-3",
            "acme/shop/prod",
            "shop.example.com",
            80,
            "tls_passthrough",
        ),
    ]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(
        c.table.lookup(&addr("[2001:db8::10]:443"), None),
        Decision::Reject(RejectReason::NoSniAmbiguous)
    );
    assert_eq!(
        forwarded(&c.table, "[2001:db8::10]:80", None).as_deref(),
        Some("r-3")
    );
    assert_eq!(
        forwarded(&c.table, "203.0.113.7:80", None).as_deref(),
        Some("r-3")
    );
}

#[test]
fn routes_are_served_on_every_env_address_policy_allows() {
    let c = build(&[
        route(
            "r-web",
            "acme/shop/prod",
            "shop.example.com",
            443,
            "tls_passthrough",
        ),
        route("r-pg", "acme/shop/prod", "db.example.com", 5432, "tcp_raw"),
    ]);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let addrs: Vec<String> = c.table.listeners().map(|(a, _)| a.to_string()).collect();
    assert_eq!(
        addrs,
        ["203.0.113.7:443", "203.0.113.7:5432", "[2001:db8::10]:443"]
    );
    assert_eq!(
        forwarded(&c.table, "203.0.113.7:5432", Some("anything")).as_deref(),
        Some("r-pg")
    );
    let web = &c.table.routes()[0];
    assert_eq!(
        *web.backends,
        [
            "fdaa::2".parse::<std::net::Ipv6Addr>().unwrap(),
            "fdaa::3".parse().unwrap()
        ],
        "healthy only, by instance id"
    );
}

fn route_error(c: &Compiled) -> &RouteError {
    let errs: Vec<&RouteError> = c.route_errors().collect();
    assert_eq!(errs.len(), 1, "{:?}", c.errors);
    errs[0]
}

#[test]
fn each_conflict_rejects_the_newcomer_and_names_it() {
    let base = route(
        "r-1",
        "acme/shop/prod",
        "shop.example.com",
        443,
        "tls_passthrough",
    );
    let cases: Vec<(String, &str)> = vec![
        (
            route(
                "r-2",
                "acme/blog/prod",
                "shop.example.com",
                443,
                "tls_passthrough",
            ),
            "hostname_in_two_envs",
        ),
        (
            route(
                "r-2",
                "acme/shop/prod",
                "shop.example.com",
                443,
                "tls_passthrough",
            ),
            "same_hostname",
        ),
        (
            route("r-2", "acme/shop/prod", "raw.example.com", 443, "tcp_raw"),
            "raw_and_tls",
        ),
        (
            route(
                "r-2",
                "acme/shop/prod",
                "x.example.com",
                25,
                "tls_passthrough",
            ),
            "port_not_allowed",
        ),
        (
            route("r-2", "acme/shop/prod", "x.example.com", 7000, "tcp_raw"),
            "port_not_allowed",
        ),
        (
            route(
                "r-2",
                "acme/none/prod",
                "x.example.com",
                443,
                "tls_passthrough",
            ),
            "unknown_env",
        ),
        (
            route(
                "r-2",
                "acme/shop/prod",
                "bad_name.example.com",
                443,
                "tls_passthrough",
            ),
            "bad_hostname",
        ),
        (
            route("r-2", "acme/shop/prod", "x.example.com", 443, "http"),
            "bad_protocol",
        ),
        (
            route(
                "r-1",
                "acme/shop/prod",
                "y.example.com",
                443,
                "tls_passthrough",
            ),
            "bad_id",
        ),
    ];
    for (second, kind) in cases {
        let c = build(&[base.clone(), second.clone()]);
        let err = route_error(&c);
        assert_eq!(err.kind(), kind, "{second}");
        assert!(err.to_string().contains("route r-"), "{err}");
        assert_eq!(
            forwarded(&c.table, "[2001:db8::10]:443", Some("shop.example.com")).as_deref(),
            Some("r-1")
        );
        assert_eq!(c.table.routes().len(), 1);
    }
}

#[test]
fn two_raw_routes_on_one_pair() {
    let c = build(&[
        route("r-a", "acme/shop/prod", "a.example.com", 5432, "tcp_raw"),
        route("r-b", "acme/shop/prod", "b.example.com", 5432, "tcp_raw"),
    ]);
    assert!(
        matches!(route_error(&c), RouteError::TwoRawRoutes { route, other, .. } if route == "r-b" && other == "r-a")
    );
}

#[test]
fn ipv4_required_without_ipv4() {
    let text = format!(
        "{ENVS}\n{}ipv4_required = true\n",
        route(
            "r-1",
            "acme/blog/prod",
            "blog.example.com",
            443,
            "tls_passthrough"
        )
    );
    let spec: RoutingSpec = toml::from_str(&text).unwrap();
    let c = compile(&spec, &PortPolicy::default(), &OverlayPolicy::default(), 1);
    assert!(matches!(route_error(&c), RouteError::Ipv4Required { route, .. } if route == "r-1"));
}

#[test]
fn ipv6_extra_ports_open_ipv6_and_deny_wins() {
    let spec: RoutingSpec = toml::from_str(&format!(
        "{ENVS}\n{}{}",
        route(
            "r-1",
            "acme/blog/prod",
            "blog.example.com",
            8443,
            "tls_passthrough"
        ),
        route("r-2", "acme/blog/prod", "mail.example.com", 6379, "tcp_raw"),
    ))
    .unwrap();
    let policy = PortPolicy {
        ipv6_extra_ports: PortSet::ports(&[8443, 6379]),
        deny_ports: PortSet::ports(&[25, 6379]),
        ..PortPolicy::default()
    };
    let c = compile(&spec, &policy, &OverlayPolicy::default(), 7);
    assert_eq!(c.table.version(), 7);
    assert_eq!(
        forwarded(&c.table, "[2001:db8::20]:8443", Some("blog.example.com")).as_deref(),
        Some("r-1")
    );
    assert!(matches!(
        route_error(&c),
        RouteError::PortNotAllowed { port: 6379, .. }
    ));
}

#[test]
fn bad_instances_are_named_and_never_backends() {
    let text = format!(
        "{ENVS}\n[[instances]]\nid = \"i-out\"\nenv = \"acme/shop/prod\"\nprocess_type = \"web\"\naddr = \"2001:db8::99\"\n{}",
        route("r-1", "acme/shop/prod", "shop.example.com", 443, "tls_passthrough")
    );
    let spec: RoutingSpec = toml::from_str(&text).unwrap();
    let c = compile(&spec, &PortPolicy::default(), &OverlayPolicy::default(), 1);
    assert_eq!(c.errors.len(), 1);
    assert!(matches!(&c.errors[0], SpecError::Instance(e) if e.to_string().contains("i-out")));
    assert_eq!(c.table.routes()[0].backends.len(), 2);
}

#[test]
fn compiling_is_deterministic() {
    let routes = [
        route(
            "r-1",
            "acme/shop/prod",
            "shop.example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-2",
            "acme/shop/prod",
            "*.example.com",
            443,
            "tls_passthrough",
        ),
    ];
    assert_eq!(build(&routes), build(&routes));
}

/// Enough routes on one listener to grow the SNI maps (which rehash from
/// the compile's stored hashes) several times; every name must still be
/// found, through the route's own hostname.
#[test]
fn thousands_of_routes_on_one_listener_are_all_found() {
    let routes: Vec<String> = (0..3000)
        .map(|i| {
            let host = if i % 2 == 0 {
                format!("app{i}.example.com")
            } else {
                format!("*.t{i}.example.com")
            };
            route(
                &format!("r-{i}"),
                "acme/shop/prod",
                &host,
                443,
                "tls_passthrough",
            )
        })
        .collect();
    let c = build(&routes);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let at = "[2001:db8::10]:443";
    for i in 0..3000 {
        let sni = if i % 2 == 0 {
            format!("APP{i}.example.com.")
        } else {
            format!("www.t{i}.example.com")
        };
        let want = format!("r-{i}");
        assert_eq!(forwarded(&c.table, at, Some(&sni)).as_deref(), Some(&*want));
    }
    assert_eq!(forwarded(&c.table, at, Some("app1.example.com")), None);
    assert_eq!(forwarded(&c.table, at, Some("t1.example.com")), None);
    let strings: Vec<_> = c.table.routes().iter().map(|r| &r.route).collect();
    assert!(strings.windows(2).all(|w| Arc::ptr_eq(
        &w[0].backend_process_type,
        &w[1].backend_process_type
    ) && w[0].env.as_str() == w[1].env.as_str()));
}

#[test]
fn an_id_stays_claimed_by_a_rejected_route() {
    let c = build(&[
        route(
            "r-1",
            "acme/none/prod",
            "a.example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-1",
            "acme/shop/prod",
            "b.example.com",
            443,
            "tls_passthrough",
        ),
    ]);
    let kinds: Vec<_> = c.route_errors().map(|e| e.kind()).collect();
    assert_eq!(kinds, ["unknown_env", "bad_id"]);
    assert!(c.table.routes().is_empty());
}

#[test]
fn one_hostname_on_two_ports_and_a_name_beside_its_wildcard() {
    let c = build(&[
        route(
            "r-1",
            "acme/shop/prod",
            "example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-2",
            "acme/shop/prod",
            "example.com",
            80,
            "tls_passthrough",
        ),
        // Same key as the exact name, another pattern: a different owner.
        route(
            "r-3",
            "acme/blog/prod",
            "*.example.com",
            443,
            "tls_passthrough",
        ),
        route(
            "r-4",
            "acme/shop/prod",
            "*.example.com",
            443,
            "tls_passthrough",
        ),
    ]);
    let err = route_error(&c);
    assert!(
        matches!(err, RouteError::HostnameInTwoEnvs { route, owner, .. } if route == "r-4" && owner == "r-3"),
        "{err}"
    );
    let t = &c.table;
    assert_eq!(
        forwarded(t, "[2001:db8::10]:443", Some("example.com")).as_deref(),
        Some("r-1")
    );
    assert_eq!(
        forwarded(t, "[2001:db8::10]:80", Some("example.com")).as_deref(),
        Some("r-2")
    );
    assert_eq!(
        forwarded(t, "[2001:db8::20]:443", Some("a.example.com")).as_deref(),
        Some("r-3")
    );
    assert_eq!(
        forwarded(t, "[2001:db8::10]:443", Some("a.example.com")),
        None
    );
}
