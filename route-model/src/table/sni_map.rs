//! The per-listener SNI index: exact names, then `*.suffix` wildcards, then
//! the no-SNI rule. No I/O.

use std::collections::HashMap;

use ahash::RandomState;

use super::RejectReason;
use crate::name::{canonical_sni, HostPattern, MAX_NAME_LEN};

/// Routes of one TLS listener, keyed by canonical hostname.
///
/// Hashed with aHash, randomly keyed per process: several times faster
/// than SipHash on short names, and customers (who choose hostnames) cannot
/// precompute collisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SniMap {
    exact: HashMap<Box<str>, u32, RandomState>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<Box<str>, u32, RandomState>,
}

impl SniMap {
    /// Binds `pattern` to route `index`; returns the index already bound to
    /// the same pattern, if any (the caller rejects the newcomer).
    pub(crate) fn insert(&mut self, pattern: &HostPattern, index: u32) -> Result<(), u32> {
        let (map, key) = match pattern {
            HostPattern::Exact(h) => (&mut self.exact, h.as_str()),
            HostPattern::Wildcard(s) => (&mut self.wildcard, s.as_str()),
        };
        if let Some(&other) = map.get(key) {
            return Err(other);
        }
        map.insert(key.into(), index);
        Ok(())
    }

    pub(crate) fn contains(&self, pattern: &HostPattern) -> Option<u32> {
        match pattern {
            HostPattern::Exact(h) => self.exact.get(h.as_str()).copied(),
            HostPattern::Wildcard(s) => self.wildcard.get(s.as_str()).copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Route indices bound here, in ascending order.
    pub fn indices(&self) -> impl Iterator<Item = u32> {
        let mut all: Vec<u32> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .copied()
            .collect();
        all.sort_unstable();
        all.into_iter()
    }

    /// Exact beats wildcard; no SNI is served only by a lone route.
    pub fn lookup(&self, sni: Option<&str>) -> Result<u32, RejectReason> {
        let Some(sni) = sni else {
            return match (self.exact.len(), self.wildcard.len()) {
                (1, 0) => Ok(*self.exact.values().next().expect("len is 1")),
                (0, 1) => Ok(*self.wildcard.values().next().expect("len is 1")),
                _ => Err(RejectReason::NoSniAmbiguous),
            };
        };
        let mut buf = [0u8; MAX_NAME_LEN];
        let name = canonical_sni(sni, &mut buf).ok_or(RejectReason::UnknownSni)?;
        if let Some(&i) = self.exact.get(name) {
            return Ok(i);
        }
        match name.split_once('.') {
            Some((label, suffix)) if !label.is_empty() => self
                .wildcard
                .get(suffix)
                .copied()
                .ok_or(RejectReason::UnknownSni),
            _ => Err(RejectReason::UnknownSni),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(Box<str>, u32)>() + 1; // + control byte
        let keys: usize = self
            .exact
            .keys()
            .chain(self.wildcard.keys())
            .map(|k| k.len())
            .sum();
        (self.exact.capacity() + self.wildcard.capacity()) * entry + keys
    }
}
