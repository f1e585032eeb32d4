//! Upstream conformance: every istio-iptables capture golden reproduced byte for byte from the
//! command line of its case (table in the reference, §17.1), through the same code path as the
//! binary: argv + env → settings → config (with the case's host facts) → dry-run record.
//!
//! The goldens are read from `../shared/conformance/istio-iptables/capture/` directly.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use outrigger_init::config::Config;
use outrigger_init::exec::StubExecutor;
use outrigger_init::flags::{Cli, Settings};
use outrigger_init::host::Host;
use outrigger_init::run::{self, Options};

/// Host facts of a case: the pod's address family and resolv.conf.
struct Facts {
    ipv6_pod: bool,
    resolv_conf: &'static str,
}

impl Host for Facts {
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
        let pod: IpAddr = if self.ipv6_pod {
            "fd00::5".parse().unwrap()
        } else {
            "10.0.0.5".parse().unwrap()
        };
        Ok(vec![
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            pod,
        ])
    }
    fn resolv_conf(&self) -> io::Result<String> {
        Ok(self.resolv_conf.to_string())
    }
    fn lookup_uid(&self, _user: &str) -> Option<u32> {
        None
    }
}

const V4_DNS: &str = "nameserver 127.0.0.53\n";
const V4_V6_DNS: &str = "nameserver 127.0.0.53\nnameserver ::127.0.0.53\n";

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    ipv6_pod: bool,
    resolv_conf: &'static str,
}

/// The base of every case: `-p 15001 -z 15006 -e 15008 -u 1337 -g 1337 -t 1337 -r 133 -b '' -i ''`.
const BASE: &[&str] = &[
    "-p", "15001", "-z", "15006", "-e", "15008", "-u", "1337", "-g", "1337", "-t", "1337", "-r",
    "133", "-b", "", "-i", "",
];

macro_rules! case {
    ($name:literal, [$($arg:literal),*], env [$($k:literal = $v:literal),*], v6 = $v6:literal, dns = $dns:expr) => {
        Case { name: $name, args: &[$($arg),*], env: &[$(($k, $v)),*], ipv6_pod: $v6, resolv_conf: $dns }
    };
}

fn cases() -> Vec<Case> {
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

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/istio-iptables/capture")
}

/// The dry-run record of one invocation.
fn record(args: &[&str], env: &[(&str, &str)], host: &dyn Host) -> String {
    let argv = std::iter::once("istio-iptables")
        .chain(BASE.iter().copied())
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    let mut env_map: HashMap<String, String> =
        HashMap::from([("ISTIO_OUTBOUND_OWNER_GROUPS".to_string(), "*".to_string())]);
    env_map.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = Settings::resolve(cli, &env_map);
    let cfg = Config::build(&settings, host).expect("valid config").config;
    let mut stub = StubExecutor::default();
    run::program(&cfg, &Options::from_settings(&settings, &cfg), &mut stub)
        .expect("dry run succeeds");
    stub.record.join("\n")
}

/// A line diff good enough to see what differs.
fn diff(expected: &str, got: &str) -> String {
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

#[test]
fn all_upstream_capture_goldens_match() {
    let cases = cases();
    let dir = golden_dir();
    let on_disk = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .count();
    assert_eq!(
        on_disk,
        cases.len(),
        "every golden in {} has a case",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let path = dir.join(format!("{}.golden", case.name));
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let facts = Facts {
            ipv6_pod: case.ipv6_pod,
            resolv_conf: case.resolv_conf,
        };
        let got = record(case.args, case.env, &facts);
        // Upstream compares modulo one trailing newline.
        if golden.strip_suffix('\n').unwrap_or(&golden) != got {
            failures.push(format!("=== {} ===\n{}", case.name, diff(&golden, &got)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} goldens differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!("{0}/{0} upstream capture goldens matched", cases.len());
}

#[test]
fn default_sidecar_cleanup_record_matches_reference() {
    let facts = Facts {
        ipv6_pod: false,
        resolv_conf: "",
    };
    let args = [
        "-m",
        "REDIRECT",
        "-i",
        "*",
        "-x",
        "",
        "-b",
        "*",
        "-d",
        "15090,15021,15020",
        "--cleanup-only",
    ];
    let got = record(&args, &[], &facts);
    let expected = "iptables-save
ip6tables-save
iptables -t nat -D ISTIO_OUTPUT -j ISTIO_REDIRECT
iptables -t nat -D ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
iptables -t nat -D ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
iptables -t nat -D OUTPUT -j ISTIO_OUTPUT
iptables -t nat -D ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
iptables -t nat -D PREROUTING -p tcp -j ISTIO_INBOUND
iptables -t nat -F ISTIO_OUTPUT
iptables -t nat -X ISTIO_OUTPUT
iptables -t nat -F ISTIO_INBOUND
iptables -t nat -X ISTIO_INBOUND
iptables -t nat -F ISTIO_IN_REDIRECT
iptables -t nat -X ISTIO_IN_REDIRECT
iptables -t nat -F ISTIO_REDIRECT
iptables -t nat -X ISTIO_REDIRECT
iptables-save";
    assert_eq!(got, expected, "\n{}", diff(expected, &got));
}
