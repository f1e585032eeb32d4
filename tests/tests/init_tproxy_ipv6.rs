//! outrigger-init in TPROXY mode and on IPv6 / dual-stack pods, in real network namespaces.

use outrigger_testkit::init::{self, sidecar_with};
use outrigger_testkit::netns::Netns;
use outrigger_testkit::probe::Answer;
use outrigger_testkit::topology::{
    PEER_V4, PEER_V6, POD_V4, POD_V6, PROXY_UID, PodPair, connect, connect_as,
};

fn init_ok(ns: &Netns, args: &[&str]) -> String {
    init::run_ok(ns, args, &[]).stderr
}

fn landed(a: &Result<Answer, String>) -> (String, u16, Option<String>, Option<String>) {
    let a = a
        .as_ref()
        .unwrap_or_else(|e| panic!("connection failed: {e}"));
    (
        a.server.clone(),
        a.listen_port,
        a.original_dst.map(|d| d.to_string()),
        a.local.map(|d| d.to_string()),
    )
}

fn tproxy() -> Vec<&'static str> {
    sidecar_with(&["-m", "TPROXY"])
}

#[test]
fn tproxy_inbound_keeps_the_original_destination_as_local_address() {
    let mut t = PodPair::new("tproxy", false);
    t.start_servers(false, true);
    init_ok(&t.pod, &tproxy());

    let mangle = t.pod.ok("iptables", &["-t", "mangle", "-S"]);
    for rule in [
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff",
        "-A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
    ] {
        assert!(mangle.contains(rule), "missing {rule}:\n{mangle}");
    }
    let rules = t.pod.ip(&["rule", "show"]);
    assert_eq!(
        rules.matches("fwmark 0x539 lookup 133").count(),
        1,
        "{rules}"
    );
    let route = t.pod.ip(&["route", "show", "table", "133"]);
    assert!(route.contains("local default dev lo"), "{route}");

    // Inbound: the transparent listener on 15006 accepts with the real destination as local address.
    let app = format!("{POD_V4}:8080");
    let (server, port, _, local) = landed(&connect(&t.peer, &app, None));
    assert_eq!(
        (server.as_str(), port, local.as_deref()),
        ("proxy-inbound", 15006, Some(app.as_str()))
    );
    // Excluded ports reach their servers.
    assert_eq!(
        landed(&connect(&t.peer, &format!("{POD_V4}:15021"), None)).0,
        "agent"
    );
    // Outbound capture is still REDIRECT.
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:80"), None)).0,
        "proxy"
    );
    assert_eq!(
        landed(&connect_as(
            &t.pod,
            PROXY_UID,
            &format!("{PEER_V4}:80"),
            None
        ))
        .0,
        "peer"
    );

    // Re-run: no-op, and the ip rule is not duplicated.
    assert!(init_ok(&t.pod, &tproxy()).contains("already in place"));
    assert_eq!(
        t.pod
            .ip(&["rule", "show"])
            .matches("fwmark 0x539 lookup 133")
            .count(),
        1
    );

    // Cleanup removes chains, the policy rule and the route.
    let cleanup: Vec<&str> = tproxy().into_iter().chain(["--cleanup-only"]).collect();
    init_ok(&t.pod, &cleanup);
    let all = t.pod.ok("iptables-save", &[]);
    assert!(!all.contains("ISTIO"), "{all}");
    assert!(!t.pod.ip(&["rule", "show"]).contains("lookup 133"));
    let table = t.pod.output("ip", &["route", "show", "table", "all"]);
    assert!(
        !String::from_utf8_lossy(&table.stdout).contains("table 133"),
        "route of table 133 removed"
    );
}

fn dual() -> Vec<&'static str> {
    sidecar_with(&["--dual-stack"])
}

#[test]
fn dual_stack_pod_captures_ipv6_like_ipv4() {
    let mut t = PodPair::new("dual", true);
    t.start_servers(true, false);
    init_ok(&t.pod, &dual());

    let nat6 = t.pod.ok("ip6tables", &["-t", "nat", "-S"]);
    for rule in [
        "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN",
        "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ] {
        assert!(nat6.contains(rule), "missing {rule}:\n{nat6}");
    }
    assert!(
        t.pod
            .ip(&["-6", "addr", "show", "dev", "lo"])
            .contains("::6/128"),
        "::6 on lo"
    );

    // IPv6 outbound lands on 15001 and IP6T_SO_ORIGINAL_DST gives the real target.
    let peer = format!("[{PEER_V6}]:80");
    let (server, port, orig, _) = landed(&connect(&t.pod, &peer, None));
    assert_eq!(
        (server.as_str(), port, orig.as_deref()),
        ("proxy", 15001, Some(peer.as_str()))
    );
    assert_eq!(
        landed(&connect_as(&t.pod, PROXY_UID, &peer, None)).0,
        "peer"
    );
    // IPv6 inbound lands on 15006.
    let app = format!("[{POD_V6}]:8080");
    let (server, port, orig, _) = landed(&connect(&t.peer, &app, None));
    assert_eq!(
        (server.as_str(), port, orig.as_deref()),
        ("proxy-inbound", 15006, Some(app.as_str()))
    );
    assert_eq!(
        landed(&connect(&t.peer, &format!("[{POD_V6}]:15090"), None)).0,
        "agent"
    );
    // Passthrough from ::6 reaches the app.
    assert_eq!(
        landed(&connect_as(&t.pod, PROXY_UID, &app, Some("::6"))).0,
        "app"
    );
    // IPv4 still works the same.
    assert_eq!(
        landed(&connect(&t.pod, &format!("{PEER_V4}:80"), None)).0,
        "proxy"
    );

    assert!(init_ok(&t.pod, &dual()).contains("already in place"));
    let cleanup: Vec<&str> = dual().into_iter().chain(["--cleanup-only"]).collect();
    init_ok(&t.pod, &cleanup);
    let all = t.pod.ok("iptables-save", &[]) + &t.pod.ok("ip6tables-save", &[]);
    assert!(!all.contains("ISTIO"), "{all}");
}

#[test]
fn without_dual_stack_an_ipv4_first_pod_gets_no_ipv6_rules() {
    let t = PodPair::new("v4first", true);
    init_ok(&t.pod, init::DEFAULT_SIDECAR);
    assert!(
        t.pod
            .ok("iptables", &["-t", "nat", "-S"])
            .contains("ISTIO_OUTPUT")
    );
    assert!(
        !t.pod.ok("ip6tables-save", &[]).contains("ISTIO"),
        "upstream enables IPv6 only from the first address"
    );
}

#[test]
fn tproxy_on_ipv6() {
    let mut t = PodPair::new("tp6", true);
    t.start_servers(true, true);
    let args: Vec<&str> = tproxy().into_iter().chain(["--dual-stack"]).collect();
    init_ok(&t.pod, &args);
    assert_eq!(
        t.pod
            .ip(&["-6", "rule", "show"])
            .matches("fwmark 0x539 lookup 133")
            .count(),
        1
    );
    let app = format!("[{POD_V6}]:8080");
    let (server, port, _, local) = landed(&connect(&t.peer, &app, None));
    assert_eq!(
        (server.as_str(), port, local.as_deref()),
        ("proxy-inbound", 15006, Some(app.as_str()))
    );
}
