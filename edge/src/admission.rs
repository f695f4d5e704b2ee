//! Connection admission: `max_connections` and `max_connections_per_source`.
//!
//! A source is an IPv4 address or an IPv6 /64 (an IPv4-mapped IPv6 address
//! counts as its IPv4): per-/128 keys are trivially bypassed by anyone
//! with a /64. The per-source table only holds sources with an open
//! connection, so it is bounded by `max_connections` and cannot be grown by
//! a flood. A [`Permit`] is held for the whole life of a connection,
//! handshaking or established, and releases its slots on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of the per-source table: enough that 2-16 accept loops rarely
/// contend, small enough to stay in cache.
const SHARDS: usize = 16;

/// The unit a per-source limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4(u32),
    /// The upper 64 bits of the address.
    V6Prefix64(u64),
}

impl SourceKey {
    pub(crate) fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(u32::from(v4)),
                None => SourceKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }

    fn shard(self) -> usize {
        let h = match self {
            SourceKey::V4(a) => u64::from(a),
            SourceKey::V6Prefix64(p) => p ^ (p >> 32),
        };
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    MaxConnections,
    PerSource,
}

/// The admission state shared by every accept loop.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    per_source: usize,
    open: AtomicUsize,
    sources: [Mutex<HashMap<SourceKey, usize>>; SHARDS],
}

/// One admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    key: SourceKey,
}

impl Admission {
    pub(crate) fn new(max_connections: usize, per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections,
            per_source,
            open: AtomicUsize::new(0),
            sources: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    /// Admits a connection from `peer`, or says which limit refuses it.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        let key = SourceKey::of(peer);
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refused::MaxConnections);
        }
        let mut shard = lock(&self.sources[key.shard()]);
        let count = shard.entry(key).or_insert(0);
        if *count >= self.per_source {
            if *count == 0 {
                shard.remove(&key);
            }
            drop(shard);
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerSource);
        }
        *count += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            key,
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    #[cfg(test)]
    /// Distinct sources with an open connection (bounded by `open()`).
    pub(crate) fn sources(&self) -> usize {
        self.sources.iter().map(|s| lock(s).len()).sum()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut shard = lock(&self.admission.sources[self.key.shard()]);
        if let Some(count) = shard.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.key);
            }
        }
        drop(shard);
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A poisoned shard only means another thread panicked mid-update of a
/// counter map; the map itself is still consistent enough to keep serving.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_sources_share_a_slash_64_and_mapped_is_ipv4() {
        assert_eq!(
            SourceKey::of(ip("2001:db8::1")),
            SourceKey::of(ip("2001:db8::ffff:2"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8::1")),
            SourceKey::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn per_source_and_global_limits_release_on_drop() {
        let a = Admission::new(3, 2);
        let p1 = a.admit(ip("2001:db8::1")).unwrap();
        let _p2 = a.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::3")).unwrap_err(), Refused::PerSource);
        let _p3 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            a.admit(ip("192.0.2.2")).unwrap_err(),
            Refused::MaxConnections
        );
        drop(p1);
        assert_eq!(a.open(), 2);
        let _p4 = a.admit(ip("2001:db8::4")).unwrap();
        assert_eq!(a.sources(), 2);
    }

    #[test]
    fn table_empties_when_connections_close() {
        let a = Admission::new(1000, 10);
        let permits: Vec<_> = (0..500u32)
            .map(|i| a.admit(IpAddr::V4(i.into())).unwrap())
            .collect();
        assert_eq!(a.sources(), 500);
        drop(permits);
        assert_eq!(a.sources(), 0);
        assert_eq!(a.open(), 0);
    }
}
