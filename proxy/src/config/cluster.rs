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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
    ClusterProvided,
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
    pub ignored: Vec<Ignored>,
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
        Ok(LoadAssignment {
            cluster_name: cla.cluster_name.clone(),
            localities,
        })
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
            Ok(L::RingHash) => LbPolicy::RingHash,
            Ok(L::Maglev) => LbPolicy::Maglev,
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
            ignored,
        })
    }
}
