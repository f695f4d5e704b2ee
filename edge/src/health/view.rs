//! Backend states for `/routes`: each route gains `health_source`,
//! `panic` and `backend_states` (every instance of its env and backend
//! process type, with its state and why), beside the fields it had.

use std::collections::HashMap;

use route_model::{Instance, RouteTable, TableRoute};
use serde_json::{json, Value};

use super::cell::{InstanceCell, Passive};
use super::select::Verdict;
use super::{Health, Snapshot};

/// Adds the health fields to every route of a `/routes` document built
/// from `table`.
pub(crate) fn annotate(body: &mut Value, table: &RouteTable, health: &Health) {
    let snap = health.snapshot();
    let by_id: HashMap<&str, &TableRoute> = table
        .routes()
        .iter()
        .map(|r| (&*r.route.id, &**r))
        .collect();
    let mut by_kind: HashMap<(&str, &str), Vec<&Instance>> = HashMap::new();
    for inst in table.instances() {
        by_kind
            .entry((inst.env.as_str(), &inst.process_type))
            .or_default()
            .push(inst);
    }
    let mut cache: HashMap<&str, Value> = HashMap::new();
    let Some(listeners) = body["listeners"].as_array_mut() else {
        return;
    };
    for listener in listeners {
        let Some(routes) = listener["routes"].as_array_mut() else {
            continue;
        };
        for entry in routes {
            let Some(route) = entry["id"].as_str().and_then(|id| by_id.get(id)) else {
                continue;
            };
            let fields = cache.entry(&route.route.id).or_insert_with(|| {
                let kind = (route.route.env.as_str(), &*route.route.backend_process_type);
                let instances = by_kind.get(&kind).map(Vec::as_slice).unwrap_or(&[]);
                route_fields(health, &snap, route, instances)
            });
            if let (Some(entry), Some(fields)) = (entry.as_object_mut(), fields.as_object()) {
                for (k, v) in fields {
                    entry.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn route_fields(
    health: &Health,
    snap: &Snapshot,
    route: &TableRoute,
    instances: &[&Instance],
) -> Value {
    let verdicts: Vec<(&Instance, Verdict, Option<&InstanceCell>)> = instances
        .iter()
        .map(|inst| {
            let cell = snap.cells.get(&inst.addr).map(|c| &**c);
            let verdict = match cell {
                Some(c) => health.verdict(snap, route, c, inst.healthy),
                None if inst.healthy => Verdict::Serving,
                None => Verdict::PlatformUnhealthy,
            };
            (*inst, verdict, cell)
        })
        .collect();
    let usable = |v: Verdict| matches!(v, Verdict::Serving | Verdict::Trial);
    let platform_up = verdicts.iter().any(|(i, _, _)| i.healthy);
    let panic = platform_up && !verdicts.iter().any(|(_, v, _)| usable(*v));
    let now = health.now_ms();
    let states: Vec<Value> = verdicts
        .iter()
        .map(|(inst, verdict, cell)| {
            let serving = usable(*verdict) || (panic && inst.healthy);
            let mut why = verdict.as_str().to_owned();
            match (verdict, cell) {
                (Verdict::ProbeDown, Some(c)) => {
                    let port = route.route.health_source.as_ref().map_or(0, |h| h.port);
                    let target = std::net::SocketAddrV6::new(c.addr, port, 0, 0);
                    if let Some(e) = snap.probes.get(&target).and_then(|p| p.last_error()) {
                        why = format!("{why}: {e}");
                    }
                }
                (Verdict::Ejected, Some(c)) => {
                    if let Passive::Ejected { until_ms } = c.passive(now) {
                        why = format!("{why}: {} ms left", until_ms.saturating_sub(now));
                    }
                }
                _ => {}
            }
            if panic && inst.healthy {
                why = format!("panic ({why})");
            }
            json!({
                "instance": &*inst.id,
                "addr": inst.addr.to_string(),
                "state": if serving { "serving" } else { "down" },
                "why": why,
            })
        })
        .collect();
    let health_source = route
        .route
        .health_source
        .as_ref()
        .map(|h| json!({ "process_type": &*h.process_type, "port": h.port }));
    json!({
        "health_source": health_source,
        "panic": panic,
        "backend_states": states,
    })
}
