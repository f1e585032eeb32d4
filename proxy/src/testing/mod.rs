//! Test helpers (behind the `testing` feature): builders of Envoy wire resources, and a scripted
//! ADS server.

pub mod ads;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn socket(ip: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn filter(name: &str, config: Any) -> listener::Filter {
    listener::Filter {
        name: name.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(config)),
    }
}

/// A listener on `port` whose only chain proxies TCP to `cluster`.
pub fn tcp_listener(name: &str, port: u32, cluster: &str) -> listener::Listener {
    let t = tcp::TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    listener::Listener {
        name: name.into(),
        address: Some(socket("0.0.0.0", port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![filter("envoy.filters.network.tcp_proxy", pack(&t))],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener on `port` with an HTTP connection manager using RDS `route_config`.
pub fn http_listener(name: &str, port: u32, route_config: &str) -> listener::Listener {
    let h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: route_config.into(),
                config_source: None,
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    listener::Listener {
        name: name.into(),
        address: Some(socket("0.0.0.0", port)),
        filter_chains: vec![listener::FilterChain {
            filters: vec![filter(
                "envoy.filters.network.http_connection_manager",
                pack(&h),
            )],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A listener the proxy must reject (its only filter is of an unknown type).
pub fn bad_listener(name: &str, port: u32) -> listener::Listener {
    let mut l = tcp_listener(name, port, "none");
    l.filter_chains[0].filters[0] = filter(
        "mystery",
        Any {
            type_url: "type.googleapis.com/example.Mystery".into(),
            value: vec![],
        },
    );
    l
}

/// Istio's PassthroughCluster / InboundPassthroughCluster shape: ORIGINAL_DST, optionally bound
/// to a source address (127.0.0.6 for inbound).
pub fn original_dst_cluster(name: &str, bind: Option<&str>) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        upstream_bind_config: bind.map(|ip| core::BindConfig {
            source_address: Some(core::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A virtual listener (`use_original_dst`) bound on `port`, passing through to `cluster`.
pub fn virtual_listener(name: &str, port: u32, cluster: &str) -> listener::Listener {
    let mut l = tcp_listener(name, port, cluster);
    l.use_original_dst = Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    l
}

/// A per-service TCP listener on `ip:port`, reached through the virtual listener only.
pub fn service_listener(ip: &str, port: u32, cluster: &str) -> listener::Listener {
    let mut l = tcp_listener(&format!("{ip}_{port}"), port, cluster);
    l.address = Some(socket(ip, port));
    l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    l
}

pub fn eds_cluster(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            service_name: name.into(),
            eds_config: None,
        }),
        ..Default::default()
    }
}

pub fn load_assignment(cluster: &str, endpoints: &[(&str, u32)]) -> ep::ClusterLoadAssignment {
    ep::ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![ep::LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(ip, port)| ep::LbEndpoint {
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: Some(socket(ip, *port)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration sending everything to `cluster`.
pub fn route_config(name: &str, cluster: &str) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration: requests with header `header: value` go to `special`, the rest to
/// `default`; domains as Istio lists them for a service.
pub fn header_route_config(
    name: &str,
    domains: &[&str],
    header: (&str, &str),
    special: &str,
    default: &str,
) -> route::RouteConfiguration {
    let to = |cluster: &str| {
        Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                cluster.into(),
            )),
            ..Default::default()
        }))
    };
    let prefix = || Some(route::route_match::PathSpecifier::Prefix("/".into()));
    let matcher = route::HeaderMatcher {
        name: header.0.into(),
        header_match_specifier: Some(route::header_matcher::HeaderMatchSpecifier::StringMatch(envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
            match_pattern: Some(envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(header.1.into())),
            ignore_case: false,
        })),
        ..Default::default()
    };
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: domains.first().copied().unwrap_or("all").into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![
                route::Route {
                    r#match: Some(route::RouteMatch {
                        path_specifier: prefix(),
                        headers: vec![matcher],
                        ..Default::default()
                    }),
                    action: to(special),
                    ..Default::default()
                },
                route::Route {
                    r#match: Some(route::RouteMatch {
                        path_specifier: prefix(),
                        ..Default::default()
                    }),
                    action: to(default),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The same listener, reached only through a virtual listener (`bind_to_port: false`).
pub fn not_bound(mut l: listener::Listener) -> listener::Listener {
    l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    l
}

/// Runs the proxy's data path: one HTTP listener on a free loopback port routing by `rc` (RDS
/// name "80") to `clusters`. Returns once it accepts, with its port, snapshot and shared context;
/// the configuration stays published for the rest of the test.
pub async fn proxy_with(
    rc: crate::config::route::RouteConfig,
    clusters: Vec<crate::config::cluster::Cluster>,
) -> (
    u16,
    std::sync::Arc<crate::config::Snapshot>,
    std::sync::Arc<crate::shared::Shared>,
) {
    use std::sync::Arc;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut wire = http_listener("http", u32::from(port), "80");
    wire.address = Some(socket("127.0.0.1", u32::from(port)));
    let mut snap = crate::config::Snapshot::default();
    snap.listeners.insert(
        "http".into(),
        Arc::new(crate::config::listener::Listener::try_from(&wire).unwrap()),
    );
    snap.routes.insert("80".into(), Arc::new(rc));
    for c in clusters {
        snap.clusters.insert(c.name.clone(), Arc::new(c));
    }
    let snap = Arc::new(snap);
    let (tx, rx) = tokio::sync::watch::channel(snap.clone());
    let (shared, background) = crate::app::shared_for(rx, Default::default());
    tokio::spawn(crate::listener::serve(shared.clone()));
    tokio::spawn(async move {
        let _kept = (tx, background);
        std::future::pending::<()>().await
    });
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (port, snap, shared)
}
