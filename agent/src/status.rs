//! What is attached, how full the maps are, which pods are meshed: for `outrigger-agent status`,
//! `/metrics` and `/healthz`.

use std::collections::BTreeMap;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use serde::Serialize;

use crate::capture::{self, CGROUP_PROGRAMS};
use crate::layout::ip_from_key;
use crate::maps::{Fill, Maps};

#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub program: &'static str,
    /// The kernel's program id, when the pinned link could be read.
    pub program_id: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pod {
    pub netns_cookie: u64,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Set {
    pub dir: String,
    pub links: Vec<Link>,
    pub maps: BTreeMap<&'static str, Fill>,
    pub counters: BTreeMap<&'static str, u64>,
    pub pods: Vec<Pod>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// "ebpf" when a complete set is attached, else "iptables-only".
    pub mode: &'static str,
    pub sets: Vec<Set>,
}

fn link(dir: &Path, program: &'static str) -> Option<Link> {
    let path = dir.join("links").join(program);
    if !path.exists() {
        return None;
    }
    let program_id = PinnedLink::from_pin(&path)
        .ok()
        .map(FdLink::from)
        .and_then(|l| l.info().ok())
        .map(|i| i.program_id());
    Some(Link {
        program,
        program_id,
    })
}

/// Reads every set pinned under `bpffs`.
pub fn read(bpffs: &Path) -> Status {
    let mut sets = Vec::new();
    for dir in capture::sets(bpffs) {
        let links: Vec<Link> = CGROUP_PROGRAMS
            .iter()
            .filter_map(|p| link(&dir, p))
            .collect();
        let (maps, counters, pods) = match Maps::open(&dir.join("maps")) {
            Ok(m) => {
                let (pods, ips) = m.current();
                let mut by_pod: BTreeMap<u64, Vec<String>> =
                    pods.keys().map(|c| (*c, Vec::new())).collect();
                for (ip, cookie) in ips {
                    by_pod
                        .entry(cookie)
                        .or_default()
                        .push(ip_from_key(ip).to_string());
                }
                let pods = by_pod
                    .into_iter()
                    .map(|(netns_cookie, ips)| Pod { netns_cookie, ips })
                    .collect();
                (m.fill(), m.counters(), pods)
            }
            Err(_) => (BTreeMap::new(), BTreeMap::new(), Vec::new()),
        };
        sets.push(Set {
            dir: dir.display().to_string(),
            links,
            maps,
            counters,
            pods,
        });
    }
    let complete = sets.iter().any(|s| s.links.len() == CGROUP_PROGRAMS.len());
    Status {
        mode: if complete { "ebpf" } else { "iptables-only" },
        sets,
    }
}

/// The human-readable form of `status`.
pub fn render(s: &Status) -> String {
    let mut out = format!("mode: {}\n", s.mode);
    if s.sets.is_empty() {
        out.push_str("nothing attached\n");
    }
    for set in &s.sets {
        out.push_str(&format!("\nset {}\n  programs:\n", set.dir));
        for l in &set.links {
            let id = l.program_id.map_or("?".into(), |i| i.to_string());
            out.push_str(&format!("    {:<24} id {id}\n", l.program));
        }
        out.push_str("  maps:\n");
        for (name, f) in &set.maps {
            let pct = if f.max_entries == 0 {
                0.0
            } else {
                100.0 * f.entries as f64 / f64::from(f.max_entries)
            };
            out.push_str(&format!(
                "    {name:<12} {:>7} / {:<7} {pct:5.1}%\n",
                f.entries, f.max_entries
            ));
        }
        out.push_str(&format!("  meshed pods: {}\n", set.pods.len()));
        for p in &set.pods {
            out.push_str(&format!(
                "    netns {:<12} {}\n",
                p.netns_cookie,
                p.ips.join(", ")
            ));
        }
        out.push_str("  counters:\n");
        for (name, v) in &set.counters {
            out.push_str(&format!("    {name:<22} {v}\n"));
        }
    }
    out
}

/// Prometheus text for `/metrics`.
pub fn metrics(s: &Status, pod_errors: usize) -> String {
    let mut out = String::new();
    out.push_str("# HELP outrigger_agent_capture_mode The capture mode in force (1 = current).\n");
    out.push_str("# TYPE outrigger_agent_capture_mode gauge\n");
    for mode in ["ebpf", "iptables-only"] {
        out.push_str(&format!(
            "outrigger_agent_capture_mode{{mode=\"{mode}\"}} {}\n",
            u8::from(s.mode == mode)
        ));
    }
    let pods: usize = s.sets.iter().map(|set| set.pods.len()).max().unwrap_or(0);
    out.push_str("# HELP outrigger_agent_meshed_pods Pods the eBPF capture serves.\n");
    out.push_str("# TYPE outrigger_agent_meshed_pods gauge\n");
    out.push_str(&format!("outrigger_agent_meshed_pods {pods}\n"));
    out.push_str("# HELP outrigger_agent_pod_errors Pods left to iptables because of an error.\n");
    out.push_str("# TYPE outrigger_agent_pod_errors gauge\n");
    out.push_str(&format!("outrigger_agent_pod_errors {pod_errors}\n"));
    out.push_str("# HELP outrigger_agent_ebpf_events_total What the capture programs did.\n");
    out.push_str("# TYPE outrigger_agent_ebpf_events_total counter\n");
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for set in &s.sets {
        for (k, v) in &set.counters {
            *totals.entry(k).or_default() += v;
        }
    }
    for (k, v) in totals {
        out.push_str(&format!(
            "outrigger_agent_ebpf_events_total{{event=\"{k}\"}} {v}\n"
        ));
    }
    out.push_str("# HELP outrigger_agent_map_entries Entries in each BPF map.\n");
    out.push_str("# TYPE outrigger_agent_map_entries gauge\n");
    for set in &s.sets {
        for (name, f) in &set.maps {
            out.push_str(&format!(
                "outrigger_agent_map_entries{{map=\"{name}\"}} {}\n",
                f.entries
            ));
        }
    }
    out.push_str("# HELP outrigger_agent_map_capacity Maximum entries of each BPF map.\n");
    out.push_str("# TYPE outrigger_agent_map_capacity gauge\n");
    for set in &s.sets {
        for (name, f) in &set.maps {
            out.push_str(&format!(
                "outrigger_agent_map_capacity{{map=\"{name}\"}} {}\n",
                f.max_entries
            ));
        }
    }
    out
}
