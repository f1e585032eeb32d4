//! outrigger-init in REDIRECT mode, in a real pod network namespace with real iptables: the
//! default sidecar invocation, where traffic lands, re-runs, drift, reconcile and cleanup.

use outrigger_testkit::init::{self, DEFAULT_SIDECAR, InitRun, sidecar_with as with};
use outrigger_testkit::netns::Netns;
use outrigger_testkit::topology::{PEER_V4, POD_V4, PROXY_UID, PodPair, connect, connect_as};
use outrigger_testkit::{bin, probe::Answer};

/// `iptables -t nat -S` after the default sidecar invocation (iptables-nft 1.8 notation).
const DEFAULT_NAT_S: &str = "-P PREROUTING ACCEPT
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-P POSTROUTING ACCEPT
-N ISTIO_INBOUND
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-N ISTIO_REDIRECT
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
";

fn init(ns: &Netns, args: &[&str]) -> InitRun {
    init::run(ns, args, &[])
}

fn init_ok(ns: &Netns, args: &[&str]) -> InitRun {
    init::run_ok(ns, args, &[])
}

fn landed(a: &Result<Answer, String>) -> (&str, u16, Option<String>) {
    let a = a
        .as_ref()
        .unwrap_or_else(|e| panic!("connection failed: {e}"));
    (
        a.server.as_str(),
        a.listen_port,
        a.original_dst.map(|d| d.to_string()),
    )
}

fn all_rules(ns: &Netns) -> String {
    ns.ok("iptables-save", &[]) + &ns.ok("ip6tables-save", &[])
}

#[test]
fn default_sidecar_rules_and_traffic() {
    let mut t = PodPair::new("redir", false);
    t.start_servers(false, false);
    init_ok(&t.pod, DEFAULT_SIDECAR);
    assert_eq!(t.pod.ok("iptables", &["-t", "nat", "-S"]), DEFAULT_NAT_S);

    // The app's outbound connection lands on 15001 and SO_ORIGINAL_DST is the real target.
    let peer80 = format!("{PEER_V4}:80");
    assert_eq!(
        landed(&connect(&t.pod, &peer80, None)),
        ("proxy", 15001, Some(peer80.clone()))
    );
    // Any app uid is captured, not only root.
    assert_eq!(landed(&connect_as(&t.pod, 1000, &peer80, None)).0, "proxy");
    // The proxy's own traffic (uid 1337) goes out untouched.
    assert_eq!(
        landed(&connect_as(&t.pod, PROXY_UID, &peer80, None)),
        ("peer", 80, None)
    );
    // Inbound to an app port lands on 15006 with the original destination.
    let app = format!("{POD_V4}:8080");
    assert_eq!(
        landed(&connect(&t.peer, &app, None)),
        ("proxy-inbound", 15006, Some(app.clone()))
    );
    // Inbound to the excluded agent ports and to the HBONE port is not captured.
    for port in [15021, 15090, 15020, 15008] {
        let a = connect(&t.peer, &format!("{POD_V4}:{port}"), None);
        assert_eq!(landed(&a), ("agent", port, None), "port {port}");
    }
    // The proxy's inbound passthrough from 127.0.0.6 reaches the app directly…
    assert_eq!(
        landed(&connect_as(&t.pod, PROXY_UID, &app, Some("127.0.0.6"))),
        ("app", 8080, None)
    );
    // …while the proxy calling its own pod IP from another source is inbound traffic.
    assert_eq!(
        landed(&connect_as(&t.pod, PROXY_UID, &app, None)).0,
        "proxy-inbound"
    );
    // localhost is never captured.
    assert_eq!(
        landed(&connect(&t.pod, "127.0.0.1:8080", None)),
        ("app", 8080, None)
    );
    let counters = t
        .pod
        .ok("iptables", &["-t", "nat", "-vnL", "ISTIO_REDIRECT"]);
    assert!(
        counters
            .lines()
            .nth(2)
            .is_some_and(|l| !l.trim_start().starts_with('0')),
        "REDIRECT counted packets:\n{counters}"
    );

    // A second run with the same flags is a no-op.
    let before = t.pod.ok("iptables", &["-t", "nat", "-S"]);
    let again = init_ok(&t.pod, DEFAULT_SIDECAR);
    assert!(
        again.stderr.contains("already in place"),
        "{}",
        again.stderr
    );
    assert_eq!(t.pod.ok("iptables", &["-t", "nat", "-S"]), before);

    // Cleanup with the same flags leaves no ISTIO_* chain and traffic flows directly.
    init_ok(&t.pod, &with(&["--cleanup-only"]));
    let rules = all_rules(&t.pod);
    assert!(
        !rules.contains("ISTIO"),
        "leftovers after cleanup:\n{rules}"
    );
    assert_eq!(landed(&connect(&t.pod, &peer80, None)).0, "peer");
}

#[test]
fn excluded_outbound_ports_and_cidrs_are_not_captured() {
    let mut t = PodPair::new("excl", false);
    t.start_servers(false, false);
    init_ok(&t.pod, &with(&["-o", "7777"]));
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:7777"), None)).0,
        "peer"
    );
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:80"), None)).0,
        "proxy"
    );
    init_ok(&t.pod, &with(&["-o", "7777", "--cleanup-only"]));
    assert!(!all_rules(&t.pod).contains("ISTIO"));

    init_ok(
        &t.pod,
        &with(&["-x", &*Box::leak(format!("{PEER_V4}/32").into_boxed_str())]),
    );
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:80"), None)).0,
        "peer"
    );
}

#[test]
fn only_included_ports_and_cidrs_are_captured() {
    let mut t = PodPair::new("incl", false);
    t.start_servers(false, false);
    // No CIDR capture, only port 7777 always captured; inbound only for 8080.
    init_ok(
        &t.pod,
        &["-u", "1337", "-i", "", "-q", "7777", "-b", "8080"],
    );
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:80"), None)).0,
        "peer"
    );
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:7777"), None)).0,
        "proxy"
    );
    assert_eq!(
        landed(&connect(&t.peer, &format!("{POD_V4}:8080"), None)).0,
        "proxy-inbound"
    );
    assert_eq!(
        landed(&connect(&t.peer, &format!("{POD_V4}:15021"), None)).0,
        "agent"
    );
}

#[test]
fn drift_is_reported_and_reconcile_repairs_it() {
    let t = PodPair::new("drift", false);
    init_ok(&t.pod, DEFAULT_SIDECAR);
    // A foreign rule in a builtin chain is tolerated.
    t.pod.ok(
        "iptables",
        &[
            "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "123", "-j", "ACCEPT",
        ],
    );
    let r = init_ok(&t.pod, DEFAULT_SIDECAR);
    assert!(r.stderr.contains("already in place"), "{}", r.stderr);

    // A foreign rule inside one of our chains is drift: reported, nothing changed, exit 1.
    t.pod.ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "ISTIO_INBOUND",
            "-p",
            "tcp",
            "--dport",
            "123",
            "-j",
            "ACCEPT",
        ],
    );
    let before = t.pod.ok("iptables", &["-t", "nat", "-S"]);
    let r = init(&t.pod, DEFAULT_SIDECAR);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ISTIO_INBOUND") && r.stderr.contains("--reconcile"),
        "{}",
        r.stderr
    );
    assert_eq!(
        t.pod.ok("iptables", &["-t", "nat", "-S"]),
        before,
        "nothing half-applied"
    );

    // --reconcile puts the exact rule set back (and removes its guardrails).
    init_ok(&t.pod, &with(&["--reconcile"]));
    let nat = t.pod.ok("iptables", &["-t", "nat", "-S"]);
    assert!(
        !nat.contains("ISTIO_INBOUND -p tcp -m tcp --dport 123"),
        "{nat}"
    );
    assert!(
        nat.contains("-A OUTPUT -p tcp -m tcp --dport 123 -j ACCEPT"),
        "foreign builtin rule kept"
    );
    let filter = t.pod.ok("iptables", &["-t", "filter", "-S"]);
    assert!(!filter.contains("DROP"), "guardrails removed:\n{filter}");
    init_ok(&t.pod, DEFAULT_SIDECAR);

    // --force-apply on rules already in place fails as upstream does (the chains exist).
    let r = init(&t.pod, &with(&["--force-apply"]));
    assert_eq!(r.code, 1, "{}", r.stderr);

    // Cleanup removes ours and keeps the foreign rule.
    init_ok(&t.pod, &with(&["--cleanup-only"]));
    let nat = t.pod.ok("iptables", &["-t", "nat", "-S"]);
    assert!(!nat.contains("ISTIO"), "{nat}");
    assert!(nat.contains("--dport 123 -j ACCEPT"));
}

#[test]
fn bad_input_is_rejected_with_one_clear_error_and_nothing_applied() {
    let t = PodPair::new("bad", false);
    let cases: &[(&[&str], &str)] = &[
        (&["-i", "10.0.0.0/33"], "--istio-service-cidr"),
        (&["-x", "*"], "--istio-service-exclude-cidr"),
        (&["-x", "not-a-cidr"], "--istio-service-exclude-cidr"),
        (&["-b", "80,99999"], "--istio-inbound-ports"),
        (&["-q", "http"], "--istio-outbound-ports"),
        (&["-z", "-1"], "--inbound-capture-port"),
        (
            &["--force-iptables-binary=nftables"],
            "--force-iptables-binary",
        ),
        (&["--no-such-flag"], "--no-such-flag"),
        (&["--redirect-dns=maybe"], "--redirect-dns"),
    ];
    for (args, flag) in cases {
        let full: Vec<&str> = DEFAULT_SIDECAR.iter().chain(args.iter()).copied().collect();
        let r = init(&t.pod, &full);
        assert_eq!(r.code, 1, "{args:?} must fail:\n{}", r.stderr);
        assert!(
            r.stderr.contains(flag),
            "{args:?}: the error names {flag}:\n{}",
            r.stderr
        );
        let errors = r.stderr.lines().filter(|l| l.contains("error")).count();
        assert_eq!(errors, 1, "{args:?}: one error line:\n{}", r.stderr);
        assert!(
            !all_rules(&t.pod).contains("ISTIO"),
            "{args:?} applied rules"
        );
    }
    // Env values are named too.
    let out = t
        .pod
        .command(bin("outrigger-init"))
        .env("ISTIO_SERVICE_CIDR", "300.1.1.1/8")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ISTIO_SERVICE_CIDR"));
}

#[test]
fn validation_probe_passes_with_rules_and_fails_with_126_without() {
    let t = PodPair::new("valid", false);
    let validate = |ns: &Netns| {
        ns.command_as(PROXY_UID, bin("outrigger-init"))
            .args([
                "-p",
                "15001",
                "-z",
                "15006",
                "-u",
                "1337",
                "--run-validation",
                "--skip-rule-apply",
                "--probe-timeout=2s",
            ])
            .output()
            .expect("run validation")
    };
    let out = validate(&t.pod);
    assert_eq!(
        out.status.code(),
        Some(126),
        "no rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation timeout"));
    init_ok(&t.pod, DEFAULT_SIDECAR);
    let out = validate(&t.pod);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn invocation_names_are_accepted() {
    let t = PodPair::new("names", false);
    let dir = tempdir();
    for name in ["istio-iptables", "pilot-agent"] {
        std::os::unix::fs::symlink(bin("outrigger-init"), dir.join(name)).unwrap();
    }
    let dry = |program: std::path::PathBuf, pre: &[&str]| {
        let out = t
            .pod
            .command(program)
            .args(pre)
            .args(DEFAULT_SIDECAR)
            .arg("--dry-run")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let plain = dry(bin("outrigger-init"), &[]);
    assert!(plain.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
    assert_eq!(dry(bin("outrigger-init"), &["istio-iptables"]), plain);
    assert_eq!(dry(dir.join("istio-iptables"), &[]), plain);
    assert_eq!(dry(dir.join("pilot-agent"), &["istio-iptables"]), plain);
    assert!(
        !all_rules(&t.pod).contains("ISTIO"),
        "dry run applied nothing"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("outrigger-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
