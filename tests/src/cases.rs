//! The istio-iptables capture conformance cases (reference §17.1): the command line and host facts
//! of each upstream golden in `../shared/conformance/istio-iptables/capture/`.

use std::path::PathBuf;

/// Where the upstream capture goldens are (the shared folder beside the repository).
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/istio-iptables/capture")
}

/// The golden text of a case.
pub fn golden(case: &Case) -> String {
    let path = golden_dir().join(format!("{}.golden", case.name));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A line diff good enough to see what differs.
pub fn diff(expected: &str, got: &str) -> String {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(g.len()) {
        match (e.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => out.push_str(&format!("  {a}\n")),
            (a, b) => {
                if let Some(a) = a {
                    out.push_str(&format!("- {a}\n"));
                }
                if let Some(b) = b {
                    out.push_str(&format!("+ {b}\n"));
                }
            }
        }
    }
    out
}

/// The full argv (after the program name) of a case.
pub fn argv(case: &Case) -> Vec<&'static str> {
    BASE.iter().chain(case.args).copied().collect()
}

pub const V4_DNS: &str = "nameserver 127.0.0.53\n";
pub const V4_V6_DNS: &str = "nameserver 127.0.0.53\nnameserver ::127.0.0.53\n";

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub args: &'static [&'static str],
    pub env: &'static [(&'static str, &'static str)],
    pub ipv6_pod: bool,
    pub resolv_conf: &'static str,
}

/// The base of every case: `-p 15001 -z 15006 -e 15008 -u 1337 -g 1337 -t 1337 -r 133 -b '' -i ''`.
pub const BASE: &[&str] = &[
    "-p", "15001", "-z", "15006", "-e", "15008", "-u", "1337", "-g", "1337", "-t", "1337", "-r",
    "133", "-b", "", "-i", "",
];

macro_rules! case {
    ($name:literal, [$($arg:literal),*], env [$($k:literal = $v:literal),*], v6 = $v6:literal, dns = $dns:expr) => {
        Case { name: $name, args: &[$($arg),*], env: &[$(($k, $v)),*], ipv6_pod: $v6, resolv_conf: $dns }
    };
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("ipv6-empty-inbound-ports", ["-b", ""], env [], v6 = true, dns = ""),
        case!("ip-range", ["-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "-n", "--redirect-dns", "-g", "1,2", "-u", "3,4"], env [], v6 = false, dns = V4_DNS),
        case!("tproxy", ["-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "-n", "--redirect-dns", "-g", "1337", "-u", "1337", "-c", "not-istio-nic"], env [], v6 = true, dns = V4_DNS),
        case!("ipv6-inbound-ports", ["-b", "4000,5000"], env [], v6 = true, dns = ""),
        case!("ipv6-virt-interfaces", ["-b", "4000,5000", "-k", "eth0,eth1"], env [], v6 = true, dns = ""),
        case!("ipv6-ipnets", ["-b", "4000,5000", "-d", "6000,7000,", "-k", "eth0,eth1", "-x", "2001:db8::/32", "-i", "2001:db8::/32"], env [], v6 = true, dns = ""),
        case!("ipv6-uid-gid", ["-b", "4000,5000", "-d", "6000,7000", "-k", "eth0,eth1", "-g", "1,2", "-u", "3,4", "-x", "2001:db8::/32", "-i", "2001:db8::/32"], env [], v6 = true, dns = ""),
        case!("ipv6-outbound-ports", ["-b", "", "-q", "32000,31000"], env [], v6 = true, dns = ""),
        case!("empty", [], env [], v6 = false, dns = ""),
        case!("kube-virt-interfaces", ["-k", "eth1,eth2", "-i", "*"], env [], v6 = false, dns = ""),
        case!("ipnets", ["-i", "10.0.0.0/8"], env [], v6 = false, dns = ""),
        case!("ipnets-with-kube-virt-interfaces", ["-k", "eth1,eth2", "-i", "10.0.0.0/8"], env [], v6 = false, dns = ""),
        case!("inbound-ports-include", ["-b", "32000,31000"], env [], v6 = false, dns = ""),
        case!("inbound-ports-wildcard", ["-b", "*"], env [], v6 = false, dns = ""),
        case!("inbound-ports-tproxy", ["-b", "32000,31000", "-m", "TPROXY"], env [], v6 = false, dns = ""),
        case!("inbound-ports-wildcard-tproxy", ["-b", "*", "-m", "TPROXY"], env [], v6 = false, dns = ""),
        case!("dns-uid-gid", ["--redirect-dns", "-g", "1,2", "-u", "3,4"], env [], v6 = true, dns = V4_V6_DNS),
        case!("ipv6-dns-uid-gid", ["--redirect-dns", "-g", "1,2", "-u", "3,4"], env [], v6 = true, dns = ""),
        case!(
            "outbound-owner-groups",
            [],
            env["ISTIO_OUTBOUND_OWNER_GROUPS" = "java,202"],
            v6 = false,
            dns = ""
        ),
        case!(
            "outbound-owner-groups-exclude",
            [],
            env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" = "888,ftp"],
            v6 = false,
            dns = ""
        ),
        case!(
            "ipv6-dns-outbound-owner-groups",
            ["--redirect-dns"],
            env["ISTIO_OUTBOUND_OWNER_GROUPS" = "java,202"],
            v6 = true,
            dns = ""
        ),
        case!(
            "ipv6-dns-outbound-owner-groups-exclude",
            ["--redirect-dns"],
            env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" = "888,ftp"],
            v6 = true,
            dns = ""
        ),
        case!("outbound-ports-include", ["-q", "32000,31000"], env [], v6 = false, dns = ""),
        case!("loopback-outbound-iprange", ["-i", "127.1.2.3/32", "-n", "--redirect-dns", "-g", "1,2", "-u", "3,4"], env [], v6 = false, dns = V4_DNS),
        case!("basic-exclude-nic", ["-c", "not-istio-nic"], env [], v6 = false, dns = ""),
        case!("drop-invalid", ["--drop-invalid"], env [], v6 = false, dns = ""),
        case!(
            "host-ipv4-loopback-cidr",
            [],
            env["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR" = "127.0.0.1/8"],
            v6 = false,
            dns = ""
        ),
    ]
}
