use serde_json::json;

use super::*;

fn ev(id: u64, agg: (&str, &str), seq: u64, ty: &str, payload: serde_json::Value) -> Event {
    Event {
        event_id: id,
        occurred_at: String::new(),
        aggregate_type: agg.0.into(),
        aggregate_id: agg.1.into(),
        aggregate_seq: seq,
        event_type: ty.into(),
        payload,
    }
}

const ENV: (&str, &str) = ("env", "acme/shop/prod");
const ROUTE: (&str, &str) = ("route", "r-1");
const INST: (&str, &str) = ("instance", "i-1");

fn env() -> Event {
    ev(
        1,
        ENV,
        1,
        "env.configured",
        json!({"id": "acme/shop/prod", "ipv6": ["2001:db8::1"], "ipv4": null, "ports": []}),
    )
}

fn route(id: u64, seq: u64, host: &str) -> Event {
    ev(
        id,
        ROUTE,
        seq,
        if seq == 1 {
            "route.created"
        } else {
            "route.updated"
        },
        json!({"id": "r-1", "env": "acme/shop/prod", "hostname": host, "listen_port": 443,
               "protocol": "tls_passthrough", "backend_port": 8443}),
    )
}

#[test]
fn each_event_type_materialises() {
    let mut s = State::default();
    s.apply(&env()).unwrap();
    s.apply(&route(2, 1, "a.example.com")).unwrap();
    s.apply(&ev(
        3,
        INST,
        1,
        "instance.up",
        json!({"env": "acme/shop/prod", "process_type": "web", "addr": "fdaa::1"}),
    ))
    .unwrap();
    s.apply(&ev(
        4,
        INST,
        2,
        "instance.health",
        json!({"healthy": false}),
    ))
    .unwrap();
    s.apply(&route(5, 2, "b.example.com")).unwrap();
    let spec = s.spec();
    assert_eq!(spec.envs.len(), 1);
    assert_eq!(spec.routes[0].hostname, "b.example.com");
    assert!(!spec.instances[0].healthy);
    assert_eq!(s.cursor(), 5);
    s.apply(&ev(6, ROUTE, 3, "route.deleted", json!({})))
        .unwrap();
    s.apply(&ev(7, INST, 3, "instance.down", json!({})))
        .unwrap();
    s.apply(&ev(8, ENV, 2, "env.deleted", json!({}))).unwrap();
    assert_eq!(s.spec(), RoutingSpec::default());
}

#[test]
fn a_gap_is_an_error_and_changes_nothing() {
    let mut s = State::default();
    s.apply(&env()).unwrap();
    let before = s.clone();
    let gap = s.apply(&route(3, 2, "a.example.com")).unwrap_err();
    assert_eq!((gap.expected, gap.got, gap.event_id), (1, 2, 3));
    assert_eq!(s, before);
    // All or nothing across a batch.
    let err = s.apply_all(&[route(2, 1, "a.example.com"), route(3, 3, "b.example.com")]);
    assert!(err.is_err());
    assert_eq!(s, before);
}

#[test]
fn duplicates_are_skipped_and_unknown_types_keep_the_sequence() {
    let mut s = State::default();
    s.apply(&env()).unwrap();
    assert_eq!(s.apply(&env()).unwrap(), Applied::Duplicate);
    assert_eq!(
        s.apply(&ev(2, ROUTE, 1, "route.renamed", json!({"x": 1})))
            .unwrap(),
        Applied::Skipped
    );
    assert_eq!(s.cursor(), 2);
    assert_eq!(
        s.apply(&route(3, 2, "a.example.com")).unwrap(),
        Applied::Changed
    );
    assert_eq!(s.spec().routes.len(), 1);
}

#[test]
fn invalid_payloads_are_recorded_not_materialised() {
    let mut s = State::default();
    let bad = ev(
        1,
        ROUTE,
        1,
        "route.created",
        json!({"id": "r-1", "hostname": 7}),
    );
    assert!(matches!(s.apply(&bad).unwrap(), Applied::Invalid(_)));
    let wrong_id = ev(2, ENV, 1, "env.configured", json!({"id": "other/app/env"}));
    assert!(matches!(
        s.apply(&wrong_id).unwrap(),
        Applied::Invalid(EventError::IdMismatch { .. })
    ));
    let sick = ev(3, INST, 1, "instance.health", json!({"healthy": true}));
    assert!(matches!(s.apply(&sick).unwrap(), Applied::Invalid(_)));
    assert_eq!(s.cursor(), 3);
    assert_eq!(s.spec(), RoutingSpec::default());
}

#[test]
fn the_snapshot_round_trips() {
    let mut s = State::default();
    s.apply_all(&[env(), route(2, 1, "a.example.com")]).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
}

fn env_b() -> Event {
    ev(
        2,
        ("env", "acme/blog/prod"),
        1,
        "env.configured",
        json!({"id": "acme/blog/prod", "ipv6": ["2001:db8::2"], "ipv4": null, "ports": []}),
    )
}

/// A route `rid` of `env` claiming `host`, as event `id` with `seq`.
fn claim(id: u64, rid: &str, seq: u64, env: &str, host: &str) -> Event {
    ev(
        id,
        ("route", rid),
        seq,
        if seq == 1 {
            "route.created"
        } else {
            "route.updated"
        },
        json!({"id": rid, "env": env, "hostname": host, "listen_port": 443,
               "protocol": "tls_passthrough", "backend_port": 8443}),
    )
}

fn route_ids(s: &State) -> Vec<String> {
    s.spec().routes.into_iter().map(|r| r.id).collect()
}

#[test]
fn routes_are_listed_oldest_first_and_an_update_keeps_the_age() {
    let mut s = State::default();
    s.apply_all(&[
        env(),
        env_b(),
        claim(3, "r-z", 1, "acme/shop/prod", "z.example.com"),
        claim(4, "r-a", 1, "acme/blog/prod", "a.example.com"),
        claim(5, "r-m", 1, "acme/blog/prod", "m.example.com"),
    ])
    .unwrap();
    assert_eq!(route_ids(&s), ["r-z", "r-a", "r-m"]);
    // An update does not make r-z newer.
    s.apply(&claim(6, "r-z", 2, "acme/shop/prod", "zz.example.com"))
        .unwrap();
    assert_eq!(route_ids(&s), ["r-z", "r-a", "r-m"]);
    assert_eq!(s.route_created("r-z"), Some(3));
    // Delete + create is a new route: it goes last.
    s.apply(&ev(7, ("route", "r-z"), 3, "route.deleted", json!({})))
        .unwrap();
    assert_eq!(s.route_created("r-z"), None);
    s.apply(&claim(8, "r-z", 4, "acme/shop/prod", "z.example.com"))
        .unwrap();
    assert_eq!(route_ids(&s), ["r-a", "r-m", "r-z"]);
    assert_eq!(s.route_created("r-z"), Some(8));
}

#[test]
fn compile_lets_the_older_route_keep_a_contested_hostname() {
    // r-z (env A) is created first, then r-a (env B) claims the same name:
    // by id order r-a would win; by age r-z does.
    let mut s = State::default();
    let outcomes = s
        .apply_all(&[
            env(),
            env_b(),
            claim(3, "r-z", 1, "acme/shop/prod", "shop.example.com"),
            claim(4, "r-a", 1, "acme/blog/prod", "shop.example.com"),
        ])
        .unwrap();
    // A conflict is not a move: the older claimant still serves.
    assert_eq!(outcomes[3], Applied::Changed);
    let compiled = crate::compile(
        &s.spec(),
        &crate::PortPolicy::default(),
        &crate::OverlayPolicy::default(),
        1,
    );
    let rejected: Vec<&str> = compiled.route_errors().map(|e| e.route_id()).collect();
    assert_eq!(rejected, ["r-a"]);
    assert_eq!(compiled.table.routes().len(), 1);
    assert_eq!(&*compiled.table.routes()[0].route.id, "r-z");
}

#[test]
fn a_hostname_moves_only_once_the_older_claimant_is_gone() {
    let mut s = State::default();
    s.apply_all(&[
        env(),
        env_b(),
        claim(3, "r-z", 1, "acme/shop/prod", "Shop.Example.com."),
        claim(4, "r-a", 1, "acme/blog/prod", "shop.example.com"),
    ])
    .unwrap();
    // Deleting the older route lets the newer one through: a move, at the
    // delete's event_id.
    let moved = s
        .apply(&ev(5, ("route", "r-z"), 2, "route.deleted", json!({})))
        .unwrap();
    assert_eq!(
        moved,
        Applied::HostnameMoved(vec![HostnameMove {
            hostname: "shop.example.com".into(),
            old_env: "acme/shop/prod".into(),
            new_env: "acme/blog/prod".into(),
            event_id: 5,
        }])
    );
    // Deleted and created again in the first env: moves back.
    s.apply(&ev(6, ("route", "r-a"), 2, "route.deleted", json!({})))
        .unwrap();
    let back = s
        .apply(&claim(7, "r-n", 1, "acme/shop/prod", "shop.example.com"))
        .unwrap();
    assert!(
        matches!(&back, Applied::HostnameMoved(m) if m[0].new_env == "acme/shop/prod" && m[0].event_id == 7),
        "{back:?}"
    );
    // Same env again, or a fresh name: no move.
    assert_eq!(
        s.apply(&claim(8, "r-n", 2, "acme/shop/prod", "shop.example.com"))
            .unwrap(),
        Applied::Changed
    );
    assert_eq!(
        s.apply(&claim(9, "r-q", 1, "acme/blog/prod", "new.example.com"))
            .unwrap(),
        Applied::Changed
    );
}
