//! The quirks of istio-iptables' flag and env handling (reference §2.1 and §16).

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;

use super::*;

fn settings(args: &[&str], env: &[(&str, &str)]) -> Settings {
    let cli = Cli::try_parse_from(std::iter::once("istio-iptables").chain(args.iter().copied()))
        .expect("parses");
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::resolve(cli, &env)
}

fn parse_err(args: &[&str]) -> String {
    Cli::try_parse_from(std::iter::once("istio-iptables").chain(args.iter().copied()))
        .expect_err("must fail")
        .to_string()
}

#[test]
fn defaults_are_upstreams() {
    let s = settings(&[], &[]);
    assert_eq!(s.envoy_port, "15001");
    assert_eq!(s.inbound_capture_port, "15006");
    assert_eq!(s.inbound_tunnel_port, "15008");
    assert_eq!(s.proxy_uid, "");
    assert_eq!(s.tproxy_mark, "1337");
    assert_eq!(s.tproxy_route_table, "133");
    assert_eq!(s.probe_port, 15002);
    assert_eq!(s.probe_timeout, Duration::from_secs(5));
    assert_eq!(s.owner_groups_include, "*");
    assert_eq!(s.ipv4_loopback_cidr, "127.0.0.1/32");
    assert_eq!(s.envoy_user, "istio-proxy");
    assert!(!s.redirect_dns && !s.dry_run && !s.reconcile);
}

#[test]
fn argv_beats_env() {
    let s = settings(
        &["-z", "16006", "--redirect-dns=false"],
        &[("INBOUND_CAPTURE_PORT", "17006"), ("REDIRECT_DNS", "true")],
    );
    assert_eq!(s.inbound_capture_port, "16006");
    assert!(!s.redirect_dns);
    let s = settings(
        &[],
        &[("INBOUND_CAPTURE_PORT", "17006"), ("REDIRECT_DNS", "true")],
    );
    assert_eq!(s.inbound_capture_port, "17006");
    assert!(s.redirect_dns);
}

#[test]
fn envoy_port_has_no_env_fallback() {
    assert_eq!(settings(&[], &[("ENVOY_PORT", "9999")]).envoy_port, "15001");
}

#[test]
fn additional_env_wins_over_primary() {
    let s = settings(
        &[],
        &[
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
        ],
    );
    assert!(s.redirect_dns);
    let s = settings(&[], &[("DROP_INVALID", "true"), ("INVALID_DROP", "false")]);
    assert!(!s.drop_invalid);
    let s = settings(&[], &[("DUAL_STACK", "false"), ("ISTIO_DUAL_STACK", "1")]);
    assert!(s.dual_stack);
}

#[test]
fn unparsable_env_values_are_ignored() {
    let s = settings(
        &[],
        &[
            ("REDIRECT_DNS", "yes"),
            ("PROBE_TIMEOUT", "soon"),
            ("IPTABLES_PROBE_PORT", "70000"),
        ],
    );
    assert!(!s.redirect_dns);
    assert_eq!(s.probe_timeout, Duration::from_secs(5));
    assert_eq!(s.probe_port, 15002);
    // A bad additional value leaves the primary one in force.
    let s = settings(
        &[],
        &[
            ("REDIRECT_DNS", "true"),
            ("ISTIO_META_DNS_CAPTURE", "maybe"),
        ],
    );
    assert!(s.redirect_dns);
}

#[test]
fn empty_env_string_sets_empty_value() {
    let s = settings(&[], &[("ISTIO_INBOUND_PORTS", "")]);
    assert_eq!(s.inbound_ports, "");
}

#[test]
fn bool_flags_take_go_syntax_only_with_equals() {
    assert!(settings(&["--redirect-dns"], &[]).redirect_dns);
    assert!(settings(&["--redirect-dns=T"], &[]).redirect_dns);
    assert!(!settings(&["--redirect-dns=0"], &[]).redirect_dns);
    assert!(settings(&["-n"], &[]).dry_run);
    // `--flag true` does not set the value: `true` is a stray argument.
    assert!(parse_err(&["--redirect-dns", "true"]).contains("unexpected argument 'true'"));
    assert!(parse_err(&["--redirect-dns=yes"]).contains("--redirect-dns"));
}

#[test]
fn durations_use_go_syntax() {
    assert_eq!(
        settings(&["--probe-timeout", "1m30s"], &[]).probe_timeout,
        Duration::from_secs(90)
    );
    assert!(parse_err(&["--probe-timeout", "5"]).contains("--probe-timeout"));
}

#[test]
fn repeated_flags_take_the_last_value() {
    assert_eq!(settings(&["-b", "80", "-b", "*"], &[]).inbound_ports, "*");
}

#[test]
fn short_and_long_forms_are_equivalent() {
    let a = settings(
        &[
            "-p",
            "1",
            "-z",
            "2",
            "-u",
            "3",
            "-g",
            "4",
            "-m",
            "TPROXY",
            "-b",
            "5",
            "-d",
            "6",
            "-c",
            "e0",
            "-i",
            "*",
            "-x",
            "1.0.0.0/8",
            "-q",
            "7",
            "-o",
            "8",
            "-k",
            "v0",
            "-t",
            "9",
            "-r",
            "10",
            "-e",
            "11",
        ],
        &[],
    );
    let b = settings(
        &[
            "--envoy-port=1",
            "--inbound-capture-port=2",
            "--proxy-uid=3",
            "--proxy-gid=4",
            "--istio-inbound-interception-mode=TPROXY",
            "--istio-inbound-ports=5",
            "--istio-local-exclude-ports=6",
            "--istio-exclude-interfaces=e0",
            "--istio-service-cidr=*",
            "--istio-service-exclude-cidr=1.0.0.0/8",
            "--istio-outbound-ports=7",
            "--istio-local-outbound-ports-exclude=8",
            "--kube-virt-interfaces=v0",
            "--istio-inbound-tproxy-mark=9",
            "--istio-inbound-tproxy-route-table=10",
            "--inbound-tunnel-port=11",
        ],
        &[],
    );
    assert_eq!(a, b);
}

#[test]
fn istio_logging_flags_are_accepted() {
    let s = settings(
        &[
            "--log_output_level=default:debug",
            "--log_as_json",
            "--log_target=stdout",
            "--log_caller=default",
            "--log_stacktrace_level=default:none",
            "--log_rotate=/tmp/x",
            "--log_rotate_max_age=30",
            "--log_rotate_max_backups=1000",
            "--log_rotate_max_size=104857600",
            "--vklog=0",
        ],
        &[],
    );
    assert_eq!(s.log_output_level, "default:debug");
    assert!(s.log_as_json);
}

#[test]
fn unknown_flags_are_errors() {
    assert!(parse_err(&["--iptables-trace-logging"]).contains("--iptables-trace-logging"));
}

#[test]
fn invocation_forms() {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        invocation(v(&[
            "/usr/local/bin/pilot-agent",
            "istio-iptables",
            "-p",
            "1"
        ])),
        Invocation::IstioIptables(v(&["pilot-agent istio-iptables", "-p", "1"]))
    );
    assert_eq!(
        invocation(v(&["outrigger-init", "istio-iptables", "-n"])),
        Invocation::IstioIptables(v(&["outrigger-init istio-iptables", "-n"]))
    );
    assert_eq!(
        invocation(v(&["istio-iptables", "-n"])),
        Invocation::IstioIptables(v(&["istio-iptables", "-n"]))
    );
    assert_eq!(
        invocation(v(&["./outrigger-init", "-n"])),
        Invocation::IstioIptables(v(&["outrigger-init", "-n"]))
    );
    assert_eq!(
        invocation(v(&["pilot-agent", "proxy", "sidecar"])),
        Invocation::UnsupportedPilotAgentCommand("proxy".into())
    );
}

#[test]
fn values_may_start_with_a_dash_as_in_pflag() {
    assert_eq!(settings(&["-z", "-1"], &[]).inbound_capture_port, "-1");
}
