//! DNS capture (`ISTIO_META_DNS_CAPTURE=true`): the app's DNS to the resolv.conf server lands on
//! the agent's port 15053 over UDP and TCP; the agent's own queries (uid 1337) go out.

use outrigger_testkit::init::{self, DEFAULT_SIDECAR};
use outrigger_testkit::topology::{PEER_V4, PROXY_UID, PodPair, connect, connect_as, send_udp_as};

#[test]
fn dns_to_the_cluster_resolver_is_captured_by_the_agent() {
    let mut t = PodPair::new("dns", false);
    t.start_servers(false, false);
    t.pod.set_resolv_conf(&format!(
        "search default.svc.cluster.local\nnameserver {PEER_V4}\noptions ndots:5\n"
    ));
    // The agent's DNS proxy on 15053 (UDP and TCP) and the cluster resolver on the peer.
    // Bound to 127.0.0.1 as Istio's agent is: a REDIRECTed datagram arrives for 127.0.0.1, and
    // the reply must leave from it for conntrack to map it back to the resolver's address.
    t.serve_udp(false, PROXY_UID, "agent-dns", &["127.0.0.1:15053".into()]);
    t.serve(false, "agent-dns", false, &["0.0.0.0:15053".into()]);
    t.serve_udp(true, 0, "resolver", &["0.0.0.0:53".into()]);
    t.serve(true, "resolver", false, &["0.0.0.0:53".into()]);

    init::run_ok(
        &t.pod,
        DEFAULT_SIDECAR,
        &[("ISTIO_META_DNS_CAPTURE", "true")],
    );
    let raw = t.pod.ok("iptables", &["-t", "raw", "-S"]);
    assert!(
        raw.contains(&format!(
            "-A ISTIO_INBOUND -s {PEER_V4}/32 -p udp -m udp --sport 53 -j CT --zone 1"
        )),
        "{raw}"
    );

    let dns = format!("{PEER_V4}:53");
    assert_eq!(
        send_udp_as(&t.pod, 1000, &dns).unwrap().server,
        "agent-dns",
        "app UDP DNS goes to the agent"
    );
    assert_eq!(
        connect(&t.pod, &dns, None).unwrap().server,
        "agent-dns",
        "app TCP DNS goes to the agent"
    );
    assert_eq!(
        send_udp_as(&t.pod, PROXY_UID, &dns).unwrap().server,
        "resolver",
        "the agent's own queries go out"
    );
    assert_eq!(
        connect_as(&t.pod, PROXY_UID, &dns, None).unwrap().server,
        "resolver"
    );
    // Port 53 to another address is not DNS capture's business: it is ordinary outbound TCP.
    assert_eq!(
        connect(&t.pod, &format!("{PEER_V4}:80"), None)
            .unwrap()
            .server,
        "proxy"
    );
}
