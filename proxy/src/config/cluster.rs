//! Clusters (CDS) and their endpoints (EDS `ClusterLoadAssignment`).

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as wire;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as ep;

use super::{Address, ConfigError, Ignored, duration};

/// Envoy's default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Endpoints come by EDS under this name.
    Eds {
        service_name: String,
    },
    Static,
    StrictDns,
    LogicalDns,
    /// Forward to the connection's original destination.
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// Ketama-style ring (`ring_hash_lb_config`), sized between these bounds.
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    /// Maglev lookup table (`maglev_lb_config.table_size`, a prime).
    Maglev {
        table_size: u64,
    },
    ClusterProvided,
}

impl LbPolicy {
    /// Whether endpoints are chosen by the request's hash (route `hash_policy`).
    pub fn hashed(self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// Envoy's ring sizes: 1,024 entries at least, 8M at most (also the largest allowed).
pub const RING_SIZE_DEFAULT: (u64, u64) = (1024, 8 * 1024 * 1024);
/// Envoy's default Maglev table size (a prime).
pub const MAGLEV_TABLE_DEFAULT: u64 = 65537;
/// Envoy's limit on `maglev_lb_config.table_size`.
const MAGLEV_TABLE_MAX: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn ring_hash(c: &wire::Cluster) -> Result<LbPolicy, ConfigError> {
    use wire::cluster::LbConfig;
    let (mut min, mut max) = RING_SIZE_DEFAULT;
    if let Some(LbConfig::RingHashLbConfig(r)) = &c.lb_config {
        min = r.minimum_ring_size.map(|v| v.value).unwrap_or(min);
        max = r.maximum_ring_size.map(|v| v.value).unwrap_or(max);
        if max > RING_SIZE_DEFAULT.1 {
            return Err(ConfigError::new(
                "ring_hash_lb_config.maximum_ring_size",
                format!("{max} is over the limit of {}", RING_SIZE_DEFAULT.1),
            ));
        }
        if min == 0 || min > max {
            return Err(ConfigError::new(
                "ring_hash_lb_config.minimum_ring_size",
                format!("{min} must be between 1 and maximum_ring_size ({max})"),
            ));
        }
    }
    Ok(LbPolicy::RingHash {
        min_ring_size: min,
        max_ring_size: max,
    })
}

fn maglev(c: &wire::Cluster) -> Result<LbPolicy, ConfigError> {
    use wire::cluster::LbConfig;
    let table_size = match &c.lb_config {
        Some(LbConfig::MaglevLbConfig(m)) => m
            .table_size
            .map(|v| v.value)
            .unwrap_or(MAGLEV_TABLE_DEFAULT),
        _ => MAGLEV_TABLE_DEFAULT,
    };
    if table_size > MAGLEV_TABLE_MAX || !is_prime(table_size) {
        return Err(ConfigError::new(
            "maglev_lb_config.table_size",
            format!("{table_size} is not a prime number up to {MAGLEV_TABLE_MAX}"),
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    /// Inline endpoints (STATIC / DNS clusters).
    pub load_assignment: Option<LoadAssignment>,
    pub tls: bool,
    /// Source address for upstream connections (`upstream_bind_config`; Istio's inbound
    /// passthrough uses 127.0.0.6 so that its traffic is not captured again).
    pub bind_source: Option<std::net::IpAddr>,
    /// The HTTP version spoken upstream.
    pub upstream_protocol: UpstreamProtocol,
    /// `common_lb_config.locality_weighted_lb_config`: pick a locality by its weight first.
    pub locality_weighted: bool,
    /// `common_lb_config.healthy_panic_threshold` in percent (Envoy's default 50; 0 disables
    /// panic mode).
    pub panic_threshold: f64,
    /// Circuit-breaker thresholds of the default priority.
    pub limits: Limits,
    /// The Istio service this cluster reaches (for telemetry labels).
    pub service: Option<ServiceRef>,
    /// `outlier_detection`: passive health checking by consecutive errors.
    pub outlier: Option<Outlier>,
    /// HttpProtocolOptions `common_http_protocol_options.idle_timeout`: an upstream connection
    /// unused for this long is closed (Envoy's default 1 h; `None`: never).
    pub idle_timeout: Option<Duration>,
    pub ignored: Vec<Ignored>,
}

fn upstream_idle_timeout(c: &wire::Cluster) -> Result<Option<Duration>, ConfigError> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    let from_options = match c.typed_extension_protocol_options.get(KEY) {
        Some(any) => <HttpProtocolOptions as prost::Message>::decode(any.value.as_slice())
            .ok()
            .and_then(|o| o.common_http_protocol_options)
            .and_then(|o| o.idle_timeout),
        None => None,
    };
    #[allow(deprecated)]
    let legacy = c
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| o.idle_timeout);
    super::listener::timeout_or(
        from_options.or(legacy).as_ref(),
        super::listener::DEFAULT_IDLE_TIMEOUT,
        "common_http_protocol_options.idle_timeout",
    )
}

/// Envoy's `healthy_panic_threshold` default, in percent.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// `outlier_detection`, with Envoy's defaults (consecutive 5xx: 5, base ejection 30 s, at
/// most 10% of the hosts ejected, but always one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    /// `split_external_local_origin_errors`: connect failures are counted apart (else as 5xx
    /// and gateway errors)...
    pub split_local_origin: bool,
    /// ...and eject after `consecutive_local_origin_failure` (default 5) of them, if enforced.
    pub consecutive_local_origin: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

fn outlier(c: &wire::Cluster) -> Result<Option<Outlier>, ConfigError> {
    let Some(o) = &c.outlier_detection else {
        return Ok(None);
    };
    let enforcing = |v: Option<u32>, default: u32| v.unwrap_or(default) > 0;
    Ok(Some(Outlier {
        consecutive_5xx: enforcing(o.enforcing_consecutive_5xx.map(|v| v.value), 100)
            .then(|| o.consecutive_5xx.map(|v| v.value).unwrap_or(5)),
        consecutive_gateway: enforcing(o.enforcing_consecutive_gateway_failure.map(|v| v.value), 0)
            .then(|| o.consecutive_gateway_failure.map(|v| v.value).unwrap_or(5)),
        split_local_origin: o.split_external_local_origin_errors,
        consecutive_local_origin: (o.split_external_local_origin_errors
            && enforcing(
                o.enforcing_consecutive_local_origin_failure
                    .map(|v| v.value),
                100,
            ))
        .then(|| {
            o.consecutive_local_origin_failure
                .map(|v| v.value)
                .unwrap_or(5)
        }),
        base_ejection: match &o.base_ejection_time {
            Some(d) => duration(d, "outlier_detection.base_ejection_time")?,
            None => Duration::from_secs(30),
        },
        max_ejection_percent: o
            .max_ejection_percent
            .map(|v| v.value)
            .unwrap_or(10)
            .min(100),
    }))
}

/// `circuit_breakers.thresholds` (priority DEFAULT), with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// `retry_budget`: concurrent retries limited to this share of the active and pending
    /// requests (per mille), but at least `min_retry_concurrency`; replaces `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Per mille of active plus pending requests (Envoy's default 20%).
    pub budget_per_mille: u32,
    /// Envoy's default 3.
    pub min_retry_concurrency: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
        }
    }
}

fn limits(c: &wire::Cluster) -> Limits {
    let d = Limits::default();
    let Some(t) = c.circuit_breakers.as_ref().and_then(|cb| {
        cb.thresholds
            .iter()
            .find(|t| t.priority == core::RoutingPriority::Default as i32)
    }) else {
        return d;
    };
    Limits {
        max_connections: t
            .max_connections
            .map(|v| v.value)
            .unwrap_or(d.max_connections),
        max_pending_requests: t
            .max_pending_requests
            .map(|v| v.value)
            .unwrap_or(d.max_pending_requests),
        max_requests: t.max_requests.map(|v| v.value).unwrap_or(d.max_requests),
        max_retries: t.max_retries.map(|v| v.value).unwrap_or(d.max_retries),
        retry_budget: t.retry_budget.as_ref().map(|b| RetryBudget {
            budget_per_mille: b
                .budget_percent
                .as_ref()
                .map(|p| (p.value.clamp(0.0, 100.0) * 10.0).round() as u32)
                .unwrap_or(200),
            min_retry_concurrency: b.min_retry_concurrency.map(|v| v.value).unwrap_or(3),
        }),
    }
}

/// `HttpProtocolOptions.upstream_protocol_options` (and the deprecated cluster fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 (h2c on plaintext).
    Http2,
    /// The downstream request's version (Istio's choice for sniffed ports and passthrough).
    Downstream,
}

fn upstream_protocol(c: &wire::Cluster) -> Result<UpstreamProtocol, ConfigError> {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions as U,
        http_protocol_options::explicit_http_config::ProtocolConfig as P,
    };
    const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    if let Some(any) = c.typed_extension_protocol_options.get(KEY) {
        let o =
            <HttpProtocolOptions as prost::Message>::decode(any.value.as_slice()).map_err(|e| {
                ConfigError::new(
                    format!("typed_extension_protocol_options[{KEY}]"),
                    format!("cannot decode: {e}"),
                )
            })?;
        return Ok(match o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
                Some(P::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
                _ => UpstreamProtocol::Http1,
            },
            Some(U::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Downstream,
            // ALPN decides on TLS; plaintext speaks HTTP/1.1.
            Some(U::AutoConfig(_)) | None => UpstreamProtocol::Http1,
        });
    }
    #[allow(deprecated)]
    let h2 = c.http2_protocol_options.is_some();
    Ok(if h2 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl Health {
    /// Whether Envoy sends new requests to an endpoint in this state.
    pub fn routable(self) -> bool {
        matches!(self, Health::Unknown | Health::Healthy | Health::Degraded)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    pub health: Health,
    pub weight: u32,
    /// Istio's `metadata.filter_metadata.istio.workload`: `name;namespace;app;version;cluster`.
    pub workload: Option<String>,
}

/// The `istio` filter metadata string field `key`.
fn istio_string(m: Option<&core::Metadata>, key: &str) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match m?
        .filter_metadata
        .get("istio")?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The service a cluster belongs to (`metadata.filter_metadata.istio.services[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRef {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

fn service_ref(m: Option<&core::Metadata>) -> Option<ServiceRef> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let Kind::ListValue(list) = m?
        .filter_metadata
        .get("istio")?
        .fields
        .get("services")?
        .kind
        .as_ref()?
    else {
        return None;
    };
    let Kind::StructValue(first) = list.values.first()?.kind.as_ref()? else {
        return None;
    };
    let get = |k: &str| match first.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        _ => String::new(),
    };
    Some(ServiceRef {
        host: get("host"),
        name: get("name"),
        namespace: get("namespace"),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    pub priority: u32,
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAssignment {
    pub cluster_name: String,
    pub localities: Vec<LocalityEndpoints>,
    /// Set when every endpoint is usable alike (decided once, when the assignment is made).
    pub uniform: Option<Uniform>,
}

/// An assignment whose endpoints are all usable alike: one priority, every endpoint routable
/// and reachable by address or name, all of one weight. Choosing among them needs no list of
/// candidates: an index into the endpoints is the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uniform {
    pub count: usize,
    pub weight: u32,
}

impl LoadAssignment {
    pub fn new(cluster_name: String, localities: Vec<LocalityEndpoints>) -> LoadAssignment {
        let uniform = uniform(&localities);
        LoadAssignment {
            cluster_name,
            localities,
            uniform,
        }
    }

    /// The `i`th endpoint, counting through the localities in order.
    pub fn nth(&self, mut i: usize) -> Option<&Endpoint> {
        for l in &self.localities {
            match l.endpoints.get(i) {
                Some(e) => return Some(e),
                None => i -= l.endpoints.len(),
            }
        }
        None
    }
}

/// Whether `localities` are [`Uniform`].
fn uniform(localities: &[LocalityEndpoints]) -> Option<Uniform> {
    let priority = localities.first()?.priority;
    let weight = localities.iter().flat_map(|l| &l.endpoints).next()?.weight;
    let mut count = 0;
    for l in localities {
        if l.priority != priority {
            return None;
        }
        for e in &l.endpoints {
            let reachable = matches!(e.address, Address::Socket(_) | Address::Dns(..));
            if !(reachable && e.health.routable() && e.weight == weight) {
                return None;
            }
            count += 1;
        }
    }
    Some(Uniform { count, weight })
}

impl TryFrom<&ep::ClusterLoadAssignment> for LoadAssignment {
    type Error = ConfigError;
    fn try_from(cla: &ep::ClusterLoadAssignment) -> Result<LoadAssignment, ConfigError> {
        LoadAssignment::convert(cla, false)
    }
}

/// A DNS cluster's endpoint may be a host name.
fn dns_address(a: &core::Address) -> Option<Address> {
    match &a.address {
        Some(core::address::Address::SocketAddress(s)) if !s.address.is_empty() => {
            match s.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                    Some(Address::Dns(s.address.clone(), u16::try_from(p).ok()?))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl LoadAssignment {
    /// `names`: endpoints may be host names (DNS clusters).
    pub fn convert(
        cla: &ep::ClusterLoadAssignment,
        names: bool,
    ) -> Result<LoadAssignment, ConfigError> {
        let localities = cla
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let endpoints = l
                    .lb_endpoints
                    .iter()
                    .enumerate()
                    .map(|(j, e)| {
                        let at = format!("endpoints[{i}].lb_endpoints[{j}]");
                        let address = match &e.host_identifier {
                            Some(ep::lb_endpoint::HostIdentifier::Endpoint(end)) => {
                                let a = end.address.as_ref().ok_or_else(|| {
                                    ConfigError::new(format!("{at}.endpoint.address"), "missing")
                                })?;
                                match Address::try_from(a) {
                                    Ok(addr) => addr,
                                    Err(e) => match dns_address(a).filter(|_| names) {
                                        Some(addr) => addr,
                                        None => return Err(e.at(format!("{at}.endpoint"))),
                                    },
                                }
                            }
                            Some(ep::lb_endpoint::HostIdentifier::EndpointName(n)) => {
                                return Err(ConfigError::new(
                                    format!("{at}.endpoint_name"),
                                    format!("named endpoints ('{n}') are not supported"),
                                ));
                            }
                            None => return Err(ConfigError::new(at, "no endpoint")),
                        };
                        let health = match core::HealthStatus::try_from(e.health_status) {
                            Ok(core::HealthStatus::Healthy) => Health::Healthy,
                            Ok(core::HealthStatus::Unhealthy) => Health::Unhealthy,
                            Ok(core::HealthStatus::Draining) => Health::Draining,
                            Ok(core::HealthStatus::Timeout) => Health::Timeout,
                            Ok(core::HealthStatus::Degraded) => Health::Degraded,
                            _ => Health::Unknown,
                        };
                        let weight = e.load_balancing_weight.map(|w| w.value).unwrap_or(1);
                        if weight == 0 {
                            return Err(ConfigError::new(
                                format!("{at}.load_balancing_weight"),
                                "must be at least 1",
                            ));
                        }
                        Ok(Endpoint {
                            address,
                            health,
                            weight,
                            workload: istio_string(e.metadata.as_ref(), "workload"),
                        })
                    })
                    .collect::<Result<_, ConfigError>>()?;
                let locality = l.locality.as_ref().map(|l| Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                });
                Ok(LocalityEndpoints {
                    locality: locality.unwrap_or_default(),
                    priority: l.priority,
                    weight: l.load_balancing_weight.map(|w| w.value),
                    endpoints,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(LoadAssignment::new(cla.cluster_name.clone(), localities))
    }
}

impl TryFrom<&wire::Cluster> for Cluster {
    type Error = ConfigError;
    fn try_from(c: &wire::Cluster) -> Result<Cluster, ConfigError> {
        use wire::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy as L};
        let mut ignored = Vec::new();
        let discovery = match &c.cluster_discovery_type {
            Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
                Ok(DiscoveryType::Static) => Discovery::Static,
                Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
                Ok(DiscoveryType::LogicalDns) => Discovery::LogicalDns,
                Ok(DiscoveryType::Eds) => {
                    let name = c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.clone())
                        .unwrap_or_default();
                    // Envoy uses the cluster name when no service name is set.
                    Discovery::Eds {
                        service_name: if name.is_empty() {
                            c.name.clone()
                        } else {
                            name
                        },
                    }
                }
                Ok(DiscoveryType::OriginalDst) => Discovery::OriginalDst,
                Err(_) => {
                    return Err(ConfigError::new(
                        "type",
                        format!("unknown discovery type {t}"),
                    ));
                }
            },
            Some(ClusterDiscoveryType::ClusterType(custom)) => {
                return Err(ConfigError::new(
                    "cluster_type",
                    format!("custom cluster type '{}' is not supported", custom.name),
                ));
            }
            None => Discovery::Static,
        };
        let lb_policy = match L::try_from(c.lb_policy) {
            Ok(L::RoundRobin) => LbPolicy::RoundRobin,
            Ok(L::LeastRequest) => LbPolicy::LeastRequest,
            Ok(L::Random) => LbPolicy::Random,
            Ok(L::RingHash) => ring_hash(c)?,
            Ok(L::Maglev) => maglev(c)?,
            Ok(L::ClusterProvided) => LbPolicy::ClusterProvided,
            Ok(L::LoadBalancingPolicyConfig) => {
                ignored.push(Ignored {
                    what: "load_balancing_policy".into(),
                    reason: "typed LB policies are not supported; round robin is used",
                });
                LbPolicy::RoundRobin
            }
            Err(_) => {
                return Err(ConfigError::new(
                    "lb_policy",
                    format!("unknown policy {}", c.lb_policy),
                ));
            }
        };
        if discovery == Discovery::OriginalDst
            && lb_policy != LbPolicy::ClusterProvided
            && lb_policy != LbPolicy::RoundRobin
        {
            return Err(ConfigError::new(
                "lb_policy",
                "an ORIGINAL_DST cluster takes CLUSTER_PROVIDED",
            ));
        }
        let connect_timeout = c
            .connect_timeout
            .as_ref()
            .map(|d| duration(d, "connect_timeout"))
            .transpose()?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let load_assignment = c
            .load_assignment
            .as_ref()
            .map(|l| {
                let names = matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns);
                LoadAssignment::convert(l, names).map_err(|e| e.at("load_assignment"))
            })
            .transpose()?;
        if matches!(
            discovery,
            Discovery::Static | Discovery::StrictDns | Discovery::LogicalDns
        ) && load_assignment.is_none()
        {
            return Err(ConfigError::new(
                "load_assignment",
                "a STATIC or DNS cluster needs endpoints",
            ));
        }
        if !c.health_checks.is_empty() {
            ignored.push(Ignored {
                what: "health_checks".into(),
                reason: "active health checking is not supported",
            });
        }
        let bind_source = match c
            .upstream_bind_config
            .as_ref()
            .and_then(|b| b.source_address.as_ref())
        {
            Some(a) => Some(a.address.parse().map_err(|_| {
                ConfigError::new(
                    "upstream_bind_config.source_address",
                    format!("'{}' is not an IP address", a.address),
                )
            })?),
            None => None,
        };
        Ok(Cluster {
            name: c.name.clone(),
            discovery,
            lb_policy,
            connect_timeout,
            load_assignment,
            tls: c.transport_socket.is_some(),
            bind_source,
            upstream_protocol: upstream_protocol(c)?,
            limits: limits(c),
            service: service_ref(c.metadata.as_ref()),
            outlier: outlier(c)?,
            idle_timeout: upstream_idle_timeout(c)?,
            panic_threshold: c
                .common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold.as_ref())
                .map_or(DEFAULT_PANIC_THRESHOLD, |p| p.value.clamp(0.0, 100.0)),
            locality_weighted: matches!(
                c.common_lb_config.as_ref().and_then(|l| l.locality_config_specifier.as_ref()),
                Some(wire::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
            ),
            ignored,
        })
    }
}

#[cfg(test)]
mod protocol_tests {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        HttpProtocolOptions, http_protocol_options as o,
    };
    use prost::Message;

    use super::*;

    fn with(options: o::UpstreamProtocolOptions) -> wire::Cluster {
        let opts = HttpProtocolOptions {
            upstream_protocol_options: Some(options),
            ..Default::default()
        };
        let mut c = wire::Cluster::default();
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            envoy_types::pb::google::protobuf::Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                        .into(),
                value: opts.encode_to_vec(),
            },
        );
        c
    }

    #[test]
    fn the_upstream_http_version_comes_from_the_protocol_options() {
        let h2 = with(o::UpstreamProtocolOptions::ExplicitHttpConfig(
            o::ExplicitHttpConfig {
                protocol_config: Some(
                    o::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Default::default(),
                    ),
                ),
            },
        ));
        assert_eq!(upstream_protocol(&h2).unwrap(), UpstreamProtocol::Http2);
        let down = with(o::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            Default::default(),
        ));
        assert_eq!(
            upstream_protocol(&down).unwrap(),
            UpstreamProtocol::Downstream
        );
        assert_eq!(
            upstream_protocol(&wire::Cluster::default()).unwrap(),
            UpstreamProtocol::Http1
        );
    }
}
