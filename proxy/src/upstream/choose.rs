//! Choosing the upstream address of a connection: cluster from the route target, endpoint from the
//! cluster (pure).

use std::fmt;
use std::net::SocketAddr;

use crate::config::Address;
use crate::config::Snapshot;
use crate::config::cluster::{
    Cluster, Discovery, Endpoint, LbPolicy, LoadAssignment, LocalityEndpoints,
};
use crate::config::route::Target;
use crate::upstream::hash_lb::HashTables;

/// The index a weighted choice lands on; `roll` is uniform in `0..total weight`.
fn weighted_index(weights: impl Iterator<Item = u32>, roll: u64) -> Option<usize> {
    let mut acc = 0u64;
    for (i, w) in weights.enumerate() {
        acc += u64::from(w);
        if roll < acc {
            return Some(i);
        }
    }
    None
}

/// A weighted choice; `roll` is uniform in `0..total weight`.
pub fn weighted(items: &[(String, u32)], roll: u64) -> Option<&str> {
    let mut acc = 0u64;
    for (name, w) in items {
        acc += u64::from(*w);
        if roll < acc {
            return Some(name);
        }
    }
    None
}

/// The cluster name a target picks (`roll` for weighted targets; `header` for header targets).
pub fn cluster_of<'a>(target: &'a Target, roll: u64, header: Option<&'a str>) -> Option<&'a str> {
    match target {
        Target::Cluster(c) => Some(c),
        Target::Weighted(items) => {
            let total: u64 = items.iter().map(|(_, w)| u64::from(*w)).sum();
            weighted(items, roll % total.max(1))
        }
        Target::Header(_) => header,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoUpstream {
    /// The cluster is not known (Envoy: 503 NC / tcp_proxy close).
    UnknownCluster(String),
    /// No healthy endpoint (Envoy: 503 UH).
    NoHealthyEndpoint(String),
}

/// Where to connect: an address, or a name to resolve first (DNS clusters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dest {
    Ip(SocketAddr),
    Name(String, u16),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Ip(a) => write!(f, "{a}"),
            Dest::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl Dest {
    /// The address to connect to; names go through the system resolver (first answer). The
    /// lookup is boxed: it is the rare case, and inline its state would enlarge every request's
    /// future that awaits this.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        match self {
            Dest::Ip(a) => Ok(*a),
            Dest::Name(h, p) => Box::pin(tokio::net::lookup_host((h.as_str(), *p)))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other(format!("{h}: no address"))),
        }
    }

    /// An endpoint's destination; `None` for addresses a connection cannot go to (pipes,
    /// internal listeners).
    fn of(e: &Endpoint) -> Option<Dest> {
        match &e.address {
            Address::Socket(s) => Some(Dest::Ip(*s)),
            Address::Dns(h, p) => Some(Dest::Name(h.clone(), *p)),
            _ => None,
        }
    }
}

/// Requests (HTTP) or connections (TCP) in flight per endpoint, for LEAST_REQUEST.
#[derive(Debug, Default)]
pub struct Loads {
    active: std::sync::Mutex<std::collections::HashMap<Dest, usize>>,
}

impl Loads {
    pub fn get(&self, d: &Dest) -> usize {
        let m = self.active.lock().unwrap_or_else(|e| e.into_inner());
        m.get(d).copied().unwrap_or(0)
    }

    /// Counts one more in flight on `d` until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>, d: &Dest) -> LoadGuard {
        let mut m = self.active.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(d.clone()).or_insert(0) += 1;
        LoadGuard {
            loads: self.clone(),
            dest: d.clone(),
        }
    }
}

pub struct LoadGuard {
    loads: std::sync::Arc<Loads>,
    dest: Dest,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut m = self.loads.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.dest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.dest);
            }
        }
    }
}

/// Envoy's overprovisioning factor (1.4): a priority is fully healthy at 72% healthy hosts.
const OVERPROVISIONING: f64 = 1.4;

/// The endpoints to balance over, with their weights: the usable ones (routable and not
/// ejected) of the best priority that has any; with `locality_roll`, of one locality of that
/// priority chosen by its weight first. A priority whose endpoints are all ejected hands its
/// traffic to the next one (locality failover).
///
/// Panic mode, as Envoy computes it: each priority's health is its usable share times the
/// overprovisioning factor (at most 100%); when their sum is under `panic_threshold` percent,
/// health is ignored and every endpoint of the first priority is used. A threshold of 0
/// disables it: with nothing usable there is no endpoint (503 UH).
fn candidates(
    localities: &[LocalityEndpoints],
    locality_roll: Option<u64>,
    ejected: &dyn Fn(&Dest) -> bool,
    panic_threshold: f64,
) -> Vec<(Dest, u32)> {
    // The common case: one priority, every endpoint usable, no locality weighting. The
    // endpoints are the candidates as they are.
    if locality_roll.is_none()
        && let Some(first) = localities.first()
    {
        let mut all = Vec::with_capacity(localities.iter().map(|l| l.endpoints.len()).sum());
        let uniform = localities.iter().all(|l| {
            l.priority == first.priority
                && l.endpoints.iter().all(|e| {
                    let Some(dest) = Dest::of(e) else {
                        return true;
                    };
                    let usable = e.health.routable() && !ejected(&dest);
                    all.push((dest, e.weight));
                    usable
                })
        });
        if uniform {
            return all;
        }
    }
    struct Ep {
        priority: u32,
        locality: usize,
        dest: Dest,
        weight: u32,
        usable: bool,
    }
    let mut eps: Vec<Ep> = Vec::with_capacity(localities.iter().map(|l| l.endpoints.len()).sum());
    for (i, l) in localities.iter().enumerate() {
        for e in &l.endpoints {
            let Some(dest) = Dest::of(e) else {
                continue;
            };
            let usable = e.health.routable() && !ejected(&dest);
            eps.push(Ep {
                priority: l.priority,
                locality: i,
                dest,
                weight: e.weight,
                usable,
            });
        }
    }
    let mut priorities: Vec<u32> = eps.iter().map(|e| e.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let health: f64 = priorities
        .iter()
        .map(|&p| {
            let (all, usable) = eps
                .iter()
                .filter(|e| e.priority == p)
                .fold((0usize, 0usize), |(a, u), e| {
                    (a + 1, u + usize::from(e.usable))
                });
            (OVERPROVISIONING * 100.0 * usable as f64 / all as f64).min(100.0)
        })
        .sum();
    let chosen = if panic_threshold > 0.0 && health.min(100.0) < panic_threshold {
        // Panic: every endpoint of the first priority, whatever its health.
        let first = priorities.first().copied();
        eps.retain(|e| Some(e.priority) == first);
        eps
    } else {
        let Some(best) = eps.iter().filter(|e| e.usable).map(|e| e.priority).min() else {
            return Vec::new();
        };
        eps.retain(|e| e.usable && e.priority == best);
        if let Some(roll) = locality_roll {
            // The localities with a usable endpoint, by weight; none weighted: all of them.
            let mut present: Vec<usize> = eps.iter().map(|e| e.locality).collect();
            present.dedup();
            let weights = present.iter().map(|&i| localities[i].weight.unwrap_or(0));
            let total: u64 = weights.clone().map(u64::from).sum();
            if total > 0
                && let Some(k) = weighted_index(weights, roll % total)
            {
                let locality = present[k];
                eps.retain(|e| e.locality == locality);
            }
        }
        eps
    };
    chosen.into_iter().map(|e| (e.dest, e.weight)).collect()
}

/// How many endpoints `cluster` has (all priorities).
pub fn endpoint_count(snap: &Snapshot, cluster: &Cluster) -> usize {
    snap.localities(cluster)
        .iter()
        .map(|l| l.endpoints.len())
        .sum()
}

/// The Istio workload (`istio.workload` metadata) of the endpoint `dest` of `cluster`.
pub fn endpoint_workload(snap: &Snapshot, cluster: &Cluster, dest: &Dest) -> Option<String> {
    snap.localities(cluster)
        .iter()
        .flat_map(|l| &l.endpoints)
        .find(|e| match (&e.address, dest) {
            (Address::Socket(a), Dest::Ip(d)) => a == d,
            (Address::Dns(h, p), Dest::Name(dh, dp)) => h == dh && p == dp,
            _ => false,
        })
        .and_then(|e| e.workload.clone())
}

/// What a load balancer may look at to choose an endpoint.
pub struct Pick<'a> {
    /// Advances round robin.
    pub counter: u64,
    /// Uniform random bits, for random choices.
    pub roll: u64,
    /// The request's hash (route `hash_policy`), for RING_HASH and MAGLEV; without one they
    /// choose at random, as Envoy does.
    pub hash: Option<u64>,
    /// Host selection attempt: > 0 when a retry looks for another host.
    pub attempt: u32,
    /// Requests in flight on an endpoint (LEAST_REQUEST).
    pub active: &'a (dyn Fn(&Dest) -> usize + Sync),
    /// Whether outlier detection has ejected an endpoint.
    pub ejected: &'a (dyn Fn(&Dest) -> bool + Sync),
    /// The consistent hashing tables (built on first use per endpoint set).
    pub tables: &'a HashTables,
}

impl Pick<'_> {
    /// A pick with nothing but random bits (mirrors, tests).
    pub fn random(roll: u64, tables: &HashTables) -> Pick<'_> {
        Pick {
            counter: roll,
            roll,
            hash: None,
            attempt: 0,
            active: &|_| 0,
            ejected: &|_| false,
            tables,
        }
    }
}

/// The endpoint to connect to.
pub fn endpoint(
    snap: &Snapshot,
    cluster: &Cluster,
    original_dst: SocketAddr,
    pick: &Pick<'_>,
) -> Result<Dest, NoUpstream> {
    let assignment: Option<&LoadAssignment> = match &cluster.discovery {
        Discovery::OriginalDst => return Ok(Dest::Ip(original_dst)),
        Discovery::Eds { service_name } => snap.endpoints.get(service_name).map(|a| a.as_ref()),
        Discovery::Static | Discovery::StrictDns | Discovery::LogicalDns => {
            cluster.load_assignment.as_ref()
        }
    };
    if let Some(dest) = assignment.and_then(|a| uniform_choice(cluster, a, pick)) {
        return Ok(dest);
    }
    endpoint_listed(
        assignment.map(|a| a.localities.as_slice()).unwrap_or(&[]),
        cluster,
        pick,
    )
}

/// The endpoint to use when the assignment's endpoints are [`Uniform`], found by index without
/// a list of candidates: the same choice [`endpoint_listed`] makes, since each endpoint's share
/// of the weight space is the same. `None` where the list is needed: locality weighting,
/// outlier detection (an ejection makes the endpoints unequal), consistent hashing (its table
/// is built from the list).
fn uniform_choice(cluster: &Cluster, a: &LoadAssignment, pick: &Pick<'_>) -> Option<Dest> {
    let u = a.uniform?;
    let w = u64::from(u.weight);
    let total = u.count as u64 * w;
    if total == 0
        || cluster.locality_weighted
        || cluster.outlier.is_some()
        || cluster.lb_policy.hashed()
    {
        return None;
    }
    let dest = |i: u64| a.nth(i as usize).and_then(Dest::of);
    let roll = pick.roll;
    match cluster.lb_policy {
        LbPolicy::Random => dest(roll % total / w),
        LbPolicy::LeastRequest if u.count > 1 => {
            let first = roll % total / w;
            let j = roll.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) % (total - w) / w;
            let second = if j >= first { j + 1 } else { j };
            let (a, b) = (dest(first)?, dest(second)?);
            Some(if (pick.active)(&b) < (pick.active)(&a) {
                b
            } else {
                a
            })
        }
        _ => dest(pick.counter % total / w),
    }
}

/// The endpoint to connect to, chosen from the list of candidates.
fn endpoint_listed(
    localities: &[LocalityEndpoints],
    cluster: &Cluster,
    pick: &Pick<'_>,
) -> Result<Dest, NoUpstream> {
    let roll = pick.roll;
    let list = candidates(
        localities,
        cluster.locality_weighted.then(|| roll.rotate_left(17)),
        pick.ejected,
        cluster.panic_threshold,
    );
    let total: u64 = list.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return Err(NoUpstream::NoHealthyEndpoint(cluster.name.clone()));
    }
    // The item at `pos` in the weight space, skipping `skip`.
    let at = |pos: u64, skip: Option<usize>| {
        let mut acc = 0;
        for (i, (_, w)) in list.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            acc += u64::from(*w);
            if pos < acc {
                return Some(i);
            }
        }
        None
    };
    let chosen = match cluster.lb_policy {
        LbPolicy::Random => at(roll % total, None),
        // LEAST_REQUEST: the less loaded of two distinct weighted random choices (Envoy's power
        // of two choices; distinct, so that two endpoints are always compared).
        LbPolicy::LeastRequest if list.len() > 1 => {
            let first = at(roll % total, None);
            let rest = first
                .map(|i| total - u64::from(list[i].1))
                .unwrap_or(total)
                .max(1);
            let second = at(
                roll.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) % rest,
                first,
            );
            match (first, second) {
                (Some(a), Some(b)) if (pick.active)(&list[b].0) < (pick.active)(&list[a].0) => {
                    Some(b)
                }
                (a, _) => a,
            }
        }
        policy if policy.hashed() => pick.tables.pick(
            &cluster.name,
            policy,
            &list,
            pick.hash.unwrap_or(roll),
            pick.attempt,
        ),
        // Weighted round robin as a position in the weights.
        _ => at(pick.counter % total, None),
    };
    chosen
        .map(|i| list[i].0.clone())
        .ok_or_else(|| NoUpstream::NoHealthyEndpoint(cluster.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::{Endpoint, Health, LoadAssignment, Locality};
    use std::sync::Arc;

    /// A pick by counter and roll only.
    fn simple(counter: u64, roll: u64, tables: &HashTables) -> Pick<'_> {
        Pick {
            counter,
            roll,
            ..Pick::random(roll, tables)
        }
    }

    fn cluster(discovery: Discovery) -> Cluster {
        Cluster {
            name: "c".into(),
            discovery,
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: std::time::Duration::from_secs(1),
            load_assignment: None,
            tls: false,
            bind_source: None,
            upstream_protocol: Default::default(),
            locality_weighted: false,
            panic_threshold: 50.0,
            limits: Default::default(),
            service: None,
            outlier: None,
            idle_timeout: None,
            ignored: vec![],
        }
    }

    fn ep(addr: &str, health: Health, weight: u32) -> Endpoint {
        Endpoint {
            address: Address::Socket(addr.parse().unwrap()),
            health,
            weight,
            workload: None,
        }
    }

    #[test]
    fn eds_round_robin_skips_unhealthy_and_prefers_priority_zero() {
        let mut snap = Snapshot::default();
        snap.endpoints.insert(
            "svc".into(),
            Arc::new(LoadAssignment::new(
                "svc".into(),
                vec![
                    LocalityEndpoints {
                        locality: Locality::default(),
                        priority: 0,
                        weight: None,
                        endpoints: vec![
                            ep("10.0.0.1:80", Health::Healthy, 1),
                            ep("10.0.0.2:80", Health::Unhealthy, 1),
                            ep("10.0.0.3:80", Health::Unknown, 1),
                        ],
                    },
                    LocalityEndpoints {
                        locality: Locality::default(),
                        priority: 1,
                        weight: None,
                        endpoints: vec![ep("10.0.1.1:80", Health::Healthy, 1)],
                    },
                ],
            )),
        );
        let c = cluster(Discovery::Eds {
            service_name: "svc".into(),
        });
        let dst = "1.1.1.1:1".parse().unwrap();
        let t = HashTables::default();
        let picks: Vec<String> = (0..4)
            .map(|i| {
                endpoint(&snap, &c, dst, &simple(i, 0, &t))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            picks,
            ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.1:80", "10.0.0.3:80"]
        );
        let missing = cluster(Discovery::Eds {
            service_name: "nope".into(),
        });
        assert_eq!(
            endpoint(&snap, &missing, dst, &simple(0, 0, &t)),
            Err(NoUpstream::NoHealthyEndpoint("c".into()))
        );
        assert_eq!(
            endpoint(
                &snap,
                &cluster(Discovery::OriginalDst),
                dst,
                &simple(0, 0, &t)
            ),
            Ok(Dest::Ip(dst))
        );
    }

    #[test]
    fn an_ejected_priority_fails_over_to_the_next_and_all_ejected_is_panic() {
        let group = |priority, addr: &str| LocalityEndpoints {
            locality: Locality::default(),
            priority,
            weight: None,
            endpoints: vec![ep(addr, Health::Healthy, 1)],
        };
        let mut c = cluster(Discovery::Static);
        c.load_assignment = Some(LoadAssignment::new(
            "c".into(),
            vec![
                group(0, "10.0.0.1:80"),
                group(1, "10.0.1.1:80"),
                group(2, "10.0.2.1:80"),
            ],
        ));
        assert_eq!(reached(&c, &[]), ["10.0.0.1:80"]);
        assert_eq!(reached(&c, &["10.0.0.1:80"]), ["10.0.1.1:80"]);
        assert_eq!(
            reached(&c, &["10.0.0.1:80", "10.0.1.1:80"]),
            ["10.0.2.1:80"]
        );
        // Everything ejected: the first priority serves anyway.
        assert_eq!(
            reached(&c, &["10.0.0.1:80", "10.0.1.1:80", "10.0.2.1:80"]),
            ["10.0.0.1:80"]
        );
    }

    /// The endpoints 30 picks of `c` reach (sorted, once each), with `out` ejected (by outlier
    /// detection, which the cluster then has).
    fn reached(c: &Cluster, out: &[&str]) -> Vec<String> {
        let mut c = c.clone();
        c.outlier.get_or_insert(crate::config::cluster::Outlier {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: None,
            base_ejection: std::time::Duration::from_secs(30),
            max_ejection_percent: 10,
        });
        let c = &c;
        let dst = "1.1.1.1:1".parse().unwrap();
        let t = HashTables::default();
        let ejected = |d: &Dest| out.contains(&d.to_string().as_str());
        let mut seen: Vec<String> = (0..30)
            .filter_map(|i| {
                let p = Pick {
                    ejected: &ejected,
                    ..simple(i, i, &t)
                };
                endpoint(&Snapshot::default(), c, dst, &p)
                    .ok()
                    .map(|d| d.to_string())
            })
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    #[test]
    fn the_panic_threshold_decides_when_health_is_ignored() {
        let mut c = cluster(Discovery::Static);
        c.load_assignment = Some(LoadAssignment::new(
            "c".into(),
            vec![LocalityEndpoints {
                locality: Locality::default(),
                priority: 0,
                weight: None,
                endpoints: vec![
                    ep("10.0.0.1:80", Health::Healthy, 1),
                    ep("10.0.0.2:80", Health::Healthy, 1),
                    ep("10.0.0.3:80", Health::Healthy, 1),
                ],
            }],
        ));
        // One of three out: 67% × 1.4 is healthy enough.
        assert_eq!(
            reached(&c, &["10.0.0.1:80"]),
            ["10.0.0.2:80", "10.0.0.3:80"]
        );
        // Two out: 33% × 1.4 = 47% < 50%: panic, all three serve.
        assert_eq!(reached(&c, &["10.0.0.1:80", "10.0.0.2:80"]).len(), 3);
        // Istio's default with outlier detection (minHealthPercent 0): no panic, ever.
        c.panic_threshold = 0.0;
        assert_eq!(
            reached(&c, &["10.0.0.1:80", "10.0.0.2:80"]),
            ["10.0.0.3:80"]
        );
        let all = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        assert!(reached(&c, &all).is_empty(), "no healthy upstream");
    }

    #[tokio::test]
    async fn dns_endpoints_are_names_resolved_when_connecting() {
        let mut c = cluster(Discovery::StrictDns);
        c.load_assignment = Some(LoadAssignment::new(
            "c".into(),
            vec![LocalityEndpoints {
                locality: Locality::default(),
                priority: 0,
                weight: None,
                endpoints: vec![Endpoint {
                    address: Address::Dns("localhost".into(), 8080),
                    health: Health::Healthy,
                    weight: 1,
                    workload: None,
                }],
            }],
        ));
        let dst = "1.1.1.1:1".parse().unwrap();
        let t = HashTables::default();
        let d = endpoint(&Snapshot::default(), &c, dst, &simple(0, 0, &t)).unwrap();
        assert_eq!(d, Dest::Name("localhost".into(), 8080));
        let a = d.resolve().await.unwrap();
        assert!(a.ip().is_loopback() && a.port() == 8080, "{a}");
        assert!(
            Dest::Name("no-such-host.invalid".into(), 1)
                .resolve()
                .await
                .is_err()
        );
    }

    /// How many of 1000 picks (spread rolls; the counter is the pick's index) land on `target`.
    fn picks_of(c: &Cluster, target: &str, active: &(dyn Fn(&Dest) -> usize + Sync)) -> usize {
        let target = Dest::Ip(target.parse().unwrap());
        let dst = "1.1.1.1:1".parse().unwrap();
        let snap = Snapshot::default();
        let t = HashTables::default();
        (0..1000u64)
            .map(|r| {
                let roll = r.wrapping_mul(0x2545_F491_4F6C_DD1D);
                let pick = Pick {
                    active,
                    ..simple(r, roll, &t)
                };
                endpoint(&snap, c, dst, &pick).unwrap()
            })
            .filter(|d| *d == target)
            .count()
    }

    fn locality(zone: &str, weight: Option<u32>, addrs: &[&str]) -> LocalityEndpoints {
        LocalityEndpoints {
            locality: Locality {
                zone: zone.into(),
                ..Locality::default()
            },
            priority: 0,
            weight,
            endpoints: addrs.iter().map(|a| ep(a, Health::Healthy, 1)).collect(),
        }
    }

    /// Endpoints usable alike are chosen by index, without a candidate list; the choice is
    /// the one the list would have made, for every policy that takes that path.
    #[test]
    fn uniform_endpoints_are_chosen_as_the_list_would() {
        let tables = HashTables::default();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..2_000 {
            let weight = rng.u32(1..4);
            let localities: Vec<LocalityEndpoints> = (0..rng.usize(1..4))
                .map(|l| LocalityEndpoints {
                    endpoints: (0..rng.usize(1..5))
                        .map(|e| ep(&format!("10.0.{l}.{e}:80"), Health::Healthy, weight))
                        .collect(),
                    ..locality("", None, &[])
                })
                .collect();
            let mut c = cluster(Discovery::Static);
            c.lb_policy = [
                LbPolicy::RoundRobin,
                LbPolicy::Random,
                LbPolicy::LeastRequest,
            ][rng.usize(..3)];
            c.load_assignment = Some(LoadAssignment::new("c".into(), localities.clone()));
            assert!(c.load_assignment.as_ref().unwrap().uniform.is_some());
            let busy: Vec<u8> = (0..20).map(|_| rng.u8(..3)).collect();
            let active = |d: &Dest| match d {
                Dest::Ip(std::net::SocketAddr::V4(a)) => {
                    let [_, _, l, e] = a.ip().octets();
                    usize::from(busy[usize::from(l) * 5 + usize::from(e)])
                }
                Dest::Ip(_) => 0,
                Dest::Name(..) => 0,
            };
            let pick = Pick {
                counter: rng.u64(..),
                roll: rng.u64(..),
                active: &active,
                ..Pick::random(0, &tables)
            };
            let assignment = c.load_assignment.as_ref().unwrap();
            let fast = uniform_choice(&c, assignment, &pick);
            assert!(fast.is_some(), "chosen without the list: {c:?}");
            let dst = "1.1.1.1:1".parse().unwrap();
            assert_eq!(endpoint(&Snapshot::default(), &c, dst, &pick).ok(), fast);
            assert_eq!(fast, endpoint_listed(&localities, &c, &pick).ok(), "{c:?}");
        }
        // An unhealthy endpoint, or unequal weights, make an assignment not uniform.
        let mixed = |h: Health, w: u32| {
            LoadAssignment::new(
                "c".into(),
                vec![LocalityEndpoints {
                    endpoints: vec![
                        ep("10.0.0.1:80", Health::Healthy, 1),
                        ep("10.0.0.2:80", h, w),
                    ],
                    ..locality("", None, &[])
                }],
            )
            .uniform
        };
        assert!(mixed(Health::Healthy, 1).is_some());
        assert!(mixed(Health::Unhealthy, 1).is_none());
        assert!(mixed(Health::Healthy, 2).is_none());
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two_choices() {
        let mut c = cluster(Discovery::Static);
        c.lb_policy = LbPolicy::LeastRequest;
        c.load_assignment = Some(LoadAssignment::new(
            "c".into(),
            vec![locality("", None, &["10.0.0.1:80", "10.0.0.2:80"])],
        ));
        let busy = Dest::Ip("10.0.0.1:80".parse().unwrap());
        // With .1 busy, the idle .2 always wins: the two choices are distinct.
        assert_eq!(
            picks_of(&c, "10.0.0.1:80", &|d| usize::from(*d == busy) * 5),
            0
        );
        // Unloaded: both endpoints get traffic.
        let idle = picks_of(&c, "10.0.0.1:80", &|_| 0);
        assert!((400..=600).contains(&idle), "{idle}");
    }

    #[test]
    fn locality_weights_pick_the_locality_first() {
        let mut c = cluster(Discovery::Static);
        c.locality_weighted = true;
        c.load_assignment = Some(LoadAssignment::new(
            "c".into(),
            vec![
                locality("a", Some(80), &["10.0.0.1:80"]),
                locality("b", Some(20), &["10.0.0.2:80"]),
            ],
        ));
        let b = picks_of(&c, "10.0.0.2:80", &|_| 0);
        assert!((150..=250).contains(&b), "about 20% to zone b: {b}");
    }

    #[test]
    fn hashed_policies_follow_the_request_hash_and_skip_ejected_hosts() {
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let snap = Snapshot::default();
        let dst = "1.1.1.1:1".parse().unwrap();
        for policy in [
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 << 20,
            },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let mut c = cluster(Discovery::Static);
            c.lb_policy = policy;
            c.load_assignment = Some(LoadAssignment::new(
                "c".into(),
                vec![locality("", None, &addrs)],
            ));
            let t = HashTables::default();
            let by_hash = |hash: u64, roll: u64, ejected: &(dyn Fn(&Dest) -> bool + Sync)| {
                let pick = Pick {
                    hash: Some(hash),
                    ejected,
                    ..simple(roll, roll, &t)
                };
                endpoint(&snap, &c, dst, &pick).unwrap()
            };
            let mut seen = std::collections::HashSet::new();
            let (mut kept, mut stayed) = (0, 0);
            for key in 0..60u64 {
                let hash = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let first = by_hash(hash, 0, &|_| false);
                // Counter and random bits do not matter: the hash does.
                for roll in 1..5 {
                    assert_eq!(by_hash(hash, roll * 7919, &|_| false), first, "{policy:?}");
                }
                seen.insert(first.clone());
                // An ejected host is left out; the others keep their keys.
                let out = Dest::Ip(addrs[0].parse().unwrap());
                let without = by_hash(hash, 0, &|d| *d == out);
                assert_ne!(without, out);
                if first != out {
                    kept += 1;
                    stayed += usize::from(without == first);
                }
            }
            assert_eq!(seen.len(), 3, "60 keys reach every host: {policy:?}");
            assert!(stayed * 10 >= kept * 8, "{stayed}/{kept} {policy:?}");
            // No hash: a random host, so all of them over many picks.
            let random: std::collections::HashSet<Dest> = (0..200u64)
                .map(|r| {
                    let roll = r.wrapping_mul(0x2545_F491_4F6C_DD1D);
                    endpoint(&snap, &c, dst, &simple(r, roll, &t)).unwrap()
                })
                .collect();
            assert_eq!(random.len(), 3, "{policy:?}");
        }
    }

    #[test]
    fn loads_count_in_flight_requests() {
        let loads = std::sync::Arc::new(Loads::default());
        let d = Dest::Ip("10.0.0.1:80".parse().unwrap());
        let a = loads.start(&d);
        let b = loads.start(&d);
        assert_eq!(loads.get(&d), 2);
        drop(a);
        drop(b);
        assert_eq!(loads.get(&d), 0);
    }

    #[test]
    fn weights_split_traffic() {
        let items = vec![("v1".to_string(), 90), ("v2".to_string(), 10)];
        let t = Target::Weighted(items);
        let v2 = (0..100)
            .filter(|r| cluster_of(&t, *r, None) == Some("v2"))
            .count();
        assert_eq!(v2, 10);
    }
}
