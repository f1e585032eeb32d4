//! The proxy's own configuration model, converted from Envoy's wire types at the boundary.
//!
//! Each xDS resource converts on its own (`TryFrom`): a bad resource is rejected with a reason
//! that names it, and never affects the others. Parts of a resource that the proxy recognises
//! but does not act on yet (Istio's stats and metadata-exchange filters, …) are kept as
//! [`Ignored`] notes with the reason, so that `validate` and the logs can say what was skipped.

pub mod bootstrap;
pub mod cluster;
pub mod listener;
pub mod route;
mod snapshot;

pub use snapshot::{Raw, Snapshot};

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::Any;
use thiserror::Error;

/// Why a resource was rejected: the field path inside the resource, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path (`filter_chains[2]` + `.filters[0]`).
    pub fn at(self, parent: impl fmt::Display) -> ConfigError {
        ConfigError {
            field: format!("{parent}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// A recognised part of a resource that the proxy does not act on, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub what: String,
    pub reason: &'static str,
}

/// Where a listener or endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Socket(SocketAddr),
    /// Envoy internal listener (waypoints chain listeners through these).
    Internal(String),
    /// A Unix socket path.
    Pipe(String),
    /// A host name and port, resolved when connecting (STRICT_DNS / LOGICAL_DNS endpoints).
    Dns(String, u16),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(s) => write!(f, "{s}"),
            Address::Internal(n) => write!(f, "envoy://{n}"),
            Address::Pipe(p) => write!(f, "unix:{p}"),
            Address::Dns(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

impl TryFrom<&core::Address> for Address {
    type Error = ConfigError;
    fn try_from(a: &core::Address) -> Result<Address, ConfigError> {
        use core::address::Address as A;
        match &a.address {
            Some(A::SocketAddress(s)) => {
                let ip: IpAddr = s.address.parse().map_err(|_| {
                    ConfigError::new(
                        "socket_address.address",
                        format!("'{}' is not an IP address", s.address),
                    )
                })?;
                let port = match s.port_specifier {
                    Some(core::socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
                        .map_err(|_| {
                            ConfigError::new(
                                "socket_address.port_value",
                                format!("{p} is not a port"),
                            )
                        })?,
                    Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
                        return Err(ConfigError::new(
                            "socket_address.named_port",
                            "named ports are not supported",
                        ));
                    }
                    None => 0,
                };
                Ok(Address::Socket(SocketAddr::new(ip, port)))
            }
            Some(A::EnvoyInternalAddress(i)) => match &i.address_name_specifier {
                Some(core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(n)) => {
                    Ok(Address::Internal(n.clone()))
                }
                None => Err(ConfigError::new(
                    "envoy_internal_address",
                    "no server_listener_name",
                )),
            },
            Some(A::Pipe(p)) => Ok(Address::Pipe(p.path.clone())),
            None => Err(ConfigError::new("address", "missing")),
        }
    }
}

/// A CIDR range of a filter chain match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<&core::CidrRange> for Cidr {
    type Error = ConfigError;
    fn try_from(c: &core::CidrRange) -> Result<Cidr, ConfigError> {
        let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
            ConfigError::new(
                "address_prefix",
                format!("'{}' is not an IP address", c.address_prefix),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map(|l| l.value).unwrap_or(max);
        if len > max {
            return Err(ConfigError::new(
                "prefix_len",
                format!("{len} is longer than {max}"),
            ));
        }
        Ok(Cidr {
            addr,
            len: len as u8,
        })
    }
}

/// A protobuf Duration as a std Duration (negative → error).
pub fn duration(
    d: &envoy_types::pb::google::protobuf::Duration,
    field: &str,
) -> Result<Duration, ConfigError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ConfigError::new(field, "negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The short type name of a type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Decodes an `Any` as `M`, naming the field on error.
pub fn unpack<M: prost::Message + Default>(any: &Any, field: &str) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::new(field, format!("cannot decode {}: {e}", type_name(any))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c = Cidr {
            addr: "10.1.0.0".parse().unwrap(),
            len: 16,
        };
        assert!(c.contains("10.1.255.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all = Cidr {
            addr: "0.0.0.0".parse().unwrap(),
            len: 0,
        };
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = Cidr {
            addr: "fd00::".parse().unwrap(),
            len: 8,
        };
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
    }
}
