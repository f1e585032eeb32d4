//! The real istiod config dumps in ../shared/conformance/istio-configdumps/ load, convert to the
//! proxy's model with nothing rejected, and the converted values are the ones in the files.

use std::path::PathBuf;
use std::process::Command;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as WireListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use outrigger_proxy::config::Address;
use outrigger_proxy::config::cluster::LoadAssignment;
use outrigger_proxy::config::listener::{Listener, ListenerFilter, NetworkFilter};
use outrigger_proxy::config::route::{Action, Domain, PathMatch, RouteConfig, Target};
use outrigger_proxy::dump::{self, Dump};
use outrigger_proxy::validate::{self, Kind};
use prost::Message;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/istio-configdumps")
        .join(name)
}

fn load(name: &str) -> Dump {
    dump::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_dump_loads_with_nothing_rejected() {
    let expected: &[(&str, &[(Kind, usize)])] = &[
        ("authz-sidecar-listeners.yaml", &[(Kind::Listener, 29)]),
        (
            "bootstrap-default.json",
            &[(Kind::Listener, 2), (Kind::Cluster, 4)],
        ),
        (
            "gateway-routes.json",
            &[(Kind::RouteConfig, 1), (Kind::Cluster, 1)],
        ),
        ("sidecar-endpoints.json", &[(Kind::Endpoints, 37)]),
        ("sidecar-secrets.json", &[(Kind::Secret, 2)]),
        (
            "waypoint-full.json",
            &[
                (Kind::Listener, 2),
                (Kind::RouteConfig, 1),
                (Kind::Cluster, 3),
                (Kind::Endpoints, 2),
                (Kind::Secret, 2),
            ],
        ),
    ];
    for (file, counts) in expected {
        let report = validate::validate(&load(file));
        assert!(
            report.rejected.is_empty(),
            "{file}: rejected {:?}",
            report.rejected
        );
        for (kind, n) in counts.iter() {
            assert_eq!(
                report.accepted.get(kind).map(Vec::len),
                Some(*n),
                "{file}: {}",
                kind.plural()
            );
        }
    }
}

fn listener(dump: &Dump, name: &str) -> Listener {
    let packed = dump
        .listeners
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"));
    Listener::try_from(&WireListener::decode(packed.any.value.as_slice()).unwrap()).unwrap()
}

#[test]
fn sidecar_listeners_convert_as_istiod_built_them() {
    let dump = load("authz-sidecar-listeners.yaml");
    let out = listener(&dump, "virtualOutbound");
    assert_eq!(
        out.address,
        Address::Socket("0.0.0.0:15001".parse().unwrap())
    );
    assert!(out.use_original_dst && out.bind_to_port);
    assert!(out.filter_chains.iter().any(|c| c.filters.iter().any(|f| matches!(f, NetworkFilter::TcpProxy(t) if matches!(&t.target, Target::Cluster(c) if c == "PassthroughCluster")))));

    let inbound = listener(&dump, "virtualInbound");
    assert_eq!(
        inbound.address,
        Address::Socket("0.0.0.0:15006".parse().unwrap())
    );
    assert!(
        inbound
            .listener_filters
            .contains(&ListenerFilter::OriginalDst)
    );
    assert!(
        inbound
            .listener_filters
            .contains(&ListenerFilter::TlsInspector)
    );
    assert!(
        inbound
            .filter_chains
            .iter()
            .any(|c| c.matcher.transport_protocol.as_deref() == Some("tls"))
    );

    // Per-service listeners are reached through virtualOutbound, not bound themselves.
    let svc = listener(&dump, "0.0.0.0_9080");
    assert!(!svc.bind_to_port);
    assert!(svc.filter_chains.iter().any(|c| {
        c.filters
            .iter()
            .any(|f| matches!(f, NetworkFilter::Http(_)))
    }));
    let internal = listener(&dump, "main_internal");
    assert_eq!(internal.address, Address::Internal("main_internal".into()));
}

#[test]
fn gateway_routes_convert_with_matches_and_timeouts() {
    let dump = load("gateway-routes.json");
    let rc = RouteConfig::try_from(
        &RouteConfiguration::decode(dump.route_configs[0].any.value.as_slice()).unwrap(),
    )
    .unwrap();
    assert_eq!(rc.name, "http.8080");
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, vec![Domain::Any]);
    assert_eq!(vh.routes.len(), 5);
    let first = &vh.routes[0];
    assert!(matches!(&first.matcher.path, PathMatch::Exact(p) if p == "/productpage"));
    match &first.action {
        Action::Forward(f) => {
            assert!(
                matches!(&f.target, Target::Cluster(c) if c == "outbound|9080||productpage.default.svc.cluster.local")
            );
            assert_eq!(f.timeout, None, "0s disables the timeout");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn endpoints_keep_addresses_and_health() {
    let dump = load("sidecar-endpoints.json");
    let all: Vec<LoadAssignment> = dump
        .endpoints
        .iter()
        .map(|p| {
            LoadAssignment::try_from(
                &ClusterLoadAssignment::decode(p.any.value.as_slice()).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let with_endpoints = all
        .iter()
        .filter(|a| a.localities.iter().any(|l| !l.endpoints.is_empty()))
        .count();
    assert!(
        with_endpoints > 10,
        "{with_endpoints} assignments have endpoints"
    );
    // pilot-agent's xDS and SDS servers are Unix sockets; everything else is ip:port.
    for a in &all {
        for e in a.localities.iter().flat_map(|l| &l.endpoints) {
            match (&e.address, a.cluster_name.as_str()) {
                (Address::Pipe(p), "xds-grpc") => assert_eq!(p, "./etc/istio/proxy/XDS"),
                (Address::Pipe(p), "sds-grpc") => {
                    assert!(p.ends_with("workload-spiffe-uds/socket"))
                }
                (Address::Socket(s), _) => assert_ne!(s.port(), 0, "{}", a.cluster_name),
                (other, name) => panic!("{name}: unexpected address {other}"),
            }
        }
    }
}

fn proxy(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-proxy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn validate_command_reports_and_sets_the_exit_code() {
    let good = fixture("sidecar-endpoints.json");
    let (code, out) = proxy(&["validate", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("37 accepted, 0 rejected"), "{out}");
    // Envoy's flags work too.
    let (code, _) = proxy(&["--mode", "validate", "-c", good.to_str().unwrap()]);
    assert_eq!(code, 0);

    let dir = std::env::temp_dir().join(format!("outrigger-proxy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, BAD_DUMP).unwrap();
    let (code, out) = proxy(&["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REJECTED route config 'bad-regex'") && out.contains("invalid regex"),
        "{out}"
    );
    assert!(
        out.contains("REJECTED listener 'unknown-filter'")
            && out.contains("unsupported network filter 'mystery'"),
        "{out}"
    );
    assert!(
        out.contains("REJECTED cluster 'static-without-endpoints'"),
        "{out}"
    );
    assert!(
        out.contains("accepted    1 route configs"),
        "the good resource still loads: {out}"
    );
    let (code, json) = proxy(&["validate", "--json", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["rejected"].as_array().unwrap().len(), 3);

    std::fs::write(&bad, "{ not json").unwrap();
    let (code, out) = proxy(&["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("not valid JSON"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

const BAD_DUMP: &str = r#"{"configs": [
 {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [
   {"route_config": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "bad-regex",
     "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [{"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "c"}}]}]}},
   {"route_config": {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "good",
     "virtual_hosts": [{"name": "vh", "domains": ["example.com", "*.example.com"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
   {"name": "unknown-filter", "active_state": {"listener": {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "unknown-filter",
     "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
     "filter_chains": [{"filters": [{"name": "mystery", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}]}]}}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
   {"cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "static-without-endpoints", "type": "STATIC"}}]}
]}"#;
