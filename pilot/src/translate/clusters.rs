//! CDS: `outbound|PORT|SUBSET|HOST` per visible service port and DestinationRule subset,
//! `inbound|PORT||` per port the proxy serves, and the passthrough / blackhole clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_opts;

use super::wire::{self, istio_metadata, list_value, string_value, struct_value};
use super::{Ctx, inbound_name, outbound_name};
use crate::registry::{Protocol, Resolution, Service, ServicePort};
use crate::resources::{Labels, TrafficPolicy};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";

/// Mesh `connectTimeout` default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which endpoints an EDS cluster gets.
#[derive(Debug, Clone)]
pub struct EdsSource {
    pub hostname: String,
    pub port: u32,
    pub subset_labels: Labels,
    /// The rule's `loadBalancer.localityLbSetting`.
    pub locality_lb: Option<crate::resources::LocalityLbSetting>,
    /// The cluster has outlier detection (locality failover needs it).
    pub outlier_detection: bool,
}

pub type Built = BTreeMap<String, (cluster::Cluster, Option<EdsSource>)>;

fn discovery(t: cluster::cluster::DiscoveryType) -> Option<cluster::cluster::ClusterDiscoveryType> {
    Some(cluster::cluster::ClusterDiscoveryType::Type(t as i32))
}

fn bind_127_0_0_6() -> Option<core::BindConfig> {
    Some(core::BindConfig {
        source_address: Some(wire::socket_address("127.0.0.6", 0)),
        ..Default::default()
    })
}

fn original_dst(name: &str, bind: bool) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        cluster_discovery_type: discovery(cluster::cluster::DiscoveryType::OriginalDst),
        lb_policy: cluster::cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(wire::duration(CONNECT_TIMEOUT)),
        cleanup_interval: Some(wire::duration(Duration::from_secs(60))),
        upstream_bind_config: if bind { bind_127_0_0_6() } else { None },
        ..Default::default()
    }
}

/// Istio's default thresholds: everything unlimited, remaining capacity tracked.
/// Istio's thresholds: unlimited unless the DestinationRule's connection pool says otherwise
/// (`tcp.maxConnections`, `http.http1MaxPendingRequests`, `http.http2MaxRequests`,
/// `http.maxRetries`).
fn circuit_breakers(pool: Option<&crate::resources::ConnectionPool>) -> cluster::CircuitBreakers {
    let http = |key: &str| {
        pool.and_then(|p| p.http.as_ref())
            .and_then(|h| h.get(key))
            .and_then(serde_yaml::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    };
    let tcp_max = pool
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.max_connections)
        .and_then(|v| u32::try_from(v).ok());
    let value = |v: Option<u32>| wire::u32_value(v.unwrap_or(u32::MAX));
    cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            max_connections: value(tcp_max),
            max_pending_requests: value(http("http1MaxPendingRequests")),
            max_requests: value(http("http2MaxRequests")),
            max_retries: value(http("maxRetries")),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `applyOutlierDetection`: consecutive 5xx and gateway errors enforced at 100%, interval,
/// base ejection time, maximum ejection percent.
fn outlier_detection(v: &serde_yaml::Value) -> cluster::OutlierDetection {
    let n = |k: &str| {
        v.get(k)
            .and_then(serde_yaml::Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
    };
    let d = |k: &str| {
        v.get(k)
            .and_then(serde_yaml::Value::as_str)
            .and_then(|s| crate::duration::parse(s).ok())
            .map(wire::duration)
    };
    let consecutive_5xx = n("consecutive5xxErrors").or(n("consecutiveErrors"));
    let gateway = n("consecutiveGatewayErrors");
    let split = v
        .get("splitExternalLocalOriginErrors")
        .and_then(serde_yaml::Value::as_bool)
        .unwrap_or(false);
    let local = n("consecutiveLocalOriginFailures");
    cluster::OutlierDetection {
        // istiod disables the 5xx rule unless it is set, and enforces what is set.
        consecutive_5xx: wire::u32_value(consecutive_5xx.unwrap_or(0)),
        enforcing_consecutive_5xx: wire::u32_value(if consecutive_5xx.unwrap_or(0) > 0 {
            100
        } else {
            0
        }),
        consecutive_gateway_failure: gateway.and_then(wire::u32_value),
        enforcing_consecutive_gateway_failure: gateway.and_then(|_| wire::u32_value(100)),
        interval: d("interval"),
        base_ejection_time: d("baseEjectionTime"),
        max_ejection_percent: n("maxEjectionPercent").and_then(wire::u32_value),
        // Connect failures counted apart from 5xx (Istio's `applyOutlierDetection`).
        split_external_local_origin_errors: split,
        consecutive_local_origin_failure: local.filter(|_| split).and_then(wire::u32_value),
        enforcing_consecutive_local_origin_failure: local
            .filter(|n| split && *n > 0)
            .and_then(|_| wire::u32_value(100)),
        ..Default::default()
    }
}

/// `outlierDetection.minHealthPercent` (default 0: panic mode off, so that ejected hosts never
/// get traffic back while others are left), as `healthy_panic_threshold`.
fn panic_threshold(v: &serde_yaml::Value) -> envoy_types::pb::envoy::r#type::v3::Percent {
    let value = v
        .get("minHealthPercent")
        .and_then(serde_yaml::Value::as_f64)
        .unwrap_or(0.0)
        .clamp(0.0, 100.0);
    envoy_types::pb::envoy::r#type::v3::Percent { value }
}

/// The subset policy merged over the top-level one (field by field, as istiod does).
fn merged<'a>(
    top: Option<&'a TrafficPolicy>,
    subset: Option<&'a TrafficPolicy>,
) -> (
    Option<&'a crate::resources::LoadBalancer>,
    Option<&'a crate::resources::ConnectionPool>,
) {
    let lb = subset
        .and_then(|p| p.load_balancer.as_ref())
        .or(top.and_then(|p| p.load_balancer.as_ref()));
    let cp = subset
        .and_then(|p| p.connection_pool.as_ref())
        .or(top.and_then(|p| p.connection_pool.as_ref()));
    (lb, cp)
}

/// `consistentHash.ringHash` / `maglev` → the cluster's `lb_config` (Envoy's defaults when
/// unset).
fn hash_lb_config(h: &crate::resources::ConsistentHash) -> Option<cluster::cluster::LbConfig> {
    use cluster::cluster::{LbConfig, MaglevLbConfig, RingHashLbConfig};
    use envoy_types::pb::google::protobuf::UInt64Value;
    if let Some(m) = &h.maglev {
        return Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
            table_size: m.table_size.map(|value| UInt64Value { value }),
        }));
    }
    let min = h
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(h.minimum_ring_size)
        .filter(|s| *s > 0)?;
    Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value { value: min }),
        ..Default::default()
    }))
}

fn outbound(
    svc: &Service,
    port: &ServicePort,
    subset: Option<(&str, Option<&TrafficPolicy>)>,
    top: Option<&TrafficPolicy>,
) -> (cluster::Cluster, Option<EdsSource>) {
    use cluster::cluster::{DiscoveryType as D, LbPolicy as L};
    let subset_name = subset.map(|(n, _)| n).unwrap_or("");
    let name = outbound_name(port.port, subset_name, &svc.hostname);
    let (lb, pool) = merged(top, subset.and_then(|(_, p)| p));
    let outlier = subset
        .and_then(|(_, p)| p)
        .and_then(|p| p.outlier_detection.as_ref())
        .or(top.and_then(|p| p.outlier_detection.as_ref()));
    let hash = lb.and_then(|l| l.consistent_hash.as_ref());
    let lb_policy = match lb.and_then(|l| l.simple.as_deref()) {
        _ if hash.is_some_and(|h| h.maglev.is_some()) => L::Maglev,
        _ if hash.is_some() => L::RingHash,
        Some("ROUND_ROBIN") => L::RoundRobin,
        Some("RANDOM") => L::Random,
        Some("PASSTHROUGH") => L::ClusterProvided,
        // LEAST_REQUEST is Istio's default; LEAST_CONN is its deprecated alias.
        _ => L::LeastRequest,
    };
    let connect_timeout = pool
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_deref())
        .and_then(|d| crate::duration::parse(d).ok())
        .unwrap_or(CONNECT_TIMEOUT);
    let mut c = cluster::Cluster {
        name: name.clone(),
        connect_timeout: Some(wire::duration(connect_timeout)),
        lb_policy: lb_policy as i32,
        circuit_breakers: Some(circuit_breakers(pool)),
        outlier_detection: outlier.map(outlier_detection),
        common_lb_config: outlier.map(|o| cluster::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(panic_threshold(o)),
            ..Default::default()
        }),
        lb_config: hash.and_then(hash_lb_config),
        ..Default::default()
    };
    // retryBudget {percent, minRetryConcurrency} (Istio's `applyRetryBudget`).
    let budget = subset
        .and_then(|(_, p)| p)
        .and_then(|p| p.retry_budget.as_ref())
        .or(top.and_then(|p| p.retry_budget.as_ref()));
    if let Some(b) = budget
        && let Some(t) = c
            .circuit_breakers
            .as_mut()
            .and_then(|cb| cb.thresholds.first_mut())
    {
        use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
        let percent = b
            .get("percent")
            .and_then(|v| v.as_f64().or_else(|| v.get("value")?.as_f64()));
        let min = b.get("minRetryConcurrency").and_then(|v| v.as_u64());
        t.retry_budget = Some(RetryBudget {
            budget_percent: percent
                .map(|value| envoy_types::pb::envoy::r#type::v3::Percent { value }),
            min_retry_concurrency: min
                .and_then(|m| wire::u32_value(m.min(u64::from(u32::MAX)) as u32)),
            ..Default::default()
        });
    }
    let mut metadata = vec![
        (
            "services",
            list_value(vec![struct_value(&[
                ("host", string_value(&svc.hostname)),
                ("name", string_value(&svc.name)),
                ("namespace", string_value(&svc.namespace)),
            ])]),
        ),
        (
            "default_original_port",
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::NumberValue(
                    f64::from(port.port),
                )),
            },
        ),
    ];
    if !subset_name.is_empty() {
        metadata.push(("subset", string_value(subset_name)));
    }
    c.metadata = Some(istio_metadata(&metadata));
    // connectionPool.http.idleTimeout (else tcp.idleTimeout): the upstream connections' idle
    // timeout.
    let idle = pool
        .and_then(|p| match &p.http {
            Some(serde_yaml::Value::Mapping(m)) => m
                .get("idleTimeout")
                .and_then(|v| v.as_str())
                .map(String::from),
            _ => None,
        })
        .or_else(|| pool.and_then(|p| p.tcp.as_ref()?.idle_timeout.clone()))
        .and_then(|d| crate::duration::parse(&d).ok());
    let h2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc);
    if h2 || idle.is_some() {
        use http_opts::http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions as U,
            explicit_http_config::ProtocolConfig as P,
        };
        let opts = http_opts::HttpProtocolOptions {
            upstream_protocol_options: h2.then(|| {
                U::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(P::Http2ProtocolOptions(Default::default())),
                })
            }),
            common_http_protocol_options: idle.map(|t| {
                envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                    idle_timeout: Some(wire::duration(t)),
                    ..Default::default()
                }
            }),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            wire::pack(&opts),
        );
    }
    let passthrough = lb_policy == L::ClusterProvided || svc.resolution == Resolution::Passthrough;
    if passthrough {
        c.cluster_discovery_type = discovery(D::OriginalDst);
        c.lb_policy = L::ClusterProvided as i32;
        return (c, None);
    }
    // The subset's labels are set by `build`, which has the DestinationRule.
    let source = EdsSource {
        hostname: svc.hostname.clone(),
        port: port.port,
        subset_labels: Labels::new(),
        locality_lb: lb.and_then(|l| l.locality_lb_setting.clone()),
        outlier_detection: c.outlier_detection.is_some(),
    };
    if svc.resolution == Resolution::Dns {
        c.cluster_discovery_type = discovery(D::StrictDns);
        c.load_assignment = Some(ep::ClusterLoadAssignment {
            cluster_name: name,
            ..Default::default()
        });
        return (c, Some(source));
    }
    c.cluster_discovery_type = discovery(D::Eds);
    c.eds_cluster_config = Some(cluster::cluster::EdsClusterConfig {
        service_name: name,
        eds_config: Some(wire::ads_source()),
    });
    (c, Some(source))
}

pub fn build(ctx: &Ctx) -> Built {
    let mut out = Built::new();
    out.insert(
        BLACKHOLE.into(),
        (
            cluster::Cluster {
                name: BLACKHOLE.into(),
                cluster_discovery_type: discovery(cluster::cluster::DiscoveryType::Static),
                connect_timeout: Some(wire::duration(CONNECT_TIMEOUT)),
                // No endpoints: every connection fails, as intended.
                load_assignment: Some(ep::ClusterLoadAssignment {
                    cluster_name: BLACKHOLE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            None,
        ),
    );
    out.insert(PASSTHROUGH.into(), (original_dst(PASSTHROUGH, false), None));
    out.insert(
        INBOUND_PASSTHROUGH.into(),
        (original_dst(INBOUND_PASSTHROUGH, true), None),
    );
    for svc in &ctx.services {
        let dr = ctx.destination_rules.get(&svc.hostname).copied();
        let top = dr.and_then(|d| d.traffic_policy.as_ref());
        for port in svc.ports.iter().filter(|p| p.protocol != Protocol::Udp) {
            let (c, src) = outbound(svc, port, None, top);
            out.insert(c.name.clone(), (c, src));
            for s in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                let (c, src) = outbound(svc, port, Some((&s.name, s.traffic_policy.as_ref())), top);
                let src = src.map(|mut e| {
                    e.subset_labels = s.labels.clone();
                    e
                });
                out.insert(c.name.clone(), (c, src));
            }
        }
    }
    for (_, _, target) in ctx.inbound() {
        let name = inbound_name(target);
        out.insert(name.clone(), (original_dst(&name, true), None));
    }
    // `distribute`: the clusters balance by locality weight first.
    let mesh_locality = ctx
        .mesh_config()
        .and_then(|m| m.locality_lb_setting.as_ref());
    for (c, src) in out.values_mut() {
        let distributes = src.as_ref().is_some_and(|s| {
            super::locality::effective(s.locality_lb.as_ref(), mesh_locality)
                .is_some_and(|l| !l.distribute.is_empty())
        });
        if distributes {
            use cluster::cluster::common_lb_config::{
                LocalityConfigSpecifier, LocalityWeightedLbConfig,
            };
            c.common_lb_config
                .get_or_insert_with(Default::default)
                .locality_config_specifier = Some(
                LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {}),
            );
        }
    }
    // A legacy tracing address outside the registry gets a cluster of its own.
    if let Some((host, port)) = ctx.collector.as_ref().and_then(|c| c.own_cluster.clone()) {
        out.insert(
            super::tracing::ZIPKIN_CLUSTER.into(),
            (zipkin_cluster(&host, port), None),
        );
    }
    out
}

/// The `zipkin` cluster of pilot-agent's bootstrap: STRICT_DNS to the address (STATIC when it
/// is an IP), round robin, a 1 s connect timeout.
fn zipkin_cluster(host: &str, port: u16) -> cluster::Cluster {
    use cluster::cluster::DiscoveryType as D;
    let kind = if host.parse::<std::net::IpAddr>().is_ok() {
        D::Static
    } else {
        D::StrictDns
    };
    cluster::Cluster {
        name: super::tracing::ZIPKIN_CLUSTER.into(),
        cluster_discovery_type: discovery(kind),
        connect_timeout: Some(wire::duration(Duration::from_secs(1))),
        load_assignment: Some(ep::ClusterLoadAssignment {
            cluster_name: super::tracing::ZIPKIN_CLUSTER.into(),
            endpoints: vec![ep::LocalityLbEndpoints {
                lb_endpoints: vec![ep::LbEndpoint {
                    host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(
                        ep::Endpoint {
                            address: Some(wire::socket(host, u32::from(port))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}
