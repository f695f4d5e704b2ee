//! [`compile`]: a [`RoutingSpec`] plus policy in, a [`RouteTable`] and every
//! rejection out. Pure and deterministic: the same input always gives the
//! same table, whichever process compiles it.
//!
//! Precedence for conflicts is the order of the spec (the file's order, or
//! the order in which the control plane created the routes): a route
//! already placed keeps its hostname and its `(IP, port)`; a newcomer that
//! collides is rejected and named, and the rest still load. No I/O.

use std::collections::BTreeMap;

// Compile-time indexes hash ids and hostnames a million times for a big
// table: aHash instead of SipHash.
use ahash::{AHashMap as HashMap, AHashSet as HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::{Listener, RouteTable, SniMap, TableRoute};
use crate::env::{Env, EnvId};
use crate::error::{EnvError, InstanceError, RouteError, SpecError};
use crate::instance::Instance;
use crate::name::HostPattern;
use crate::policy::{OverlayPolicy, PortPolicy};
use crate::route::{Protocol, Route};
use crate::spec::RoutingSpec;

/// The outcome of [`compile`]: the table of everything that validated, and
/// every object that did not, in spec order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub table: RouteTable,
    pub errors: Vec<SpecError>,
}

impl Compiled {
    /// Route ids rejected, with their errors.
    pub fn route_errors(&self) -> impl Iterator<Item = &RouteError> {
        self.errors.iter().filter_map(|e| match e {
            SpecError::Route(r) => Some(r),
            _ => None,
        })
    }
}

/// Compiles `spec` under `policy` and `overlay` into table `version`.
pub fn compile(
    spec: &RoutingSpec,
    policy: &PortPolicy,
    overlay: &OverlayPolicy,
    version: u64,
) -> Compiled {
    let mut errors = Vec::new();
    let envs = envs(spec, &mut errors);
    let backends = backends(spec, overlay, &mut errors);

    let mut placer = Placer::default();
    let mut seen_ids = HashSet::new();
    let no_backends: Arc<[Ipv6Addr]> = Arc::from(Vec::new());
    let mut served: HashMap<(EnvId, u16), Arc<[SocketAddr]>> = HashMap::new();
    for route_spec in &spec.routes {
        let placed = Route::from_spec(route_spec).and_then(|route| {
            if !seen_ids.insert(route.id.clone()) {
                return Err(RouteError::Duplicate {
                    route: route_spec.id.clone(),
                });
            }
            let env = envs.get(&route.env).ok_or_else(|| RouteError::UnknownEnv {
                route: route_spec.id.clone(),
                env: route_spec.env.clone(),
            })?;
            let addrs = served
                .entry((route.env.clone(), route.listen_port))
                .or_insert_with(|| addresses(env, route.listen_port, policy).into())
                .clone();
            check_addresses(&route, env, &addrs)?;
            let key = (route.env.clone(), route.backend_process_type.clone());
            let route_backends = backends
                .get(&key)
                .cloned()
                .unwrap_or_else(|| no_backends.clone());
            placer.place(route, addrs, route_backends)
        });
        if let Err(e) = placed {
            errors.push(SpecError::Route(e));
        }
    }
    Compiled {
        table: RouteTable {
            version,
            routes: placer.routes,
            listeners: placer.listeners,
        },
        errors,
    }
}

fn envs(spec: &RoutingSpec, errors: &mut Vec<SpecError>) -> HashMap<EnvId, Env> {
    let mut envs = HashMap::with_capacity(spec.envs.len());
    for env_spec in &spec.envs {
        match Env::from_spec(env_spec) {
            Ok(env) if envs.contains_key(&env.id) => errors.push(
                EnvError::Duplicate {
                    env: env_spec.id.clone(),
                }
                .into(),
            ),
            Ok(env) => {
                envs.insert(env.id.clone(), env);
            }
            Err(e) => errors.push(e.into()),
        }
    }
    envs
}

/// `(env, process type)`: the instances a route may use.
type BackendKey = (EnvId, Arc<str>);

/// Healthy instance addresses by `(env, process type)`, in instance-id order.
fn backends(
    spec: &RoutingSpec,
    overlay: &OverlayPolicy,
    errors: &mut Vec<SpecError>,
) -> HashMap<BackendKey, Arc<[Ipv6Addr]>> {
    let mut ids = HashSet::with_capacity(spec.instances.len());
    let mut healthy: BTreeMap<BackendKey, Vec<(Arc<str>, Ipv6Addr)>> = BTreeMap::new();
    for inst_spec in &spec.instances {
        match Instance::from_spec(inst_spec, overlay) {
            Ok(inst) if !ids.insert(inst.id.clone()) => errors.push(
                InstanceError::Duplicate {
                    instance: inst_spec.id.clone(),
                }
                .into(),
            ),
            Ok(inst) if inst.healthy => healthy
                .entry((inst.env.clone(), inst.process_type.clone()))
                .or_default()
                .push((inst.id, inst.addr)),
            Ok(_) => {}
            Err(e) => errors.push(e.into()),
        }
    }
    healthy
        .into_iter()
        .map(|(key, mut list)| {
            list.sort();
            (key, list.into_iter().map(|(_, addr)| addr).collect())
        })
        .collect()
}

/// Where policy lets a route on `port` be served among `env`'s addresses,
/// sorted (computed once per env and port).
fn addresses(env: &Env, port: u16, policy: &PortPolicy) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(env.ipv6.len() + 1);
    if policy.allows_ipv6(port) {
        addrs.extend(
            env.ipv6
                .iter()
                .map(|ip| SocketAddr::new(IpAddr::V6(*ip), port)),
        );
    }
    if let (Some(ip), true) = (env.ipv4, policy.allows_ipv4(env, port)) {
        addrs.push(SocketAddr::new(IpAddr::V4(ip), port));
    }
    addrs.sort();
    addrs
}

/// The route-specific checks on where it would be served.
fn check_addresses(route: &Route, env: &Env, addrs: &[SocketAddr]) -> Result<(), RouteError> {
    if route.ipv4_required && env.ipv4.is_none() {
        return Err(RouteError::Ipv4Required {
            route: route.id.to_string(),
            env: env.id.to_string(),
        });
    }
    if addrs.is_empty() {
        return Err(RouteError::PortNotAllowed {
            route: route.id.to_string(),
            env: env.id.to_string(),
            port: route.listen_port,
        });
    }
    Ok(())
}

/// Accumulates routes onto listeners, rejecting collisions.
#[derive(Default)]
struct Placer {
    routes: Vec<Arc<TableRoute>>,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// Which env (and first route) owns each hostname pattern.
    owners: HashMap<HostPattern, (EnvId, Arc<str>)>,
}

impl Placer {
    fn place(
        &mut self,
        route: Route,
        served_on: Arc<[SocketAddr]>,
        backends: Arc<[Ipv6Addr]>,
    ) -> Result<(), RouteError> {
        if let Some((owner_env, owner)) = self.owners.get(&route.hostname) {
            if *owner_env != route.env {
                return Err(RouteError::HostnameInTwoEnvs {
                    route: route.id.to_string(),
                    hostname: route.hostname.to_string(),
                    owner: owner.to_string(),
                    owner_env: owner_env.to_string(),
                });
            }
        }
        for addr in served_on.iter() {
            self.check_free(&route, *addr)?;
        }
        let index = u32::try_from(self.routes.len()).expect("fewer than 2^32 routes");
        for addr in served_on.iter() {
            match route.protocol {
                Protocol::TcpRaw => {
                    self.listeners.insert(*addr, Listener::Raw(index));
                }
                Protocol::TlsPassthrough => {
                    let entry = self
                        .listeners
                        .entry(*addr)
                        .or_insert_with(|| Listener::Tls(SniMap::default()));
                    if let Listener::Tls(map) = entry {
                        let inserted = map.insert(&route.hostname, index);
                        debug_assert!(inserted.is_ok(), "check_free ran first");
                    }
                }
            }
        }
        self.owners
            .entry(route.hostname.clone())
            .or_insert_with(|| (route.env.clone(), route.id.clone()));
        self.routes.push(Arc::new(TableRoute {
            route,
            backends,
            served_on,
        }));
        Ok(())
    }

    /// Err if `route` may not join what is already bound to `addr`.
    fn check_free(&self, route: &Route, addr: SocketAddr) -> Result<(), RouteError> {
        let id = || route.id.to_string();
        let other_id = |i: u32| self.routes[i as usize].route.id.to_string();
        match (self.listeners.get(&addr), route.protocol) {
            (None, _) => Ok(()),
            (Some(Listener::Raw(other)), Protocol::TcpRaw) => Err(RouteError::TwoRawRoutes {
                route: id(),
                other: other_id(*other),
                addr,
            }),
            (Some(Listener::Raw(other)), Protocol::TlsPassthrough) => Err(RouteError::RawAndTls {
                route: id(),
                protocol: route.protocol.as_str(),
                other: other_id(*other),
                other_protocol: Protocol::TcpRaw.as_str(),
                addr,
            }),
            (Some(Listener::Tls(map)), Protocol::TcpRaw) => Err(RouteError::RawAndTls {
                route: id(),
                protocol: route.protocol.as_str(),
                other: map.indices().next().map(other_id).unwrap_or_default(),
                other_protocol: Protocol::TlsPassthrough.as_str(),
                addr,
            }),
            (Some(Listener::Tls(map)), Protocol::TlsPassthrough) => {
                match map.contains(&route.hostname) {
                    Some(other) => Err(RouteError::SameHostname {
                        route: id(),
                        hostname: route.hostname.to_string(),
                        other: other_id(other),
                        addr,
                    }),
                    None => Ok(()),
                }
            }
        }
    }
}
