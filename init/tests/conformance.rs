//! Upstream conformance: every istio-iptables capture golden reproduced byte for byte from the
//! command line of its case (table in the reference, §17.1), through the same code path as the
//! binary: argv + env → settings → config (with the case's host facts) → dry-run record.
//!
//! The goldens are read from `../shared/conformance/istio-iptables/capture/` directly.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use clap::Parser;
use outrigger_init::config::Config;
use outrigger_init::exec::StubExecutor;
use outrigger_init::flags::{Cli, Settings};
use outrigger_init::host::Host;
use outrigger_init::run::{self, Options};
use outrigger_testkit::cases::{BASE, cases, diff, golden_dir};

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
    let args = outrigger_testkit::init::sidecar_with(&["--cleanup-only"]);
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
