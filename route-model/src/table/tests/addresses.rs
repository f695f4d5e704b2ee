//! The address rules of ADR 0007/0008, one test each: usable public
//! addresses, one env per dedicated IPv4, one env per overlay address,
//! `ipv4_required` served on the IPv4, and a well-formed `health_source`.

use crate::error::{EnvError, InstanceError, SpecError};
use crate::policy::{OverlayPolicy, PortPolicy};
use crate::spec::RoutingSpec;
use crate::table::{compile, Compiled};

fn env(id: &str, ipv6: &[&str], ipv4: Option<&str>, ports: &[u16]) -> String {
    let ipv6: Vec<String> = ipv6.iter().map(|a| format!("{a:?}")).collect();
    let ipv4 = ipv4.map(|a| format!("ipv4 = {a:?}\n")).unwrap_or_default();
    format!(
        "[[envs]]\nid = {id:?}\nipv6 = [{}]\n{ipv4}ports = {ports:?}\n",
        ipv6.join(", ")
    )
}

fn instance(id: &str, env: &str, addr: &str) -> String {
    format!("[[instances]]\nid = {id:?}\nenv = {env:?}\nprocess_type = \"web\"\naddr = {addr:?}\n")
}

fn route(id: &str, env: &str, port: u16, extra: &str) -> String {
    format!(
        "[[routes]]\nid = {id:?}\nenv = {env:?}\nhostname = \"{id}.example.com\"\nlisten_port = {port}\nprotocol = \"tls_passthrough\"\nbackend_port = 8443\n{extra}\n"
    )
}

fn build_with(policy: &PortPolicy, parts: &[String]) -> Compiled {
    let spec: RoutingSpec = toml::from_str(&parts.concat()).unwrap();
    compile(&spec, policy, &OverlayPolicy::default(), 1)
}

fn build(parts: &[String]) -> Compiled {
    build_with(&PortPolicy::default(), parts)
}

fn served(c: &Compiled) -> Vec<String> {
    c.table
        .routes()
        .iter()
        .map(|r| r.route.id.to_string())
        .collect()
}

fn kinds(c: &Compiled) -> Vec<(&'static str, String, &'static str)> {
    c.errors
        .iter()
        .map(|e| {
            let (object, id) = e.object();
            (object, id.to_owned(), e.kind())
        })
        .collect()
}

#[test]
fn unusable_public_addresses_reject_the_env_and_its_routes() {
    for (field, addr, why) in [
        ("ipv6", "::", "unspecified"),
        ("ipv6", "ff05::2", "multicast"),
        ("ipv6", "fe80::1", "link-local"),
        ("ipv6", "fdaa::9", "inside overlay.allowed_backends"),
        ("ipv4", "0.0.0.0", "unspecified"),
        ("ipv4", "239.1.2.3", "multicast"),
        ("ipv4", "169.254.0.7", "link-local"),
    ] {
        let (v6, v4) = if field == "ipv6" {
            (vec![addr], None)
        } else {
            (vec!["2001:db8::10"], Some(addr))
        };
        let c = build(&[
            env("acme/shop/prod", &v6, v4, &[]),
            env("acme/blog/prod", &["::1"], None, &[]),
            route("r-shop", "acme/shop/prod", 443, ""),
            route("r-blog", "acme/blog/prod", 443, ""),
        ]);
        assert_eq!(served(&c), ["r-blog"], "{addr}: loopback stays allowed");
        match &c.errors[0] {
            SpecError::Env(EnvError::UnusableAddr {
                env,
                field: f,
                why: w,
                ..
            }) => {
                assert_eq!((env.as_str(), *f, *w), ("acme/shop/prod", field, why));
            }
            other => panic!("{addr}: {other:?}"),
        }
        assert_eq!(c.errors[0].kind(), "env_addr_unusable");
        let message = c.errors[0].to_string();
        assert!(
            message.contains("env acme/shop/prod") && message.contains(field),
            "{message}"
        );
        assert_eq!(
            c.errors[1].kind(),
            "unknown_env",
            "its route is rejected too"
        );
    }
}

#[test]
fn public_prefixes_narrow_the_usable_addresses() {
    let policy: PortPolicy =
        toml::from_str("public_prefixes = [\"2001:db8:1::/48\", \"203.0.113.0/24\"]").unwrap();
    let c = build_with(
        &policy,
        &[
            env(
                "acme/in/prod",
                &["2001:db8:1::10"],
                Some("203.0.113.7"),
                &[],
            ),
            env("acme/out/prod", &["2001:db8:2::10"], None, &[]),
            env(
                "acme/v4out/prod",
                &["2001:db8:1::11"],
                Some("198.51.100.7"),
                &[],
            ),
            env("acme/lo/prod", &["::1"], None, &[]),
        ],
    );
    assert_eq!(
        kinds(&c),
        [
            ("env", "acme/out/prod".to_owned(), "env_addr_unusable"),
            ("env", "acme/v4out/prod".to_owned(), "env_addr_unusable"),
        ]
    );
    assert!(
        c.errors[1].to_string().contains("ipv4 198.51.100.7"),
        "{}",
        c.errors[1]
    );
    assert!(
        c.errors[1].to_string().contains("public_prefixes"),
        "{}",
        c.errors[1]
    );
}

#[test]
fn a_dedicated_ipv4_belongs_to_the_first_env_that_claims_it() {
    let c = build(&[
        env(
            "acme/shop/prod",
            &["2001:db8::10"],
            Some("203.0.113.7"),
            &[],
        ),
        env(
            "acme/blog/prod",
            &["2001:db8::20"],
            Some("203.0.113.7"),
            &[],
        ),
        env(
            "acme/docs/prod",
            &["2001:db8::30"],
            Some("203.0.113.8"),
            &[],
        ),
        route("r-shop", "acme/shop/prod", 443, ""),
        route("r-blog", "acme/blog/prod", 443, ""),
    ]);
    assert_eq!(served(&c), ["r-shop"]);
    match &c.errors[0] {
        SpecError::Env(EnvError::Ipv4Taken { env, owner, .. }) => {
            assert_eq!(
                (env.as_str(), owner.as_str()),
                ("acme/blog/prod", "acme/shop/prod")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.errors[0].kind(), "env_ipv4_taken");
    assert_eq!(c.errors.len(), 2, "{:?}", c.errors);

    // Spec order decides, not the ids' sort order.
    let c = build(&[
        env(
            "acme/blog/prod",
            &["2001:db8::20"],
            Some("203.0.113.7"),
            &[],
        ),
        env(
            "acme/shop/prod",
            &["2001:db8::10"],
            Some("203.0.113.7"),
            &[],
        ),
    ]);
    assert_eq!(c.errors[0].object(), ("env", "acme/shop/prod"));
}

#[test]
fn two_envs_instances_on_one_overlay_address_the_later_is_rejected() {
    let c = build(&[
        env("acme/shop/prod", &["2001:db8::10"], None, &[]),
        env("acme/blog/prod", &["2001:db8::20"], None, &[]),
        instance("i-shop", "acme/shop/prod", "fdaa::3"),
        instance("i-blog", "acme/blog/prod", "fdaa::3"),
        instance("i-shop-2", "acme/shop/prod", "fdaa::3"),
        route("r-blog", "acme/blog/prod", 443, ""),
    ]);
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    match &c.errors[0] {
        SpecError::Instance(InstanceError::AddrTaken {
            instance,
            owner,
            owner_env,
            ..
        }) => {
            assert_eq!(
                (instance.as_str(), owner.as_str(), owner_env.as_str()),
                ("i-blog", "i-shop", "acme/shop/prod")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.errors[0].kind(), "instance_addr_taken");
    assert!(
        c.table.routes()[0].backends.is_empty(),
        "the rejected instance is never a backend"
    );
}

#[test]
fn ipv4_required_is_served_on_the_ipv4_or_rejected() {
    let c = build(&[
        env(
            "acme/shop/prod",
            &["2001:db8::10"],
            Some("203.0.113.7"),
            &[5432],
        ),
        env("acme/blog/prod", &["2001:db8::20"], None, &[]),
        route("r-ok", "acme/shop/prod", 5432, "ipv4_required = true"),
        route("r-443", "acme/shop/prod", 443, "ipv4_required = true"),
        route(
            "r-unrequested",
            "acme/shop/prod",
            6379,
            "ipv4_required = true",
        ),
        route("r-denied", "acme/shop/prod", 25, "ipv4_required = true"),
        route("r-no-v4", "acme/blog/prod", 443, "ipv4_required = true"),
    ]);
    assert_eq!(served(&c), ["r-ok", "r-443"]);
    assert_eq!(
        kinds(&c),
        [
            ("route", "r-unrequested".to_owned(), "ipv4_port_not_allowed"),
            ("route", "r-denied".to_owned(), "ipv4_port_not_allowed"),
            ("route", "r-no-v4".to_owned(), "ipv4_required"),
        ]
    );
    let v4_only = &c.table.routes()[0].served_on;
    assert!(v4_only.iter().all(|a| a.is_ipv4()), "{v4_only:?}");

    // An extra IPv6 port does not make an ipv4_required route servable on
    // IPv6 alone.
    let policy: PortPolicy = toml::from_str("ipv6_extra_ports = [8443]").unwrap();
    let c = build_with(
        &policy,
        &[
            env(
                "acme/shop/prod",
                &["2001:db8::10"],
                Some("203.0.113.7"),
                &[],
            ),
            route("r-v6", "acme/shop/prod", 8443, "ipv4_required = true"),
        ],
    );
    assert_eq!(
        kinds(&c),
        [("route", "r-v6".to_owned(), "ipv4_port_not_allowed")]
    );
}

#[test]
fn a_health_source_needs_a_port_and_a_process_type() {
    let c = build(&[
        env("acme/shop/prod", &["2001:db8::10"], None, &[]),
        route(
            "r-ok",
            "acme/shop/prod",
            443,
            "health_source = { process_type = \"web\", port = 9000 }",
        ),
        route(
            "r-port",
            "acme/shop/prod",
            443,
            "health_source = { process_type = \"web\", port = 0 }",
        ),
        route(
            "r-type",
            "acme/shop/prod",
            443,
            "health_source = { process_type = \"\", port = 9000 }",
        ),
    ]);
    assert_eq!(served(&c), ["r-ok"]);
    assert_eq!(
        kinds(&c),
        [
            ("route", "r-port".to_owned(), "bad_health_source"),
            ("route", "r-type".to_owned(), "bad_health_source"),
        ]
    );
    assert!(c.errors[0].to_string().contains("health_source.port"));
    assert!(c.errors[1]
        .to_string()
        .contains("health_source.process_type"));
}

#[test]
fn loopback_instances_of_two_envs_may_share_an_address() {
    let parts = [
        env("acme/shop/prod", &["2001:db8::10"], None, &[]),
        env("acme/blog/prod", &["2001:db8::20"], None, &[]),
        instance("i-shop", "acme/shop/prod", "::1"),
        instance("i-blog", "acme/blog/prod", "::1"),
    ];
    let spec: RoutingSpec = toml::from_str(&parts.concat()).unwrap();
    let overlay = OverlayPolicy {
        allowed_backends: vec!["::1/128".parse().unwrap()],
    };
    let c = compile(&spec, &PortPolicy::default(), &overlay, 1);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
}
