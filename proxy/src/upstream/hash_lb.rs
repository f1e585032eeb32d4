//! Consistent hashing of requests onto endpoints, as Envoy's RING_HASH and MAGLEV load balancers
//! build it: the same host keys (`address:port`) hashed with xxHash64, so that a request hash
//! lands on the same endpoint for as long as the endpoint set stays the same, and only the keys
//! of a removed endpoint move when the set changes.
//!
//! The tables are pure data built from the endpoint list; [`HashTables`] keeps the last one of
//! each cluster and rebuilds it only when that cluster's endpoint list (after health and outlier
//! filtering) changes.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use xxhash_rust::xxh64::xxh64;

use crate::config::cluster::LbPolicy;

/// Envoy's `HashUtil::xxHash64` over a list of strings: each one hashed with the previous hash
/// as the seed.
pub fn xxhash_all<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut seed = 0;
    let mut any = false;
    for p in parts {
        seed = xxh64(p, seed);
        any = true;
    }
    if any { seed } else { xxh64(&[], 0) }
}

/// A ketama ring: sorted (hash, host index) entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    entries: Vec<(u64, usize)>,
}

impl Ring {
    /// Envoy's ring: every host gets entries in proportion to its weight, the lightest at least
    /// `ceil(min_size × its share)`, the ring at most `max_size` entries. Entry `i` of a host is
    /// the hash of `"<key>_<i>"`.
    pub fn build(hosts: &[(String, u32)], min_size: u64, max_size: u64) -> Ring {
        let total: f64 = hosts.iter().map(|(_, w)| f64::from(*w)).sum();
        if hosts.is_empty() || total <= 0.0 {
            return Ring { entries: vec![] };
        }
        let shares: Vec<f64> = hosts.iter().map(|(_, w)| f64::from(*w) / total).collect();
        let min_share = shares
            .iter()
            .copied()
            .filter(|s| *s > 0.0)
            .fold(1.0, f64::min);
        let scale = ((min_share * min_size as f64).ceil() / min_share).min(max_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize + hosts.len());
        let (mut current, mut target) = (0.0f64, 0.0f64);
        for (index, ((key, _), share)) in hosts.iter().zip(&shares).enumerate() {
            target += scale * share;
            let mut i = 0u64;
            while current < target {
                entries.push((xxh64(format!("{key}_{i}").as_bytes(), 0), index));
                i += 1;
                current += 1.0;
            }
        }
        entries.sort_unstable();
        Ring { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The host of the first entry at or after `hash` (wrapping). A retry that must avoid the
    /// previous host (`attempt` > 0) walks on that many entries, as Envoy does.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let at = self.entries.partition_point(|(h, _)| *h < hash) % self.entries.len();
        Some(self.entries[(at + attempt as usize) % self.entries.len()].1)
    }
}

/// A Maglev lookup table: `table_size` slots (a prime), each naming a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<usize>,
}

impl Maglev {
    /// Envoy's weighted Maglev: each host walks its own permutation of the slots (offset from
    /// `xxHash64(key, 0)`, skip from `xxHash64(key, 1)`) and takes the next free one; a host of
    /// a third of the largest weight takes a turn every third round.
    pub fn build(hosts: &[(String, u32)], table_size: u64) -> Maglev {
        // (index in the caller's list, key, weight) of the hosts that take traffic.
        let hosts: Vec<(usize, &str, u32)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, (k, w))| (i, k.as_str(), *w))
            .collect();
        if hosts.is_empty() || table_size < 2 {
            return Maglev { table: vec![] };
        }
        let size = table_size as usize;
        let total: f64 = hosts.iter().map(|(_, _, w)| f64::from(*w)).sum();
        struct Entry {
            index: usize,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut entries: Vec<Entry> = hosts
            .iter()
            .map(|&(index, key, w)| Entry {
                index,
                offset: xxh64(key.as_bytes(), 0) % table_size,
                skip: xxh64(key.as_bytes(), 1) % (table_size - 1) + 1,
                weight: f64::from(w) / total,
                target: 0.0,
                next: 0,
            })
            .collect();
        let max_weight = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let mut table = vec![usize::MAX; size];
        let mut filled = 0usize;
        let mut round = 0u64;
        while filled < size {
            for e in entries.iter_mut() {
                if filled == size {
                    break;
                }
                if (round as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut slot = ((e.offset + e.skip * e.next) % table_size) as usize;
                while table[slot] != usize::MAX {
                    e.next += 1;
                    slot = ((e.offset + e.skip * e.next) % table_size) as usize;
                }
                table[slot] = e.index;
                e.next += 1;
                filled += 1;
            }
            round += 1;
        }
        Maglev { table }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The host of slot `hash mod size`; a retry avoiding the previous host changes the hash a
    /// lot (Envoy: `hash ^ (~0 - attempt + 1)`).
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let hash = if attempt > 0 {
            hash ^ u64::from(attempt).wrapping_neg()
        } else {
            hash
        };
        Some(self.table[(hash % self.table.len() as u64) as usize])
    }
}

#[derive(Debug)]
enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

#[derive(Debug)]
struct Built {
    fingerprint: u64,
    table: Table,
}

/// A cluster's last table: part of the cluster's state, rebuilt when its hosts change.
#[derive(Debug, Default)]
pub struct HashTables {
    built: Mutex<Option<Arc<Built>>>,
}

impl HashTables {
    /// The index in `hosts` that `hash` picks under `policy` (RING_HASH or MAGLEV), building the
    /// cluster's table if its host list changed. `None` for other policies or no hosts. Hosts
    /// are hashed by their address text, as Envoy does; the text is only made on a rebuild.
    pub fn pick<H: Hash + std::fmt::Display>(
        &self,
        cluster: &str,
        policy: LbPolicy,
        hosts: &[(H, u32)],
        hash: u64,
        attempt: u32,
    ) -> Option<usize> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        hosts.hash(&mut h);
        policy.hash(&mut h);
        let fingerprint = h.finish();
        let cached = {
            let m = self.built.lock().unwrap_or_else(|e| e.into_inner());
            m.as_ref().filter(|b| b.fingerprint == fingerprint).cloned()
        };
        let built = match cached {
            Some(b) => b,
            None => {
                let hosts: Vec<(String, u32)> =
                    hosts.iter().map(|(k, w)| (k.to_string(), *w)).collect();
                let hosts = hosts.as_slice();
                let table = match policy {
                    LbPolicy::RingHash {
                        min_ring_size,
                        max_ring_size,
                    } => Table::Ring(Ring::build(hosts, min_ring_size, max_ring_size)),
                    LbPolicy::Maglev { table_size } => {
                        Table::Maglev(Maglev::build(hosts, table_size))
                    }
                    _ => return None,
                };
                tracing::debug!(cluster, hosts = hosts.len(), "consistent hash table built");
                let b = Arc::new(Built { fingerprint, table });
                *self.built.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                b
            }
        };
        match &built.table {
            Table::Ring(r) => r.pick(hash, attempt),
            Table::Maglev(m) => m.pick(hash, attempt),
        }
    }
}

#[cfg(test)]
mod tests;
