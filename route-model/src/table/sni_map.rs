//! The per-listener SNI index: exact names, then `*.suffix` wildcards, then
//! the no-SNI rule. No I/O.
//!
//! The maps hold route indices, not hostnames: an entry is a `u32` (plus
//! hashbrown's control byte), hashed and compared through the hostname the
//! route already owns. Keying by a copy of the name cost a heap string and a
//! 24-byte slot per route, about a fifth of a million-route table, and one
//! more allocation per route to compile. The price is that a lookup reads
//! the matching route's hostname through the table's route list, a route
//! the connection is about to use anyway.

use std::sync::Arc;

use ahash::RandomState;
use hashbrown::HashTable;

use super::{RejectReason, TableRoute};
use crate::name::{canonical_sni, HostPattern, MAX_NAME_LEN};

/// Routes of one TLS listener, keyed by canonical hostname.
///
/// Hashed with aHash, randomly keyed per table: several times faster than
/// SipHash on short names, and customers (who choose hostnames) cannot
/// precompute collisions.
#[derive(Debug, Clone)]
pub struct SniMap {
    state: RandomState,
    /// Indices of the routes whose hostname is an exact name.
    exact: HashTable<u32>,
    /// Indices of the `*.suffix` routes, keyed by the suffix.
    wildcard: HashTable<u32>,
}

/// What `pattern` is keyed by: the name, or the suffix after `*.`.
pub(crate) fn key(pattern: &HostPattern) -> &str {
    match pattern {
        HostPattern::Exact(h) | HostPattern::Wildcard(h) => h.as_str(),
    }
}

/// The hash of a key under `state`; the compile hashes each route once.
pub(crate) fn hash(state: &RandomState, key: &str) -> u64 {
    state.hash_one(key)
}

fn find(table: &HashTable<u32>, routes: &[Arc<TableRoute>], hash: u64, name: &str) -> Option<u32> {
    table
        .find(hash, |&i| key(&routes[i as usize].route.hostname) == name)
        .copied()
}

impl SniMap {
    /// An empty map whose keys are hashed with `state` (the compile's).
    pub(crate) fn new(state: RandomState) -> Self {
        SniMap {
            state,
            exact: HashTable::new(),
            wildcard: HashTable::new(),
        }
    }

    fn table(&self, pattern: &HostPattern) -> &HashTable<u32> {
        match pattern {
            HostPattern::Exact(_) => &self.exact,
            HostPattern::Wildcard(_) => &self.wildcard,
        }
    }

    /// Binds route `index`, whose pattern is not bound here yet (see
    /// [`Self::contains`]) and whose key hashes to `hashes[index]`; `hashes`
    /// holds the hash of every route's key, for growing without reading the
    /// routes.
    pub(crate) fn insert(&mut self, pattern: &HostPattern, index: u32, hashes: &[u64]) {
        let table = match pattern {
            HostPattern::Exact(_) => &mut self.exact,
            HostPattern::Wildcard(_) => &mut self.wildcard,
        };
        table.insert_unique(hashes[index as usize], index, |&i| hashes[i as usize]);
    }

    /// The route already bound to `pattern` (hashing to `hash`), if any.
    pub(crate) fn contains(
        &self,
        routes: &[Arc<TableRoute>],
        pattern: &HostPattern,
        hash: u64,
    ) -> Option<u32> {
        find(self.table(pattern), routes, hash, key(pattern))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Route indices bound here, in ascending order.
    pub fn indices(&self) -> impl Iterator<Item = u32> {
        let mut all: Vec<u32> = self.exact.iter().chain(&self.wildcard).copied().collect();
        all.sort_unstable();
        all.into_iter()
    }

    /// Exact beats wildcard; no SNI is served only by a lone route.
    /// `routes` is the table the indices point into.
    pub(crate) fn lookup(
        &self,
        routes: &[Arc<TableRoute>],
        sni: Option<&str>,
    ) -> Result<u32, RejectReason> {
        let Some(sni) = sni else {
            return match (self.exact.len(), self.wildcard.len()) {
                (1, 0) => Ok(*self.exact.iter().next().expect("len is 1")),
                (0, 1) => Ok(*self.wildcard.iter().next().expect("len is 1")),
                _ => Err(RejectReason::NoSniAmbiguous),
            };
        };
        let mut buf = [0u8; MAX_NAME_LEN];
        let name = canonical_sni(sni, &mut buf).ok_or(RejectReason::UnknownSni)?;
        if let Some(i) = find(&self.exact, routes, hash(&self.state, name), name) {
            return Ok(i);
        }
        match name.split_once('.') {
            Some((label, suffix)) if !label.is_empty() => {
                find(&self.wildcard, routes, hash(&self.state, suffix), suffix)
                    .ok_or(RejectReason::UnknownSni)
            }
            _ => Err(RejectReason::UnknownSni),
        }
    }
}

/// Equal when the same routes are bound (the hash keys may differ): with
/// the route lists of two tables equal, so are their lookups.
impl PartialEq for SniMap {
    fn eq(&self, other: &Self) -> bool {
        self.exact.len() == other.exact.len()
            && self.wildcard.len() == other.wildcard.len()
            && self.indices().eq(other.indices())
    }
}

impl Eq for SniMap {}
