//! The bytes of the BPF maps' keys and values, exactly as `ebpf/capture.h` lays them out. Values
//! are plain byte arrays, so no unsafe `Pod` impls are needed; the sizes are pinned by the C
//! header's static asserts and by the tests below.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::policy::{Cidr, MAX_ENTRIES, Policy, Set};

pub const SETTINGS_SIZE: usize = 16;
pub const CIDR_SIZE: usize = 32;
pub const POD_SIZE: usize = 32 + 4 * 2 * MAX_ENTRIES + 2 * CIDR_SIZE * MAX_ENTRIES;

pub const SET_SOCKMAP: u16 = 1 << 0;
pub const SET_DNS: u16 = 1 << 1;
pub const SET_PEER_INBOUND: u16 = 1 << 2;

const POD_HAS_IP4: u8 = 1 << 0;
const POD_HAS_IP6: u8 = 1 << 1;
const POD_OUT_ALL_CIDRS: u8 = 1 << 2;
const POD_IN_ALL_PORTS: u8 = 1 << 3;

/// The `settings` map's one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub out_port: u16,
    pub in_port: u16,
    pub dns_port: u16,
    pub flags: u16,
}

impl Settings {
    pub fn to_bytes(&self) -> [u8; SETTINGS_SIZE] {
        let mut b = [0u8; SETTINGS_SIZE];
        b[0..4].copy_from_slice(&self.proxy_uid.to_ne_bytes());
        b[4..8].copy_from_slice(&self.proxy_gid.to_ne_bytes());
        b[8..10].copy_from_slice(&self.out_port.to_ne_bytes());
        b[10..12].copy_from_slice(&self.in_port.to_ne_bytes());
        b[12..14].copy_from_slice(&self.dns_port.to_ne_bytes());
        b[14..16].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// A 16-byte address key, IPv4 as v4-mapped IPv6.
pub fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte key stands for.
pub fn ip_from_key(key: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A `pods` map value: the pod's addresses and its policy.
pub fn pod_entry(ip4: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>, p: &Policy) -> [u8; POD_SIZE] {
    let mut b = [0u8; POD_SIZE];
    let mut flags = 0u8;
    if let Some(v4) = ip4 {
        b[0..4].copy_from_slice(&v4.octets());
        flags |= POD_HAS_IP4;
    }
    if let Some(v6) = ip6 {
        b[4..20].copy_from_slice(&v6.octets());
        flags |= POD_HAS_IP6;
    }
    b[20..22].copy_from_slice(&p.status_port.to_ne_bytes());
    let include_in: &[u16] = match &p.include_in_ports {
        Set::All => {
            flags |= POD_IN_ALL_PORTS;
            &[]
        }
        Set::Some(list) => list,
    };
    let include_ranges: &[Cidr] = match &p.include_out_ranges {
        Set::All => {
            flags |= POD_OUT_ALL_CIDRS;
            &[]
        }
        Set::Some(list) => list,
    };
    b[22] = flags;
    let count = |n: usize| n.min(MAX_ENTRIES) as u8;
    b[23] = count(p.exclude_out_ports.len());
    b[24] = count(p.include_out_ports.len());
    b[25] = count(p.exclude_in_ports.len());
    b[26] = count(include_in.len());
    b[27] = count(p.exclude_out_ranges.len());
    b[28] = count(include_ranges.len());
    // 29..32: padding.
    let lists: [&[u16]; 4] = [
        &p.exclude_out_ports,
        &p.include_out_ports,
        &p.exclude_in_ports,
        include_in,
    ];
    for (n, list) in lists.iter().enumerate() {
        let base = 32 + n * 2 * MAX_ENTRIES;
        for (i, port) in list.iter().take(MAX_ENTRIES).enumerate() {
            b[base + 2 * i..base + 2 * i + 2].copy_from_slice(&port.to_ne_bytes());
        }
    }
    let cidr_base = 32 + 4 * 2 * MAX_ENTRIES;
    for (n, list) in [&p.exclude_out_ranges[..], include_ranges]
        .iter()
        .enumerate()
    {
        let base = cidr_base + n * CIDR_SIZE * MAX_ENTRIES;
        for (i, c) in list.iter().take(MAX_ENTRIES).enumerate() {
            let (addr, mask) = c.words();
            let at = base + i * CIDR_SIZE;
            b[at..at + 16].copy_from_slice(&addr);
            b[at + 16..at + 32].copy_from_slice(&mask);
        }
    }
    b
}

/// The per-CPU counters of `enum counter`, in order, with the names the agent reports.
pub const COUNTERS: [&str; 15] = [
    "connect_seen",
    "redirected",
    "peer_inbound",
    "skip_proxy",
    "skip_loopback",
    "skip_excluded",
    "not_meshed",
    "tuple_stored",
    "sockhash_inserted",
    "getsockopt_hit",
    "getpeername_rewritten",
    "msg_redirected",
    "msg_passed",
    "dns_redirected",
    "cleaned",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cidr;

    #[test]
    fn settings_bytes() {
        let s = Settings {
            proxy_uid: 1337,
            proxy_gid: 1338,
            out_port: 15001,
            in_port: 15006,
            dns_port: 15053,
            flags: SET_SOCKMAP | SET_DNS,
        };
        let b = s.to_bytes();
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 1337);
        assert_eq!(u32::from_ne_bytes(b[4..8].try_into().unwrap()), 1338);
        assert_eq!(u16::from_ne_bytes(b[8..10].try_into().unwrap()), 15001);
        assert_eq!(u16::from_ne_bytes(b[14..16].try_into().unwrap()), 3);
    }

    #[test]
    fn pod_bytes_follow_the_header() {
        assert_eq!(POD_SIZE, 1472);
        let p = Policy {
            exclude_out_ports: vec![9000],
            include_out_ports: vec![],
            exclude_in_ports: vec![8081, 8082],
            include_in_ports: Set::All,
            exclude_out_ranges: vec![cidr("10.96.0.0/12").unwrap()],
            include_out_ranges: Set::Some(vec![cidr("10.30.0.0/24").unwrap()]),
            status_port: 15021,
        };
        let b = pod_entry(Some(Ipv4Addr::new(10, 30, 0, 10)), None, &p);
        assert_eq!(&b[0..4], &[10, 30, 0, 10]);
        assert_eq!(b[22], POD_HAS_IP4 | POD_IN_ALL_PORTS);
        assert_eq!(&b[23..29], &[1, 0, 2, 0, 1, 1]);
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 9000);
        let excl_in = 32 + 2 * 2 * MAX_ENTRIES;
        assert_eq!(u16::from_ne_bytes([b[excl_in + 2], b[excl_in + 3]]), 8082);
        let cidrs = 32 + 4 * 2 * MAX_ENTRIES;
        assert_eq!(&b[cidrs + 12..cidrs + 16], &[10, 96, 0, 0]);
        assert_eq!(&b[cidrs + 28..cidrs + 32], &[0xff, 0xf0, 0, 0]);
        let incl = cidrs + CIDR_SIZE * MAX_ENTRIES;
        assert_eq!(&b[incl + 12..incl + 16], &[10, 30, 0, 0]);
    }

    #[test]
    fn keys_round_trip() {
        for ip in ["10.1.2.3", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_from_key(ip_key(ip)), ip);
        }
    }
}
