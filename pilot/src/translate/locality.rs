//! Locality load balancing, as istiod applies it to the endpoints it sends one proxy
//! (`ApplyLocalityLoadBalancer`):
//!
//! - `distribute`: for the first entry whose `from` matches the proxy's locality, each locality
//!   group gets the weight of the `to` entry it matches (shared among the groups a wildcard
//!   matches); groups no entry matches get no endpoints. The cluster then balances by locality
//!   weight first.
//! - Otherwise, with outlier detection on the cluster (without it Envoy never sees an endpoint
//!   fail and would never leave the first priority) and locality load balancing not disabled:
//!   failover priorities by proximity: same region, zone and subzone 0; same zone 1; same region
//!   2; another region 3, or 4 when `failover` names a different region for the proxy's. The
//!   priorities are then renumbered without gaps, as Envoy requires.
//!
//! Pure: localities as `region/zone/subzone` strings in, priorities and weights out.

use crate::resources::{LocalityDistribute, LocalityLbSetting};

/// A locality's parts; missing ones are empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub subzone: &'a str,
}

impl<'a> Locality<'a> {
    pub fn parse(s: Option<&'a str>) -> Locality<'a> {
        let mut parts = s.unwrap_or("").splitn(3, '/');
        Locality {
            region: parts.next().unwrap_or(""),
            zone: parts.next().unwrap_or(""),
            subzone: parts.next().unwrap_or(""),
        }
    }

    /// Istio's `LocalityMatch`: `rule` is `region[/zone[/subzone]]` with `*` wildcards; a
    /// missing zone or subzone matches any.
    pub fn matches(&self, rule: &str) -> bool {
        let rule = Locality::parse(Some(rule));
        let part = |r: &str, mine: &str| r == "*" || r == mine;
        let opt = |r: &str, mine: &str| r.is_empty() || part(r, mine);
        part(rule.region, self.region)
            && opt(rule.zone, self.zone)
            && opt(rule.subzone, self.subzone)
    }
}

/// Istio's `LbPriority`: how far an endpoint's locality is from the proxy's.
fn distance(proxy: Locality, endpoint: Locality) -> u32 {
    if proxy.region != endpoint.region {
        3
    } else if proxy.zone != endpoint.zone {
        2
    } else if proxy.subzone != endpoint.subzone {
        1
    } else {
        0
    }
}

/// What one locality group of a cluster's endpoints gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub priority: u32,
    /// `load_balancing_weight` of the group (`distribute`).
    pub weight: Option<u32>,
    /// The group keeps its endpoints (`distribute` drops the groups it does not name).
    pub kept: bool,
}

/// The setting that applies: the rule's unless it has none (then the mesh's); a rule that
/// disables locality load balancing turns it off.
pub fn effective<'a>(
    rule: Option<&'a LocalityLbSetting>,
    mesh: Option<&'a LocalityLbSetting>,
) -> Option<&'a LocalityLbSetting> {
    match rule {
        Some(r) if r.enabled == Some(false) => None,
        Some(r) => Some(r),
        None => mesh,
    }
}

/// The placement of each locality group (`localities[i]`) for a proxy at `proxy`.
/// `outlier_detection`: the cluster has it (failover needs it). `setting`: the effective
/// setting; `None` is Istio's default (enabled, no distribute, no failover).
pub fn place(
    localities: &[Option<&str>],
    proxy: Option<&str>,
    setting: Option<&LocalityLbSetting>,
    outlier_detection: bool,
) -> Vec<Placement> {
    let plain = vec![
        Placement {
            priority: 0,
            weight: None,
            kept: true,
        };
        localities.len()
    ];
    let proxy = Locality::parse(proxy);
    let default = LocalityLbSetting::default();
    let setting = setting.unwrap_or(&default);
    if setting.enabled == Some(false) {
        return plain;
    }
    if !setting.distribute.is_empty() {
        return distribute(localities, proxy, &setting.distribute).unwrap_or(plain);
    }
    if !outlier_detection {
        return plain;
    }
    let raw: Vec<u32> = localities
        .iter()
        .map(|l| {
            let ep = Locality::parse(*l);
            let d = distance(proxy, ep);
            let redirected = setting
                .failover
                .iter()
                .find(|f| f.from == proxy.region)
                .is_some_and(|f| f.to != ep.region);
            if d == 3 && redirected { 4 } else { d }
        })
        .collect();
    let mut levels = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    raw.iter()
        .map(|p| Placement {
            priority: levels.iter().position(|l| l == p).unwrap_or(0) as u32,
            weight: None,
            kept: true,
        })
        .collect()
}

/// `distribute`, or `None` when no entry's `from` matches the proxy.
fn distribute(
    localities: &[Option<&str>],
    proxy: Locality,
    rules: &[LocalityDistribute],
) -> Option<Vec<Placement>> {
    let rule = rules.iter().find(|r| proxy.matches(&r.from))?;
    let mut out = vec![Placement::default(); localities.len()];
    let mut claimed = vec![false; localities.len()];
    for (to, weight) in &rule.to {
        let matched: Vec<usize> = (0..localities.len())
            .filter(|&i| !claimed[i] && Locality::parse(localities[i]).matches(to))
            .collect();
        // Each group's own weight is 1 here (istiod sends none): the share is split evenly,
        // rounded up.
        let n = matched.len() as u32;
        for i in matched {
            claimed[i] = true;
            out[i].kept = true;
            let share = weight.div_ceil(n.max(1));
            out[i].weight = (share > 0).then_some(share);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::LocalityFailover;

    const GROUPS: [Option<&str>; 5] = [
        Some("us-east/a/1"),
        Some("us-east/a/2"),
        Some("us-east/b"),
        Some("us-west/c"),
        Some("eu-west/d"),
    ];

    fn priorities(p: &[Placement]) -> Vec<u32> {
        p.iter().map(|p| p.priority).collect()
    }

    #[test]
    fn failover_priorities_follow_proximity_and_are_consecutive() {
        let p = place(&GROUPS, Some("us-east/a/1"), None, true);
        assert_eq!(priorities(&p), [0, 1, 2, 3, 3]);
        // From zone b, zone a is the next level, then the other regions.
        let p = place(&GROUPS, Some("us-east/b"), None, true);
        assert_eq!(priorities(&p), [1, 1, 0, 2, 2]);
        // Without outlier detection, or disabled: one priority.
        assert_eq!(
            priorities(&place(&GROUPS, Some("us-east/a/1"), None, false)),
            [0; 5]
        );
        let off = LocalityLbSetting {
            enabled: Some(false),
            ..Default::default()
        };
        assert_eq!(
            priorities(&place(&GROUPS, Some("us-east/a/1"), Some(&off), true)),
            [0; 5]
        );
    }

    #[test]
    fn failover_names_the_next_region() {
        let s = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "us-east".into(),
                to: "eu-west".into(),
            }],
            ..Default::default()
        };
        let p = place(&GROUPS, Some("us-east/a/1"), Some(&s), true);
        assert_eq!(priorities(&p), [0, 1, 2, 4, 3]);
    }

    #[test]
    fn distribute_weighs_localities_and_drops_the_others() {
        let s = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: "us-east/a/*".into(),
                to: [
                    ("us-east/a/*".to_string(), 20),
                    ("us-west/*".to_string(), 80),
                ]
                .into_iter()
                .collect(),
            }],
            ..Default::default()
        };
        let p = place(&GROUPS, Some("us-east/a/1"), Some(&s), false);
        let w: Vec<(bool, Option<u32>)> = p.iter().map(|p| (p.kept, p.weight)).collect();
        assert_eq!(
            w,
            [
                (true, Some(10)),
                (true, Some(10)),
                (false, None),
                (true, Some(80)),
                (false, None)
            ]
        );
        // A proxy no `from` matches: nothing changes.
        let p = place(&GROUPS, Some("eu-west/d"), Some(&s), true);
        assert!(p.iter().all(|p| p.kept && p.weight.is_none()));
    }

    #[test]
    fn locality_patterns() {
        let l = Locality::parse(Some("us-east/a/1"));
        assert!(l.matches("us-east"));
        assert!(l.matches("us-east/*"));
        assert!(l.matches("us-east/a/*"));
        assert!(l.matches("*"));
        assert!(!l.matches("us-east/b"));
        assert!(!l.matches("us-west/*"));
        let rule = LocalityLbSetting {
            enabled: Some(false),
            ..Default::default()
        };
        let mesh = LocalityLbSetting::default();
        assert_eq!(effective(Some(&rule), Some(&mesh)), None);
        assert_eq!(effective(None, Some(&mesh)), Some(&mesh));
    }
}
