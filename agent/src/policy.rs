//! A pod's traffic policy from Istio's `traffic.sidecar.istio.io/*` annotations: which outbound
//! ports and ranges the eBPF capture hands to the sidecar, and which inbound ports a same-node
//! peer may reach on the sidecar's inbound port. Pure parsing; no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use thiserror::Error;

/// Entries per list, as the BPF map holds them (`MAX_PORTS`/`MAX_CIDRS` in ebpf/capture.h).
pub const MAX_ENTRIES: usize = 20;

pub const EXCLUDE_OUT_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const INCLUDE_OUT_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
pub const EXCLUDE_IN_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const INCLUDE_IN_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_OUT_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
pub const INCLUDE_OUT_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
pub const INJECT: &str = "sidecar.istio.io/inject";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("annotation {annotation}: {value:?} is not a port number (1-65535)")]
    BadPort { annotation: String, value: String },
    #[error("annotation {annotation}: {value:?} is not an address range (CIDR)")]
    BadRange { annotation: String, value: String },
    #[error("annotation {annotation}: {count} entries, the eBPF capture holds at most {max}")]
    TooMany {
        annotation: String,
        count: usize,
        max: usize,
    },
    #[error("annotation {annotation}: {value:?} is neither \"true\" nor \"false\"")]
    BadBool { annotation: String, value: String },
}

/// An address range, IPv4 as v4-mapped IPv6 with the prefix counted over 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 16],
    pub prefix: u8,
}

impl Cidr {
    /// The network address and mask, each as four network-order 32-bit words.
    pub fn words(&self) -> ([u8; 16], [u8; 16]) {
        let mut mask = [0u8; 16];
        for (i, m) in mask.iter_mut().enumerate() {
            let bits = (i32::from(self.prefix) - 8 * i as i32).clamp(0, 8);
            *m = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
        let mut addr = self.addr;
        for (a, m) in addr.iter_mut().zip(mask) {
            *a &= m;
        }
        (addr, mask)
    }
}

/// A list annotation: `*` (everything) or explicit entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Set<T> {
    All,
    Some(Vec<T>),
}

impl<T> Set<T> {
    fn none() -> Self {
        Set::Some(Vec::new())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub exclude_out_ports: Vec<u16>,
    pub include_out_ports: Vec<u16>,
    pub exclude_in_ports: Vec<u16>,
    pub include_in_ports: Set<u16>,
    pub exclude_out_ranges: Vec<Cidr>,
    pub include_out_ranges: Set<Cidr>,
    pub status_port: u16,
}

impl Default for Policy {
    /// istio-iptables' defaults for an injected pod: everything captured both ways.
    fn default() -> Self {
        Policy {
            exclude_out_ports: Vec::new(),
            include_out_ports: Vec::new(),
            exclude_in_ports: Vec::new(),
            include_in_ports: Set::All,
            exclude_out_ranges: Vec::new(),
            include_out_ranges: Set::All,
            status_port: 15021,
        }
    }
}

/// Whether the pod wants a sidecar: `sidecar.istio.io/inject` (default true for pods the source
/// lists as meshed).
pub fn wants_sidecar(annotations: &BTreeMap<String, String>) -> Result<bool, PolicyError> {
    match annotations.get(INJECT).map(|v| v.trim()) {
        None => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(PolicyError::BadBool {
            annotation: INJECT.into(),
            value: v.into(),
        }),
    }
}

/// Reads the policy from the annotations; an unknown value is an error naming the annotation.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Policy, PolicyError> {
    let mut p = Policy::default();
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    if let Some(v) = get(EXCLUDE_OUT_PORTS) {
        p.exclude_out_ports = ports(EXCLUDE_OUT_PORTS, v)?;
    }
    if let Some(v) = get(INCLUDE_OUT_PORTS) {
        p.include_out_ports = ports(INCLUDE_OUT_PORTS, v)?;
    }
    if let Some(v) = get(EXCLUDE_IN_PORTS) {
        p.exclude_in_ports = ports(EXCLUDE_IN_PORTS, v)?;
    }
    if let Some(v) = get(INCLUDE_IN_PORTS) {
        p.include_in_ports = if v == "*" {
            Set::All
        } else {
            Set::Some(ports(INCLUDE_IN_PORTS, v)?)
        };
    }
    if let Some(v) = get(EXCLUDE_OUT_RANGES) {
        p.exclude_out_ranges = match ranges(EXCLUDE_OUT_RANGES, v)? {
            // "*" excludes everything: one range covering both families.
            Set::All => vec![Cidr {
                addr: [0; 16],
                prefix: 0,
            }],
            Set::Some(list) => list,
        };
    }
    if let Some(v) = get(INCLUDE_OUT_RANGES) {
        p.include_out_ranges = ranges(INCLUDE_OUT_RANGES, v)?;
    }
    if let Some(v) = get(STATUS_PORT) {
        p.status_port = port(STATUS_PORT, v)?;
    }
    Ok(p)
}

fn items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn port(annotation: &str, v: &str) -> Result<u16, PolicyError> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(PolicyError::BadPort {
            annotation: annotation.into(),
            value: v.into(),
        }),
    }
}

fn bounded<T>(annotation: &str, list: Vec<T>) -> Result<Vec<T>, PolicyError> {
    if list.len() > MAX_ENTRIES {
        return Err(PolicyError::TooMany {
            annotation: annotation.into(),
            count: list.len(),
            max: MAX_ENTRIES,
        });
    }
    Ok(list)
}

fn ports(annotation: &str, v: &str) -> Result<Vec<u16>, PolicyError> {
    let list = items(v)
        .map(|p| port(annotation, p))
        .collect::<Result<Vec<_>, _>>()?;
    bounded(annotation, list)
}

fn ranges(annotation: &str, v: &str) -> Result<Set<Cidr>, PolicyError> {
    if v == "*" {
        return Ok(Set::All);
    }
    if v.is_empty() {
        return Ok(Set::none());
    }
    let list = items(v)
        .map(|r| {
            cidr(r).ok_or_else(|| PolicyError::BadRange {
                annotation: annotation.into(),
                value: r.into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Set::Some(bounded(annotation, list)?))
}

/// `10.0.0.0/8`, `fd00::/8`, or a single address.
pub fn cidr(s: &str) -> Option<Cidr> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    match ip {
        IpAddr::V4(v4) => {
            let len = prefix.unwrap_or(32);
            (len <= 32).then(|| Cidr {
                addr: v4.to_ipv6_mapped().octets(),
                prefix: 96 + len,
            })
        }
        IpAddr::V6(v6) => {
            let len = prefix.unwrap_or(128);
            (len <= 128).then_some(Cidr {
                addr: v6.octets(),
                prefix: len,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_capture_everything() {
        assert_eq!(from_annotations(&ann(&[])).unwrap(), Policy::default());
        assert!(wants_sidecar(&ann(&[])).unwrap());
        assert!(!wants_sidecar(&ann(&[(INJECT, "false")])).unwrap());
    }

    #[test]
    fn reads_every_annotation() {
        let p = from_annotations(&ann(&[
            (EXCLUDE_OUT_PORTS, "9000, 9001"),
            (INCLUDE_OUT_PORTS, "5432"),
            (EXCLUDE_IN_PORTS, "8081"),
            (INCLUDE_IN_PORTS, "8080,8443"),
            (EXCLUDE_OUT_RANGES, "10.96.0.0/12,fd00::/8"),
            (INCLUDE_OUT_RANGES, "10.30.0.0/24"),
            (STATUS_PORT, "15022"),
        ]))
        .unwrap();
        assert_eq!(p.exclude_out_ports, vec![9000, 9001]);
        assert_eq!(p.include_out_ports, vec![5432]);
        assert_eq!(p.exclude_in_ports, vec![8081]);
        assert_eq!(p.include_in_ports, Set::Some(vec![8080, 8443]));
        assert_eq!(p.exclude_out_ranges.len(), 2);
        assert_eq!(p.exclude_out_ranges[0].prefix, 96 + 12);
        assert_eq!(p.exclude_out_ranges[1].prefix, 8);
        assert_eq!(p.status_port, 15022);
        let Set::Some(inc) = &p.include_out_ranges else {
            panic!("expected a list")
        };
        assert_eq!(inc[0], cidr("10.30.0.0/24").unwrap());
    }

    #[test]
    fn masks_are_word_aligned_network_order() {
        let (addr, mask) = cidr("10.1.2.3/12").unwrap().words();
        assert_eq!(&addr[12..], &[10, 0, 0, 0]);
        assert_eq!(&mask[..12], &[0xff; 12]);
        assert_eq!(&mask[12..], &[0xff, 0xf0, 0, 0]);
        let (_, all) = Cidr {
            addr: [0; 16],
            prefix: 0,
        }
        .words();
        assert_eq!(all, [0; 16]);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let e = from_annotations(&ann(&[(EXCLUDE_OUT_PORTS, "80,http")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("annotation {EXCLUDE_OUT_PORTS}: \"http\" is not a port number (1-65535)")
        );
        let e = from_annotations(&ann(&[(EXCLUDE_OUT_RANGES, "10.0.0.0/33")])).unwrap_err();
        assert!(matches!(e, PolicyError::BadRange { .. }), "{e}");
        let many = (1..=21)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let e = from_annotations(&ann(&[(INCLUDE_OUT_PORTS, &many)])).unwrap_err();
        assert!(matches!(e, PolicyError::TooMany { count: 21, .. }), "{e}");
        assert!(wants_sidecar(&ann(&[(INJECT, "maybe")])).is_err());
    }
}
