//! The compiled route table: an immutable value built once per change by
//! [`compile`] and swapped atomically by its owner; every connection looks
//! up in one snapshot.
//!
//! Lookup is `(listener address, Option<SNI>) -> Decision`. On a TLS
//! listener an exact name beats a `*.suffix` wildcard (two hash probes, no
//! allocation); a hello without SNI is served only when exactly one route
//! is bound to the pair (ADR 0008), otherwise rejected. No I/O.

mod compile;
mod sni_map;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use compile::{compile, Compiled};
pub use sni_map::SniMap;

use crate::instance::Instance;
use crate::route::Route;

/// A route as placed in a table: the validated route, the healthy backends
/// it may use right now and the listener addresses it is served on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRoute {
    pub route: Route,
    /// Healthy instances of the route's env and `backend_process_type`, in
    /// instance-id order. Dial `[addr]:route.backend_port`. Shared by every
    /// route of that env and process type.
    pub backends: Arc<[Ipv6Addr]>,
    /// Every `(IP, port)` this route is bound to, sorted. Shared by every
    /// route of that env and port.
    pub served_on: Arc<[SocketAddr]>,
    /// Healthy instances of the route's env and `health_source.process_type`
    /// (empty without a health source): what the edge probes at
    /// `[addr]:health_source.port`. Shared like `backends`.
    pub health_backends: Arc<[Ipv6Addr]>,
}

/// What is bound to one `(IP, port)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// `tls_passthrough` routes, chosen by SNI.
    Tls(SniMap),
    /// The one `tcp_raw` route; no peeking.
    Raw(u32),
}

/// Why a connection matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Nothing is bound to the address (a listener of an older table).
    NoListener,
    /// The SNI matches no route on this listener.
    UnknownSni,
    /// No SNI, and the listener has more than one route.
    NoSniAmbiguous,
}

impl RejectReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoListener => "no_listener",
            RejectReason::UnknownSni => "unknown_sni",
            RejectReason::NoSniAmbiguous => "no_sni_ambiguous",
        }
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'t> {
    Forward(&'t Arc<TableRoute>),
    Reject(RejectReason),
}

/// An immutable, versioned route table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    version: u64,
    routes: Vec<Arc<TableRoute>>,
    listeners: BTreeMap<SocketAddr, Listener>,
    /// Every valid instance, healthy or not, in spec order.
    instances: Arc<[Instance]>,
}

impl RouteTable {
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every served route, in the order of the spec.
    pub fn routes(&self) -> &[Arc<TableRoute>] {
        &self.routes
    }

    /// Every valid instance (the platform's healthy and unhealthy ones), in
    /// spec order.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    /// Every listener address with what is bound to it, in address order.
    pub fn listeners(&self) -> impl Iterator<Item = (&SocketAddr, &Listener)> {
        self.listeners.iter()
    }

    pub fn listener(&self, addr: &SocketAddr) -> Option<&Listener> {
        self.listeners.get(addr)
    }

    pub fn route(&self, index: u32) -> &Arc<TableRoute> {
        &self.routes[index as usize]
    }

    /// The routes bound to `addr`, for display.
    pub fn routes_on(&self, addr: &SocketAddr) -> Vec<&Arc<TableRoute>> {
        match self.listeners.get(addr) {
            None => Vec::new(),
            Some(Listener::Raw(i)) => vec![self.route(*i)],
            Some(Listener::Tls(map)) => map.indices().map(|i| self.route(i)).collect(),
        }
    }

    /// True if `addr` needs a ClientHello peek before [`Self::lookup`].
    pub fn needs_peek(&self, addr: &SocketAddr) -> bool {
        matches!(self.listeners.get(addr), Some(Listener::Tls(_)))
    }

    /// Chooses the route for a connection accepted on `addr`. `sni` is the
    /// server name exactly as the client sent it (any case, maybe a
    /// trailing dot); ignored on a `tcp_raw` listener.
    pub fn lookup(&self, addr: &SocketAddr, sni: Option<&str>) -> Decision<'_> {
        match self.listeners.get(addr) {
            None => Decision::Reject(RejectReason::NoListener),
            Some(Listener::Raw(i)) => Decision::Forward(self.route(*i)),
            Some(Listener::Tls(map)) => match map.lookup(&self.routes, sni) {
                Ok(i) => Decision::Forward(self.route(i)),
                Err(reason) => Decision::Reject(reason),
            },
        }
    }
}
