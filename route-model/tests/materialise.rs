//! Applying the event log is deterministic: the whole log in one go, the
//! log in arbitrary chunks, and a JSON snapshot taken anywhere plus the
//! rest all give the same state and the same compiled table; and a log
//! with an event missing is refused with a gap, never half-applied; and
//! routes are listed oldest first, by the event that created them.

use std::collections::HashMap;

use proptest::prelude::*;
use route_model::{compile, Event, OverlayPolicy, PortPolicy, State};
use serde_json::{json, Value};

/// Turns random `(op, a, b)` triples into a valid event log: event ids
/// increase, `aggregate_seq` counts per aggregate.
fn log(ops: &[(u8, u8, u8)]) -> Vec<Event> {
    let mut seqs: HashMap<(String, String), u64> = HashMap::new();
    let mut out = Vec::new();
    for &(op, a, b) in ops {
        let env = format!("acme/app{}/prod", a % 3);
        let (agg_type, agg_id, ty, payload): (&str, String, &str, Value) = match op % 9 {
            0 => (
                "env",
                env.clone(),
                "env.configured",
                json!({"id": env, "ipv6": [format!("2001:db8::{}", a % 3 + 1)], "ipv4": null, "ports": []}),
            ),
            1 => ("env", env, "env.deleted", json!({})),
            2 | 3 => {
                let id = format!("r-{}", b % 6);
                let ty = if op % 9 == 2 {
                    "route.created"
                } else {
                    "route.updated"
                };
                let host = format!("h{}.example.com", (a ^ b) % 5);
                (
                    "route",
                    id.clone(),
                    ty,
                    json!({"id": id, "env": env, "hostname": host, "listen_port": 443,
                    "protocol": "tls_passthrough", "backend_port": 8000 + u16::from(b % 3)}),
                )
            }
            4 => ("route", format!("r-{}", b % 6), "route.deleted", json!({})),
            5 => (
                "instance",
                format!("i-{}", b % 4),
                "instance.up",
                json!({"env": env, "process_type": "web", "addr": format!("fdaa::{}", b % 4 + 1)}),
            ),
            6 => (
                "instance",
                format!("i-{}", b % 4),
                "instance.health",
                json!({"healthy": a % 2 == 0}),
            ),
            7 => (
                "instance",
                format!("i-{}", b % 4),
                "instance.down",
                json!({}),
            ),
            _ => (
                "route",
                format!("r-{}", b % 6),
                "route.renamed",
                json!({"to": "x"}),
            ),
        };
        let seq = seqs
            .entry((agg_type.to_owned(), agg_id.clone()))
            .or_insert(0);
        *seq += 1;
        out.push(Event {
            event_id: out.len() as u64 + 1,
            occurred_at: "2026-11-22T10:00:00Z".into(),
            aggregate_type: agg_type.into(),
            aggregate_id: agg_id,
            aggregate_seq: *seq,
            event_type: ty.into(),
            payload,
        });
    }
    out
}

fn table(state: &State) -> route_model::RouteTable {
    compile(
        &state.spec(),
        &PortPolicy::default(),
        &OverlayPolicy::default(),
        1,
    )
    .table
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn one_go_chunks_and_snapshots_agree(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..120),
        chunks in prop::collection::vec(1usize..20, 1..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let events = log(&ops);
        let mut whole = State::default();
        whole.apply_all(&events).unwrap();
        prop_assert_eq!(whole.cursor(), events.len() as u64);

        let mut chunked = State::default();
        let mut rest = &events[..];
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (head, tail) = rest.split_at((*size).min(rest.len()));
            chunked.apply_all(head).unwrap();
            rest = tail;
        }
        prop_assert_eq!(&chunked, &whole);

        let cut = cut.index(events.len() + 1);
        let mut early = State::default();
        early.apply_all(&events[..cut]).unwrap();
        let snapshot = serde_json::to_string(&early).unwrap();
        let mut resumed: State = serde_json::from_str(&snapshot).unwrap();
        // Redelivering from before the snapshot duplicates nothing.
        resumed.apply_all(&events[cut.saturating_sub(3)..]).unwrap();
        prop_assert_eq!(&resumed, &whole);
        prop_assert_eq!(table(&resumed), table(&whole));
        prop_assert_eq!(table(&chunked), table(&whole));
    }

    #[test]
    fn routes_are_listed_by_age_whatever_their_ids(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..120),
    ) {
        let events = log(&ops);
        let mut state = State::default();
        state.apply_all(&events).unwrap();
        let ages: Vec<u64> = state
            .spec()
            .routes
            .iter()
            .map(|r| state.route_created(&r.id).expect("a listed route has an age"))
            .collect();
        prop_assert!(ages.windows(2).all(|w| w[0] < w[1]), "{:?}", ages);
        // The age is the first upsert after the route's last delete.
        for r in state.spec().routes {
            let created = events
                .iter()
                .rposition(|e| e.aggregate_id == r.id && e.event_type == "route.deleted")
                .map_or(0, |i| i + 1);
            let first = events[created..]
                .iter()
                .find(|e| {
                    e.aggregate_id == r.id
                        && matches!(e.event_type.as_str(), "route.created" | "route.updated")
                })
                .map(|e| e.event_id);
            prop_assert_eq!(state.route_created(&r.id), first);
        }
    }

    #[test]
    fn a_missing_event_is_a_gap(
        ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 2..80),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut events = log(&ops);
        // Drop one event that has a later event on the same aggregate.
        let later = |i: usize, events: &[Event]| events[i + 1..].iter().any(|e| {
            e.aggregate_type == events[i].aggregate_type && e.aggregate_id == events[i].aggregate_id
        });
        let candidates: Vec<usize> = (0..events.len()).filter(|&i| later(i, &events)).collect();
        prop_assume!(!candidates.is_empty());
        let removed = candidates[pick.index(candidates.len())];
        events.remove(removed);
        let mut state = State::default();
        let before_gap = state.clone();
        prop_assert!(state.apply_all(&events).is_err());
        prop_assert_eq!(state, before_gap);
    }
}
