//! Keeps the `pods` and `pod_ips` maps equal to what the pod source says. The diff is a pure
//! function; `apply` writes it.

use std::collections::BTreeMap;

use crate::layout::{POD_SIZE, ip_key, pod_entry};
use crate::maps::{Maps, MapsError};
use crate::pods::MeshedPod;

/// What the maps should hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    pub pods: BTreeMap<u64, [u8; POD_SIZE]>,
    pub ips: BTreeMap<[u8; 16], u64>,
}

/// Map writes that take the current state to the desired one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub put_pods: Vec<u64>,
    pub remove_pods: Vec<u64>,
    pub put_ips: Vec<[u8; 16]>,
    pub remove_ips: Vec<[u8; 16]>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put_pods.is_empty()
            && self.remove_pods.is_empty()
            && self.put_ips.is_empty()
            && self.remove_ips.is_empty()
    }
}

/// The entries for pods whose namespace cookie is known.
pub fn desired(pods: &[(MeshedPod, u64)]) -> Desired {
    let mut d = Desired::default();
    for (pod, cookie) in pods {
        d.pods
            .insert(*cookie, pod_entry(pod.ip4, pod.ip6, &pod.policy));
        for ip in pod
            .ip4
            .map(Into::into)
            .into_iter()
            .chain(pod.ip6.map(Into::into))
        {
            d.ips.insert(ip_key(ip), *cookie);
        }
    }
    d
}

pub fn plan(
    current_pods: &BTreeMap<u64, [u8; POD_SIZE]>,
    current_ips: &BTreeMap<[u8; 16], u64>,
    want: &Desired,
) -> Plan {
    Plan {
        put_pods: want
            .pods
            .iter()
            .filter(|(k, v)| current_pods.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect(),
        remove_pods: current_pods
            .keys()
            .filter(|k| !want.pods.contains_key(*k))
            .copied()
            .collect(),
        put_ips: want
            .ips
            .iter()
            .filter(|(k, v)| current_ips.get(*k) != Some(*v))
            .map(|(k, _)| *k)
            .collect(),
        remove_ips: current_ips
            .keys()
            .filter(|k| !want.ips.contains_key(*k))
            .copied()
            .collect(),
    }
}

/// Writes the plan: pods before the addresses that point at them, removals of addresses before
/// the pods they point at.
pub fn apply(maps: &mut Maps, want: &Desired, plan: &Plan) -> Result<(), MapsError> {
    for cookie in &plan.put_pods {
        maps.put_pod(*cookie, &want.pods[cookie])?;
    }
    for ip in &plan.put_ips {
        maps.put_ip(*ip, want.ips[ip])?;
    }
    for ip in &plan.remove_ips {
        maps.remove_ip(*ip)?;
    }
    for cookie in &plan.remove_pods {
        maps.remove_pod(*cookie)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn pod(id: &str, ip: &str) -> MeshedPod {
        MeshedPod {
            id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            ip4: Some(ip.parse().unwrap()),
            ip6: None,
            policy: Policy::default(),
        }
    }

    #[test]
    fn plans_only_the_difference() {
        let first = desired(&[(pod("a", "10.0.0.1"), 1), (pod("b", "10.0.0.2"), 2)]);
        let p = plan(&BTreeMap::new(), &BTreeMap::new(), &first);
        assert_eq!(p.put_pods, vec![1, 2]);
        assert_eq!(p.put_ips.len(), 2);
        assert!(plan(&first.pods, &first.ips, &first).is_empty());

        // b goes, c comes, a changes its policy.
        let mut a = pod("a", "10.0.0.1");
        a.policy.exclude_out_ports = vec![9000];
        let second = desired(&[(a, 1), (pod("c", "10.0.0.3"), 3)]);
        let p = plan(&first.pods, &first.ips, &second);
        assert_eq!(p.put_pods, vec![1, 3]);
        assert_eq!(p.remove_pods, vec![2]);
        assert_eq!(p.put_ips, vec![ip_key("10.0.0.3".parse().unwrap())]);
        assert_eq!(p.remove_ips, vec![ip_key("10.0.0.2".parse().unwrap())]);
    }
}
