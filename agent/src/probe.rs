//! What the kernel offers: each capture hook the agent needs, checked before anything is loaded.
//! If one is missing the agent stays in "iptables only" mode (outrigger-init's rules capture
//! everything) instead of attaching part of the capture.

use std::path::Path;

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{is_map_supported, is_program_supported};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Why it matters, or why it is missing.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub features: Vec<Feature>,
}

impl Report {
    /// The first missing feature, if any.
    pub fn missing(&self) -> Option<&Feature> {
        self.features.iter().find(|f| !f.available)
    }
}

fn feature<E: std::fmt::Display>(
    name: &'static str,
    probed: Result<bool, E>,
    why: &str,
) -> Feature {
    let (available, detail) = match probed {
        Ok(true) => (true, why.to_string()),
        Ok(false) => (false, format!("{why}: not supported by this kernel")),
        Err(e) => (false, format!("{why}: probe failed: {e}")),
    };
    Feature {
        name,
        available,
        detail,
    }
}

fn program(name: &'static str, t: ProgramType, why: &str) -> Feature {
    feature(name, is_program_supported(t), why)
}

fn map(name: &'static str, t: MapType, why: &str) -> Feature {
    feature(name, is_map_supported(t), why)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Probes the kernel, and `cgroup` when given (it must be a cgroup v2 directory).
pub fn run(cgroup: Option<&Path>) -> Report {
    let mut features = vec![
        program(
            "cgroup/connect4+6, getpeername, sendmsg/recvmsg",
            ProgramType::CgroupSockAddr,
            "outbound redirect to the sidecar",
        ),
        program(
            "sockops",
            ProgramType::SockOps,
            "connection established: cookie to 4-tuple",
        ),
        program(
            "cgroup/getsockopt",
            ProgramType::CgroupSockopt,
            "SO_ORIGINAL_DST for the sidecar",
        ),
        program("sk_msg", ProgramType::SkMsg, "socket-to-socket fast path"),
        map(
            "SOCKHASH",
            MapType::SockHash,
            "sockets keyed by 4-tuple (fails on some distribution kernels)",
        ),
        map("LRU hash", MapType::LruHash, "bounded connection maps"),
        map("per-CPU array", MapType::PerCpuArray, "counters"),
    ];
    // SO_NETNS_COOKIE (5.14) names pods; bpf_link pinning (5.7) keeps capture across restarts.
    let cookie = crate::sys::own_netns_cookie();
    features.push(Feature {
        name: "SO_NETNS_COOKIE",
        available: cookie.is_ok(),
        detail: match cookie {
            Ok(_) => "pods are found by network namespace cookie (Linux 5.14+)".into(),
            Err(e) => format!("pods are found by network namespace cookie: {e}"),
        },
    });
    if let Some(path) = cgroup {
        let check = crate::capture::check_cgroup(path);
        features.push(Feature {
            name: "cgroup v2",
            available: check.is_ok(),
            detail: match check {
                Ok(()) => format!("{} is a cgroup v2 directory", path.display()),
                Err(e) => e.to_string(),
            },
        });
    }
    Report {
        kernel: kernel_release(),
        features,
    }
}
