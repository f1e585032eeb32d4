//! Outlier detection (passive health checking): endpoints that answer with consecutive 5xx (or
//! gateway errors, or fail to connect) are ejected for the base ejection time multiplied by the
//! number of times they were ejected, while at most `max_ejection_percent` of the cluster's hosts
//! (and always at least one) are out. With `split_external_local_origin_errors`, failures to
//! connect (local origin) are counted on their own and not as 5xx.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::Dest;
use crate::config::cluster::Outlier;

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// What an attempt told about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    /// A response with this status.
    Status(u16),
    /// No connection, or a reset before a response (counts as a 5xx and a gateway error).
    Failed,
}

/// One cluster's endpoints as outlier detection sees them. Part of the cluster's state: it goes
/// with the cluster, and endpoints that leave the cluster are pruned ([`Outliers::retain`]).
#[derive(Debug, Default)]
pub struct Outliers {
    hosts: Mutex<HashMap<Dest, Host>>,
}

fn out(hosts: &HashMap<Dest, Host>, now: Instant) -> impl Iterator<Item = &Dest> {
    hosts
        .iter()
        .filter(move |(_, h)| h.ejected_until.is_some_and(|u| now < u))
        .map(|(d, _)| d)
}

impl Outliers {
    pub fn is_ejected(&self, d: &Dest, now: Instant) -> bool {
        let m = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        m.get(d)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// The endpoints ejected now.
    pub fn ejected(&self, now: Instant) -> Vec<Dest> {
        let m = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        out(&m, now).cloned().collect()
    }

    /// Forgets the endpoints for which `keep` is false (they left the cluster).
    pub fn retain(&self, keep: impl Fn(&Dest) -> bool) {
        let mut m = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|d, _| keep(d));
    }

    /// How many endpoints are remembered.
    pub fn len(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an attempt's result; `hosts` is the cluster's number of endpoints (`cluster`
    /// names it in the log).
    pub fn report(
        &self,
        cluster: &str,
        policy: &Outlier,
        d: &Dest,
        result: Result,
        hosts: usize,
        now: Instant,
    ) {
        let mut c = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let out_now = out(&c, now).count();
        let h = c.entry(d.clone()).or_default();
        let split = policy.split_local_origin;
        let (server_error, gateway, local) = match result {
            // Split: a local-origin failure leaves the 5xx and gateway counts as they are.
            Result::Failed if split => (None, None, true),
            Result::Failed => (Some(true), Some(true), false),
            Result::Status(s) => (Some(s >= 500), Some(matches!(s, 502..=504)), false),
        };
        h.consecutive_local = if local { h.consecutive_local + 1 } else { 0 };
        let count = |n: u32, hit: Option<bool>| match hit {
            Some(true) => n + 1,
            Some(false) => 0,
            None => n,
        };
        h.consecutive_5xx = count(h.consecutive_5xx, server_error);
        h.consecutive_gateway = count(h.consecutive_gateway, gateway);
        let tripped = policy
            .consecutive_5xx
            .is_some_and(|n| h.consecutive_5xx >= n)
            || policy
                .consecutive_gateway
                .is_some_and(|n| h.consecutive_gateway >= n)
            || policy
                .consecutive_local_origin
                .is_some_and(|n| h.consecutive_local >= n);
        let already = h.ejected_until.is_some_and(|u| now < u);
        let allowed = (hosts * policy.max_ejection_percent as usize / 100).max(1);
        if tripped && !already && out_now < allowed {
            h.ejections += 1;
            h.ejected_until = Some(now + policy.base_ejection * h.ejections);
            h.consecutive_5xx = 0;
            h.consecutive_gateway = 0;
            h.consecutive_local = 0;
            tracing::info!(cluster, endpoint = %d, ejections = h.ejections, "endpoint ejected (outlier detection)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> Outlier {
        Outlier {
            consecutive_5xx: Some(3),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: None,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn split_local_origin_failures_are_counted_apart() {
        let o = Outliers::default();
        let p = Outlier {
            split_local_origin: true,
            consecutive_local_origin: Some(2),
            ..policy()
        };
        let (a, b) = (
            Dest::Ip("10.0.0.1:80".parse().unwrap()),
            Dest::Ip("10.0.0.2:80".parse().unwrap()),
        );
        let t = Instant::now();
        // 5xx and connect failures interleaved: neither count reaches its threshold.
        for r in [Result::Status(500), Result::Failed, Result::Status(500)] {
            o.report("c", &p, &a, r, 4, t);
        }
        assert!(!o.is_ejected(&a, t), "a response resets the local count");
        o.report("c", &p, &a, Result::Status(500), 4, t);
        assert!(
            o.is_ejected(&a, t),
            "three 5xx: the failure between is not one"
        );
        for _ in 0..2 {
            o.report("c", &p, &b, Result::Failed, 4, t);
        }
        assert!(o.is_ejected(&b, t), "two local-origin failures");
    }

    #[test]
    fn consecutive_errors_eject_for_growing_times() {
        let o = Outliers::default();
        let a = Dest::Ip("10.0.0.1:80".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..2 {
            o.report("c", &policy(), &a, Result::Status(500), 4, t0);
        }
        o.report("c", &policy(), &a, Result::Status(200), 4, t0);
        o.report("c", &policy(), &a, Result::Status(503), 4, t0);
        assert!(!o.is_ejected(&a, t0), "a success resets the count");
        o.report("c", &policy(), &a, Result::Failed, 4, t0);
        o.report("c", &policy(), &a, Result::Status(500), 4, t0);
        assert!(o.is_ejected(&a, t0));
        assert!(o.is_ejected(&a, t0 + Duration::from_secs(29)));
        assert!(!o.is_ejected(&a, t0 + Duration::from_secs(31)));
        // The second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(31);
        for _ in 0..3 {
            o.report("c", &policy(), &a, Result::Status(500), 4, t1);
        }
        assert!(o.is_ejected(&a, t1 + Duration::from_secs(59)));
        assert_eq!(o.ejected(t1), vec![a]);
    }

    #[test]
    fn at_most_the_allowed_share_is_ejected_but_always_one() {
        let o = Outliers::default();
        let t = Instant::now();
        let p = Outlier {
            max_ejection_percent: 10,
            ..policy()
        };
        let (a, b) = (
            Dest::Ip("10.0.0.1:80".parse().unwrap()),
            Dest::Ip("10.0.0.2:80".parse().unwrap()),
        );
        for d in [&a, &b] {
            for _ in 0..3 {
                o.report("c", &p, d, Result::Status(500), 2, t);
            }
        }
        assert!(o.is_ejected(&a, t), "10% of 2 hosts still allows one");
        assert!(!o.is_ejected(&b, t), "but not two");
    }
}
