//! System packages the tasks need, installed through apt when running as root.

use std::process::Command;

use anyhow::{Result, bail};

/// (command that must exist, Debian package that provides it).
pub type Needs = &'static [(&'static str, &'static str)];

pub const TEST: Needs = &[
    ("iptables", "iptables"),
    ("iptables-legacy", "iptables"),
    ("ip6tables", "iptables"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("curl", "curl"),
    ("python3", "python3"),
    // A real gRPC server as the OpenTelemetry collector of the tracing test.
    (
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
        "python3-grpcio",
    ),
    // The capture programs are rebuilt by a test to prove the committed object is current.
    ("clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
    // Lists what is attached to a cgroup, independently of the agent.
    ("bpftool", "bpftool"),
];

pub const EBPF: Needs = &[
    ("clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
];

/// A command on PATH, or (for an absolute path) a file that exists.
fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs the packages of the missing commands, or says what is needed.
pub fn ensure(needs: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = needs
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if !is_root() {
        bail!(
            "this task creates network namespaces and iptables rules and must run as root{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; it also needs these Debian packages: {}",
                    missing.join(" ")
                )
            }
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    crate::step(&format!("installing {} with apt-get", missing.join(" ")));
    let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !install.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
