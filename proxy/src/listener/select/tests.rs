use super::*;
use crate::config::Cidr;
use crate::config::listener::{NetworkFilter, TcpProxy};
use crate::config::route::Target;

fn chain(name: &str, m: ChainMatch) -> FilterChain {
    FilterChain {
        name: name.into(),
        matcher: m,
        filters: vec![NetworkFilter::TcpProxy(TcpProxy {
            stat_prefix: name.into(),
            target: Target::Cluster(name.into()),
            idle_timeout: None,
            hash_source_ip: false,
        })],
        tls: false,
    }
}

fn listener(chains: Vec<FilterChain>, default: Option<FilterChain>) -> Listener {
    Listener {
        name: "l".into(),
        address: Address::Socket("0.0.0.0:15006".parse().unwrap()),
        bind_to_port: true,
        use_original_dst: false,
        listener_filters: vec![],
        sniff_disabled: None,
        filter_chains: chains,
        default_filter_chain: default,
        ignored: vec![],
    }
}

fn meta(dst: &str, transport: &'static str, app: &[&'static str]) -> ConnMeta {
    ConnMeta {
        dst: dst.parse().unwrap(),
        src: "10.0.0.9:40000".parse().unwrap(),
        transport,
        app_protocols: app.to_vec(),
        sni: None,
    }
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn pick(l: &Listener, m: &ConnMeta) -> Option<String> {
    filter_chain(l, m).map(|c| c.name.clone())
}

/// The shape of Istio's virtualInbound: per-port chains, plus catch-alls by transport and protocol.
fn virtual_inbound() -> Listener {
    let port = |p: u16, t: &str, apps: &[&str]| ChainMatch {
        destination_port: Some(p),
        transport_protocol: Some(t.into()),
        application_protocols: apps.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let catch = |t: &str, apps: &[&str]| ChainMatch {
        transport_protocol: Some(t.into()),
        application_protocols: apps.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    listener(
        vec![
            chain("9080-http", port(9080, "raw_buffer", &["http/1.1", "h2c"])),
            chain("9080-tcp", port(9080, "raw_buffer", &[])),
            chain("3306-tcp", port(3306, "raw_buffer", &[])),
            chain("catchall-tls", catch("tls", &[])),
            chain("catchall-http", catch("raw_buffer", &["http/1.1", "h2c"])),
            chain("catchall-tcp", catch("raw_buffer", &[])),
        ],
        None,
    )
}

#[test]
fn virtual_inbound_dispatch() {
    let l = virtual_inbound();
    let cases: &[(&str, &'static str, &[&'static str], &str)] = &[
        ("10.0.0.5:9080", "raw_buffer", &["http/1.1"], "9080-http"),
        ("10.0.0.5:9080", "raw_buffer", &["h2c"], "9080-http"),
        ("10.0.0.5:9080", "raw_buffer", &[], "9080-tcp"),
        ("10.0.0.5:3306", "raw_buffer", &["http/1.1"], "3306-tcp"),
        (
            "10.0.0.5:7777",
            "raw_buffer",
            &["http/1.1"],
            "catchall-http",
        ),
        ("10.0.0.5:7777", "raw_buffer", &[], "catchall-tcp"),
        ("10.0.0.5:7777", "tls", &[], "catchall-tls"),
    ];
    for (dst, t, app, want) in cases {
        assert_eq!(
            pick(&l, &meta(dst, t, app)).as_deref(),
            Some(*want),
            "{dst} {t} {app:?}"
        );
    }
}

#[test]
fn longest_destination_prefix_wins_and_default_chain_catches_the_rest() {
    let l = listener(
        vec![
            chain(
                "wide",
                ChainMatch {
                    prefix_ranges: vec![cidr("10.0.0.0/8")],
                    ..Default::default()
                },
            ),
            chain(
                "narrow",
                ChainMatch {
                    prefix_ranges: vec![cidr("10.1.0.0/16")],
                    ..Default::default()
                },
            ),
        ],
        Some(chain("default", ChainMatch::default())),
    );
    assert_eq!(
        pick(&l, &meta("10.1.2.3:80", "raw_buffer", &[])).as_deref(),
        Some("narrow")
    );
    assert_eq!(
        pick(&l, &meta("10.2.2.3:80", "raw_buffer", &[])).as_deref(),
        Some("wide")
    );
    assert_eq!(
        pick(&l, &meta("192.168.1.1:80", "raw_buffer", &[])).as_deref(),
        Some("default")
    );
    let no_default = listener(
        vec![chain(
            "only-443",
            ChainMatch {
                destination_port: Some(443),
                ..Default::default()
            },
        )],
        None,
    );
    assert_eq!(
        pick(&no_default, &meta("10.0.0.1:80", "raw_buffer", &[])),
        None
    );
}

#[test]
fn server_names_prefer_exact_over_wildcard() {
    let l = listener(
        vec![
            chain(
                "wild",
                ChainMatch {
                    server_names: vec!["*.example.com".into()],
                    ..Default::default()
                },
            ),
            chain(
                "exact",
                ChainMatch {
                    server_names: vec!["api.example.com".into()],
                    ..Default::default()
                },
            ),
            chain("none", ChainMatch::default()),
        ],
        None,
    );
    let with = |sni: Option<&str>| ConnMeta {
        sni: sni.map(String::from),
        ..meta("10.0.0.1:443", "tls", &[])
    };
    assert_eq!(
        pick(&l, &with(Some("api.example.com"))).as_deref(),
        Some("exact")
    );
    assert_eq!(
        pick(&l, &with(Some("www.example.com"))).as_deref(),
        Some("wild")
    );
    assert_eq!(pick(&l, &with(Some("other.org"))).as_deref(), Some("none"));
    assert_eq!(pick(&l, &with(None)).as_deref(), Some("none"));
}

#[test]
fn original_destination_picks_exact_then_wildcard_listener() {
    use std::sync::Arc;
    let mk = |name: &str, addr: &str, orig: bool| {
        let mut l = listener(vec![], None);
        l.name = name.into();
        l.address = Address::Socket(addr.parse().unwrap());
        l.use_original_dst = orig;
        l.bind_to_port = orig;
        Arc::new(l)
    };
    let mut snap = Snapshot::default();
    for l in [
        mk("virtualOutbound", "0.0.0.0:15001", true),
        mk("10.96.0.10_53", "10.96.0.10:53", false),
        mk("0.0.0.0_9080", "0.0.0.0:9080", false),
    ] {
        snap.listeners.insert(l.name.clone(), l);
    }
    let outbound = snap.listeners["virtualOutbound"].clone();
    let to = |dst: &str| {
        listener_for(&snap, &outbound, dst.parse().unwrap())
            .name
            .clone()
    };
    assert_eq!(to("10.96.0.10:53"), "10.96.0.10_53");
    assert_eq!(to("10.99.1.1:9080"), "0.0.0.0_9080");
    assert_eq!(
        to("10.99.1.1:5555"),
        "virtualOutbound",
        "no listener: the virtual one handles it (passthrough)"
    );
}

#[test]
fn filter_disabled_predicates_match_destination_ports() {
    use crate::config::listener::PortPredicate as P;
    let p = P::Or(vec![P::Range(9000, 9001), P::Range(3306, 3307)]);
    assert!(p.matches(9000) && p.matches(3306));
    assert!(!p.matches(9001) && !p.matches(8080));
    assert!(P::Not(Box::new(p.clone())).matches(8080));
    assert!(P::And(vec![p.clone(), P::Any]).matches(9000));
}
