//! [`compile`]: a [`RoutingSpec`] plus policy in, a [`RouteTable`] and every
//! rejection out. Pure and deterministic: the same input always gives the
//! same table, whichever process compiles it.
//!
//! Precedence for conflicts is the order of the spec (the file's order, or
//! the order in which the control plane created the routes): a route
//! already placed keeps its hostname and its `(IP, port)`; a newcomer that
//! collides is rejected and named, and the rest still load. No I/O.
//!
//! A million-route compile is bound by allocations and cache misses, so the
//! indexes it keeps while placing (ids seen, hostname owners) are
//! `HashTable<u32>`s of indices sized up front, hashed and compared through
//! the strings the spec and the routes already hold, and each hostname is
//! hashed once: its hash serves the owners index and the SNI maps, which
//! grow without reading the routes again.

use std::collections::BTreeMap;

// Compile-time indexes hash ids and hostnames a million times for a big
// table: aHash instead of SipHash.
use ahash::{AHashMap as HashMap, AHashSet as HashSet, RandomState};
use hashbrown::hash_table::{Entry, HashTable};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::sni_map::{self, SniMap};
use super::{Listener, RouteTable, TableRoute};
use crate::env::{Env, EnvId};
use crate::error::{EnvError, InstanceError, RouteError, SpecError};
use crate::instance::Instance;
use crate::policy::{OverlayPolicy, PortPolicy};
use crate::route::{Interner, Protocol, Route};
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
    let envs = envs(spec, policy, overlay, &mut errors);
    let (backends, instances) = backends(spec, overlay, &mut errors);

    let state = RandomState::new();
    let mut placer = Placer::new(spec.routes.len(), state.clone());
    let mut interner = Interner::default();
    // Ids claimed so far, as indices into `spec.routes`. A route rejected
    // later (unknown env, conflict) still claims its id.
    let mut ids: HashTable<u32> = HashTable::with_capacity(spec.routes.len());
    let id_hash = |i: &u32| state.hash_one(spec.routes[*i as usize].id.as_str());
    let no_backends: Arc<[Ipv6Addr]> = Arc::from(Vec::new());
    let mut served: HashMap<(EnvId, u16), Arc<[SocketAddr]>> = HashMap::new();
    for (i, route_spec) in spec.routes.iter().enumerate() {
        let i = u32::try_from(i).expect("fewer than 2^32 routes");
        let placed = Route::from_spec_in(route_spec, &mut interner).and_then(|route| {
            let claimed = ids.entry(
                id_hash(&i),
                |j| spec.routes[*j as usize].id == route_spec.id,
                id_hash,
            );
            match claimed {
                Entry::Occupied(_) => {
                    return Err(RouteError::Duplicate {
                        route: route_spec.id.clone(),
                    })
                }
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
            let env = envs.get(&route.env).ok_or_else(|| RouteError::UnknownEnv {
                route: route_spec.id.clone(),
                env: route_spec.env.clone(),
            })?;
            let addrs = served
                .entry((route.env.clone(), route.listen_port))
                .or_insert_with(|| addresses(env, route.listen_port, policy).into())
                .clone();
            check_addresses(&route, env, &addrs, policy)?;
            let key = (route.env.clone(), route.backend_process_type.clone());
            let route_backends = backends
                .get(&key)
                .cloned()
                .unwrap_or_else(|| no_backends.clone());
            let health_backends = match &route.health_source {
                Some(h) if h.process_type == route.backend_process_type => route_backends.clone(),
                Some(h) => backends
                    .get(&(route.env.clone(), h.process_type.clone()))
                    .cloned()
                    .unwrap_or_else(|| no_backends.clone()),
                None => no_backends.clone(),
            };
            placer.place(route, addrs, route_backends, health_backends)
        });
        if let Err(e) = placed {
            errors.push(SpecError::Route(e));
        }
    }
    placer.routes.shrink_to_fit();
    Compiled {
        table: RouteTable {
            version,
            routes: placer.routes,
            listeners: placer.listeners,
            instances: instances.into(),
        },
        errors,
    }
}

/// The valid envs. In spec order, so a dedicated IPv4 claimed twice stays
/// with the env that claimed it first.
fn envs(
    spec: &RoutingSpec,
    policy: &PortPolicy,
    overlay: &OverlayPolicy,
    errors: &mut Vec<SpecError>,
) -> HashMap<EnvId, Env> {
    let mut envs = HashMap::with_capacity(spec.envs.len());
    let mut ipv4_owners: HashMap<Ipv4Addr, EnvId> = HashMap::new();
    for env_spec in &spec.envs {
        let checked = Env::from_spec(env_spec).and_then(|env| {
            if envs.contains_key(&env.id) {
                return Err(EnvError::Duplicate {
                    env: env_spec.id.clone(),
                });
            }
            check_public(&env, policy, overlay)?;
            if let Some(owner) = env.ipv4.and_then(|a| ipv4_owners.get(&a)) {
                return Err(EnvError::Ipv4Taken {
                    env: env_spec.id.clone(),
                    addr: env.ipv4.expect("checked above"),
                    owner: owner.to_string(),
                });
            }
            Ok(env)
        });
        match checked {
            Ok(env) => {
                if let Some(a) = env.ipv4 {
                    ipv4_owners.insert(a, env.id.clone());
                }
                envs.insert(env.id.clone(), env);
            }
            Err(e) => errors.push(e.into()),
        }
    }
    envs
}

/// Err naming the first of `env`'s public addresses policy refuses.
fn check_public(env: &Env, policy: &PortPolicy, overlay: &OverlayPolicy) -> Result<(), EnvError> {
    let v6 = env.ipv6.iter().map(|a| ("ipv6", IpAddr::V6(*a)));
    let v4 = env.ipv4.iter().map(|a| ("ipv4", IpAddr::V4(*a)));
    for (field, addr) in v6.chain(v4) {
        if let Some(why) = policy.unusable(addr, overlay) {
            return Err(EnvError::UnusableAddr {
                env: env.id.to_string(),
                field,
                addr,
                why,
            });
        }
    }
    Ok(())
}

/// `(env, process type)`: the instances a route may use.
type BackendKey = (EnvId, Arc<str>);

/// Healthy instance addresses by `(env, process type)`, in instance-id
/// order, and every valid instance in spec order.
fn backends(
    spec: &RoutingSpec,
    overlay: &OverlayPolicy,
    errors: &mut Vec<SpecError>,
) -> (HashMap<BackendKey, Arc<[Ipv6Addr]>>, Vec<Instance>) {
    let mut valid = Vec::with_capacity(spec.instances.len());
    let mut ids = HashSet::with_capacity(spec.instances.len());
    // The first instance on each overlay address: an instance of another
    // env on the same address is rejected (it would receive this env's
    // clients). Loopback is exempt, as for env addresses: it is never an
    // overlay address in production, and on one machine (tests, the README)
    // every env's backends live on `::1`, told apart by port.
    let mut addr_owners: HashMap<Ipv6Addr, (Arc<str>, EnvId)> = HashMap::new();
    let mut healthy: BTreeMap<BackendKey, Vec<(Arc<str>, Ipv6Addr)>> = BTreeMap::new();
    for inst_spec in &spec.instances {
        let checked = Instance::from_spec(inst_spec, overlay).and_then(|inst| {
            if ids.contains(&inst.id) {
                return Err(InstanceError::Duplicate {
                    instance: inst_spec.id.clone(),
                });
            }
            match addr_owners.get(&inst.addr) {
                Some((owner, owner_env)) if *owner_env != inst.env && !inst.addr.is_loopback() => {
                    Err(InstanceError::AddrTaken {
                        instance: inst_spec.id.clone(),
                        addr: inst.addr,
                        owner: owner.to_string(),
                        owner_env: owner_env.to_string(),
                    })
                }
                _ => Ok(inst),
            }
        });
        match checked {
            Ok(inst) => {
                ids.insert(inst.id.clone());
                addr_owners
                    .entry(inst.addr)
                    .or_insert_with(|| (inst.id.clone(), inst.env.clone()));
                if inst.healthy {
                    healthy
                        .entry((inst.env.clone(), inst.process_type.clone()))
                        .or_default()
                        .push((inst.id.clone(), inst.addr));
                }
                valid.push(inst);
            }
            Err(e) => errors.push(e.into()),
        }
    }
    let healthy = healthy
        .into_iter()
        .map(|(key, mut list)| {
            list.sort();
            (key, list.into_iter().map(|(_, addr)| addr).collect())
        })
        .collect();
    (healthy, valid)
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
fn check_addresses(
    route: &Route,
    env: &Env,
    addrs: &[SocketAddr],
    policy: &PortPolicy,
) -> Result<(), RouteError> {
    if route.ipv4_required && env.ipv4.is_none() {
        return Err(RouteError::Ipv4Required {
            route: route.id.to_string(),
            env: env.id.to_string(),
        });
    }
    if route.ipv4_required && !policy.allows_ipv4(env, route.listen_port) {
        return Err(RouteError::Ipv4PortNotAllowed {
            route: route.id.to_string(),
            env: env.id.to_string(),
            port: route.listen_port,
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
struct Placer {
    /// Hashes every hostname key, here and in every [`SniMap`].
    state: RandomState,
    routes: Vec<Arc<TableRoute>>,
    /// The hash of each placed route's hostname key (`sni_map::key`).
    hashes: Vec<u64>,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// The first placed route of each hostname pattern: the env that owns it.
    owners: HashTable<u32>,
}

impl Placer {
    fn new(routes: usize, state: RandomState) -> Self {
        Placer {
            state,
            routes: Vec::with_capacity(routes),
            hashes: Vec::with_capacity(routes),
            listeners: BTreeMap::new(),
            owners: HashTable::with_capacity(routes),
        }
    }

    fn place(
        &mut self,
        route: Route,
        served_on: Arc<[SocketAddr]>,
        backends: Arc<[Ipv6Addr]>,
        health_backends: Arc<[Ipv6Addr]>,
    ) -> Result<(), RouteError> {
        let hash = sni_map::hash(&self.state, sni_map::key(&route.hostname));
        let routes = &self.routes;
        let owner = self
            .owners
            .find(hash, |&j| {
                routes[j as usize].route.hostname == route.hostname
            })
            .copied();
        if let Some(owner) = owner.map(|j| &routes[j as usize].route) {
            if owner.env != route.env {
                return Err(RouteError::HostnameInTwoEnvs {
                    route: route.id.to_string(),
                    hostname: route.hostname.to_string(),
                    owner: owner.id.to_string(),
                    owner_env: owner.env.to_string(),
                });
            }
        }
        for addr in served_on.iter() {
            self.check_free(&route, hash, *addr)?;
        }
        let index = u32::try_from(self.routes.len()).expect("fewer than 2^32 routes");
        self.hashes.push(hash);
        for addr in served_on.iter() {
            match route.protocol {
                Protocol::TcpRaw => {
                    self.listeners.insert(*addr, Listener::Raw(index));
                }
                Protocol::TlsPassthrough => {
                    let entry = self
                        .listeners
                        .entry(*addr)
                        .or_insert_with(|| Listener::Tls(SniMap::new(self.state.clone())));
                    if let Listener::Tls(map) = entry {
                        map.insert(&route.hostname, index, &self.hashes);
                    }
                }
            }
        }
        if owner.is_none() {
            let hashes = &self.hashes;
            self.owners
                .insert_unique(hash, index, |&j| hashes[j as usize]);
        }
        self.routes.push(Arc::new(TableRoute {
            route,
            backends,
            served_on,
            health_backends,
        }));
        Ok(())
    }

    /// Err if `route` (its hostname key hashing to `hash`) may not join
    /// what is already bound to `addr`.
    fn check_free(&self, route: &Route, hash: u64, addr: SocketAddr) -> Result<(), RouteError> {
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
                match map.contains(&self.routes, &route.hostname, hash) {
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
