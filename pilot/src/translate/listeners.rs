//! LDS: `virtualOutbound` (15001) and `virtualInbound` (15006), `0.0.0.0_PORT` for outbound HTTP
//! ports and `VIP_PORT` for outbound TCP services, as `listener_builder.go` lays them out.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::listener::{http_inspector::v3::HttpInspector, original_dst::v3::OriginalDst, tls_inspector::v3::TlsInspector};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::google::protobuf::Any;

use super::routes::http_ports;
use super::wire::{self, http_connection_manager, listener_filter, tcp_proxy};
use super::{BLACKHOLE, Ctx, INBOUND_PASSTHROUGH, PASSTHROUGH, inbound_name, outbound_name};
use crate::registry::{Protocol, Resolution, Service, ServicePort, fqdn};

const HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];

fn chain(
    name: &str,
    m: Option<listener::FilterChainMatch>,
    filters: Vec<listener::Filter>,
) -> listener::FilterChain {
    listener::FilterChain {
        name: name.into(),
        filter_chain_match: m,
        filters,
        ..Default::default()
    }
}

fn port_match(port: u32) -> Option<listener::FilterChainMatch> {
    Some(listener::FilterChainMatch {
        destination_port: wire::u32_value(port),
        ..Default::default()
    })
}

fn cidr(prefix: &str, len: u32) -> core::CidrRange {
    core::CidrRange {
        address_prefix: prefix.into(),
        prefix_len: wire::u32_value(len),
    }
}

fn inspectors() -> Vec<listener::ListenerFilter> {
    vec![
        listener_filter(
            "envoy.filters.listener.tls_inspector",
            wire::pack(&TlsInspector::default()),
        ),
        listener_filter(
            "envoy.filters.listener.http_inspector",
            wire::pack(&HttpInspector::default()),
        ),
    ]
}

fn virtual_outbound(allow_any: bool) -> listener::Listener {
    listener::Listener {
        name: "virtualOutbound".into(),
        address: Some(wire::socket("0.0.0.0", 15001)),
        use_original_dst: wire::bool_value(true),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        filter_chains: vec![
            chain(
                "virtualOutbound-blackhole",
                port_match(15001),
                vec![tcp_proxy(BLACKHOLE, &[(BLACKHOLE.into(), 1)])],
            ),
            chain(
                "virtualOutbound-catchall-tcp",
                None,
                vec![{
                    let to = if allow_any { PASSTHROUGH } else { BLACKHOLE };
                    tcp_proxy(to, &[(to.into(), 1)])
                }],
            ),
        ],
        ..Default::default()
    }
}

/// An HCM with an inline route config sending everything to `cluster`.
fn inline_hcm(
    stat_prefix: &str,
    route_name: &str,
    vhost: &str,
    cluster: &str,
    operation: &str,
    telemetry: &wire::Telemetry,
) -> listener::Filter {
    let rc = route::RouteConfiguration {
        name: route_name.into(),
        validate_clusters: wire::bool_value(false),
        virtual_hosts: vec![route::VirtualHost {
            name: vhost.into(),
            domains: vec!["*".into()],
            routes: vec![route::Route {
                name: "default".into(),
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    timeout: Some(wire::duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                // The spans' name, as istiod sets it on inbound routes.
                decorator: Some(route::Decorator {
                    operation: operation.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    http_connection_manager(stat_prefix, RouteSpecifier::RouteConfig(rc), telemetry)
}

/// A `filter_disabled` predicate matching these destination ports.
fn disabled_on(ports: &[u32]) -> Option<listener::ListenerFilterChainMatchPredicate> {
    use envoy_types::pb::envoy::r#type::v3::Int32Range;
    use listener::listener_filter_chain_match_predicate::{MatchSet, Rule};
    let one = |p: u32| listener::ListenerFilterChainMatchPredicate {
        rule: Some(Rule::DestinationPortRange(Int32Range {
            start: p as i32,
            end: p as i32 + 1,
        })),
    };
    match ports {
        [] => None,
        [p] => Some(one(*p)),
        many => Some(listener::ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet {
                rules: many.iter().map(|p| one(*p)).collect(),
            })),
        }),
    }
}

fn virtual_inbound(
    inbound: &[(&Service, &ServicePort, u32)],
    telemetry: &wire::Telemetry,
) -> listener::Listener {
    let raw = |port: Option<u32>, alpn: &[&str], prefix: bool| {
        Some(listener::FilterChainMatch {
            destination_port: port.and_then(wire::u32_value),
            transport_protocol: "raw_buffer".into(),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            prefix_ranges: if prefix {
                vec![cidr("0.0.0.0", 0)]
            } else {
                vec![]
            },
            ..Default::default()
        })
    };
    let mut chains = vec![chain(
        "virtualInbound-blackhole",
        port_match(15006),
        vec![tcp_proxy(BLACKHOLE, &[(BLACKHOLE.into(), 1)])],
    )];
    for (svc, port, target) in inbound {
        let cluster = inbound_name(*target);
        let filter = if port.protocol.is_http() {
            inline_hcm(
                &cluster,
                &cluster,
                &format!("inbound|http|{}", port.port),
                &cluster,
                &format!("{}:{}/*", svc.hostname, port.port),
                telemetry,
            )
        } else {
            tcp_proxy(&cluster, &[(cluster.clone(), 1)])
        };
        chains.push(chain(
            &format!("0.0.0.0_{target}"),
            raw(Some(*target), &[], false),
            vec![filter],
        ));
    }
    chains.push(chain(
        "virtualInbound-catchall-http",
        raw(None, &HTTP_ALPNS, true),
        vec![inline_hcm(
            "InboundPassthroughCluster",
            "InboundPassthroughCluster",
            "inbound|http|0",
            INBOUND_PASSTHROUGH,
            ":0/*",
            telemetry,
        )],
    ));
    chains.push(chain(
        "virtualInbound",
        raw(None, &[], true),
        vec![tcp_proxy(
            INBOUND_PASSTHROUGH,
            &[(INBOUND_PASSTHROUGH.into(), 1)],
        )],
    ));
    // No sniffing on ports whose protocol is declared (`populateListenerFilters`): it would only
    // delay server-first protocols.
    let known: Vec<u32> = inbound
        .iter()
        .filter(|(_, p, _)| p.protocol != Protocol::Auto)
        .map(|(_, _, t)| *t)
        .collect();
    let mut filters = vec![listener_filter(
        "envoy.filters.listener.original_dst",
        wire::pack(&OriginalDst::default()),
    )];
    filters.extend(inspectors().into_iter().map(|mut f| {
        f.filter_disabled = disabled_on(&known);
        f
    }));
    listener::Listener {
        name: "virtualInbound".into(),
        address: Some(wire::socket("0.0.0.0", 15006)),
        traffic_direction: core::TrafficDirection::Inbound as i32,
        listener_filters: filters,
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        ..Default::default()
    }
}

fn not_bound(
    name: String,
    ip: &str,
    port: u32,
    chains: Vec<listener::FilterChain>,
    default: Option<listener::FilterChain>,
    http: bool,
) -> listener::Listener {
    listener::Listener {
        name,
        address: Some(wire::socket(ip, port)),
        bind_to_port: wire::bool_value(false),
        traffic_direction: core::TrafficDirection::Outbound as i32,
        continue_on_listener_filters_timeout: true,
        listener_filters: if http { inspectors() } else { vec![] },
        filter_chains: chains,
        default_filter_chain: default,
        ..Default::default()
    }
}

/// The clusters a TCP service port sends to: the VirtualService's tcp route, or its own.
fn tcp_destinations(ctx: &Ctx, svc: &Service, port: u32) -> Vec<(String, u32)> {
    if let Some((o, vs)) = ctx.virtual_services.get(&svc.hostname)
        && let Some(t) = vs.tcp.iter().find(|t| {
            t.matches.is_empty() || t.matches.iter().any(|m| m.port.is_none_or(|p| p == port))
        })
    {
        return t
            .route
            .iter()
            .filter(|d| t.route.len() == 1 || d.weight.unwrap_or(0) > 0)
            .map(|d| {
                let host = fqdn(&d.destination.host, &o.namespace);
                let dport = d
                    .destination
                    .port
                    .as_ref()
                    .map(|p| p.number)
                    .unwrap_or(port);
                (
                    outbound_name(dport, d.destination.subset.as_deref().unwrap_or(""), &host),
                    d.weight.unwrap_or(100).max(0) as u32,
                )
            })
            .collect();
    }
    vec![(outbound_name(port, "", &svc.hostname), 1)]
}

pub fn build(ctx: &Ctx) -> BTreeMap<String, Any> {
    let mut out: BTreeMap<String, listener::Listener> = BTreeMap::new();
    out.insert("virtualOutbound".into(), virtual_outbound(ctx.allow_any));
    let mut telemetry = wire::telemetry(ctx.mesh_config(), ctx.collector.clone());
    telemetry.idle_timeout = ctx.proxy.idle_timeout;
    // Istio's trace service name: the app label (else the pod's name) and the namespace.
    let app = [
        "app",
        "app.kubernetes.io/name",
        "service.istio.io/canonical-name",
    ]
    .iter()
    .find_map(|k| ctx.proxy.labels.get(*k))
    .cloned()
    .unwrap_or_else(|| {
        ctx.proxy
            .id
            .split('~')
            .nth(2)
            .and_then(|p| p.split('.').next())
            .unwrap_or("unknown")
            .to_string()
    });
    telemetry.service_name = format!("{app}.{}", ctx.proxy.namespace);
    out.insert(
        "virtualInbound".into(),
        virtual_inbound(&ctx.inbound(), &telemetry),
    );
    let passthrough = || {
        chain(
            "PassthroughFilterChain",
            None,
            vec![tcp_proxy(PASSTHROUGH, &[(PASSTHROUGH.into(), 1)])],
        )
    };
    for port in http_ports(ctx) {
        let name = format!("0.0.0.0_{port}");
        let m = Some(listener::FilterChainMatch {
            transport_protocol: "raw_buffer".into(),
            application_protocols: HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        let hcm = http_connection_manager(
            &format!("outbound_0.0.0.0_{port}"),
            wire::rds(&port.to_string()),
            &telemetry,
        );
        out.insert(
            name.clone(),
            not_bound(
                name,
                "0.0.0.0",
                port,
                vec![chain(&format!("0.0.0.0_{port}"), m, vec![hcm])],
                Some(passthrough()),
                true,
            ),
        );
    }
    for svc in &ctx.services {
        for p in svc
            .ports
            .iter()
            .filter(|p| !p.protocol.is_http() && p.protocol != Protocol::Udp)
        {
            // Without a VIP the connection's destination is an endpoint: passthrough handles it.
            let Some(vip) = svc.vips.first() else {
                continue;
            };
            if svc.resolution == Resolution::Passthrough && svc.vips.is_empty() {
                continue;
            }
            let name = format!("{vip}_{}", p.port);
            let dests = tcp_destinations(ctx, svc, p.port);
            let stat = dests.first().map(|(n, _)| n.clone()).unwrap_or_default();
            let (source_ip_hash, idle) = match dests.as_slice() {
                [(one, _)] => (source_ip_hash(ctx, one), tcp_idle_timeout(ctx, one)),
                _ => (false, None),
            };
            let c = chain(
                &name,
                None,
                vec![wire::tcp_proxy_hashed(
                    &stat,
                    &dests,
                    source_ip_hash,
                    idle.or(ctx.proxy.idle_timeout),
                )],
            );
            out.entry(name.clone())
                .or_insert_with(|| not_bound(name, vip, p.port, vec![c], None, false));
        }
    }
    out.into_iter().map(|(n, l)| (n, wire::pack(&l))).collect()
}

/// The DestinationRule `connectionPool.tcp.idleTimeout` of `cluster` (subset first): the
/// tcp_proxy's idle timeout (no bytes either way for this long closes the connection).
fn tcp_idle_timeout(ctx: &Ctx, cluster: &str) -> Option<std::time::Duration> {
    let mut parts = cluster.splitn(4, '|').skip(2);
    let (subset, host) = (parts.next()?, parts.next()?);
    let dr = ctx.destination_rules.get(host)?;
    let of = |p: Option<&crate::resources::TrafficPolicy>| {
        p?.connection_pool
            .as_ref()?
            .tcp
            .as_ref()?
            .idle_timeout
            .clone()
    };
    let subset_policy = dr
        .subsets
        .iter()
        .find(|s| !subset.is_empty() && s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref());
    let d = of(subset_policy).or_else(|| of(dr.traffic_policy.as_ref()))?;
    crate::duration::parse(&d).ok()
}

/// Whether the DestinationRule of `cluster` (`outbound|port|subset|host`) hashes by source IP;
/// a subset with its own load balancer decides for itself (Istio's `maybeSetHashPolicy`).
fn source_ip_hash(ctx: &Ctx, cluster: &str) -> bool {
    let mut parts = cluster.splitn(4, '|').skip(2);
    let (Some(subset), Some(host)) = (parts.next(), parts.next()) else {
        return false;
    };
    let Some(dr) = ctx.destination_rules.get(host) else {
        return false;
    };
    let uses = |lb: Option<&crate::resources::LoadBalancer>| {
        lb.and_then(|l| l.consistent_hash.as_ref())
            .and_then(|c| c.use_source_ip)
            .unwrap_or(false)
    };
    let subset_lb = dr
        .subsets
        .iter()
        .find(|s| !subset.is_empty() && s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(|p| p.load_balancer.as_ref());
    match subset_lb {
        Some(lb) => uses(Some(lb)),
        None => uses(
            dr.traffic_policy
                .as_ref()
                .and_then(|p| p.load_balancer.as_ref()),
        ),
    }
}
