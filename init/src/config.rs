//! Validated configuration: [`Settings`] plus facts about the host, as domain types.
//!
//! Everything a user can get wrong is checked here, before any command runs, so that bad input
//! never leaves half a rule set behind. Upstream passes most values verbatim to iptables and lets
//! `iptables-restore` fail; we reject them up front with an error naming the flag and the value.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

use crate::flags::Settings;
use crate::host::{self, Host};

/// A flag with its short form and environment variable, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagName {
    pub long: &'static str,
    pub short: Option<char>,
    pub env: Option<&'static str>,
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{}", self.long)?;
        match (self.short, self.env) {
            (Some(s), Some(e)) => write!(f, " (-{s}, env {e})"),
            (Some(s), None) => write!(f, " (-{s})"),
            (None, Some(e)) => write!(f, " (env {e})"),
            (None, None) => Ok(()),
        }
    }
}

macro_rules! flag {
    ($name:ident, $long:literal, $short:expr, $env:expr) => {
        pub const $name: FlagName = FlagName {
            long: $long,
            short: $short,
            env: $env,
        };
    };
}

/// The flags whose values are validated.
pub mod names {
    use super::FlagName;
    flag!(ENVOY_PORT, "envoy-port", Some('p'), None);
    flag!(
        INBOUND_CAPTURE_PORT,
        "inbound-capture-port",
        Some('z'),
        Some("INBOUND_CAPTURE_PORT")
    );
    flag!(
        INBOUND_TUNNEL_PORT,
        "inbound-tunnel-port",
        Some('e'),
        Some("INBOUND_TUNNEL_PORT")
    );
    flag!(PROXY_UID, "proxy-uid", Some('u'), Some("PROXY_UID"));
    flag!(PROXY_GID, "proxy-gid", Some('g'), Some("PROXY_GID"));
    flag!(
        INBOUND_PORTS,
        "istio-inbound-ports",
        Some('b'),
        Some("ISTIO_INBOUND_PORTS")
    );
    flag!(
        LOCAL_EXCLUDE_PORTS,
        "istio-local-exclude-ports",
        Some('d'),
        Some("ISTIO_LOCAL_EXCLUDE_PORTS")
    );
    flag!(
        EXCLUDE_INTERFACES,
        "istio-exclude-interfaces",
        Some('c'),
        Some("ISTIO_EXCLUDE_INTERFACES")
    );
    flag!(
        SERVICE_CIDR,
        "istio-service-cidr",
        Some('i'),
        Some("ISTIO_SERVICE_CIDR")
    );
    flag!(
        SERVICE_EXCLUDE_CIDR,
        "istio-service-exclude-cidr",
        Some('x'),
        Some("ISTIO_SERVICE_EXCLUDE_CIDR")
    );
    flag!(
        OUTBOUND_PORTS,
        "istio-outbound-ports",
        Some('q'),
        Some("ISTIO_OUTBOUND_PORTS")
    );
    flag!(
        LOCAL_OUTBOUND_PORTS_EXCLUDE,
        "istio-local-outbound-ports-exclude",
        Some('o'),
        Some("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE")
    );
    flag!(
        KUBE_VIRT_INTERFACES,
        "kube-virt-interfaces",
        Some('k'),
        Some("KUBE_VIRT_INTERFACES")
    );
    flag!(
        TPROXY_MARK,
        "istio-inbound-tproxy-mark",
        Some('t'),
        Some("ISTIO_INBOUND_TPROXY_MARK")
    );
    flag!(
        TPROXY_ROUTE_TABLE,
        "istio-inbound-tproxy-route-table",
        Some('r'),
        Some("ISTIO_INBOUND_TPROXY_ROUTE_TABLE")
    );
    flag!(
        FORCE_IPTABLES_BINARY,
        "force-iptables-binary",
        None,
        Some("FORCE_IPTABLES_BINARY")
    );
    flag!(
        NATIVE_NFTABLES,
        "native-nftables",
        None,
        Some("NATIVE_NFTABLES")
    );
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value '{value}' for {flag}: {reason}")]
    InvalidValue {
        flag: FlagName,
        value: String,
        reason: String,
    },
    #[error(
        "invalid value '*' for {}: excluding every outbound address is not supported (upstream: invalid value for OUTBOUND_IP_RANGES_EXCLUDE)",
        names::SERVICE_EXCLUDE_CIDR
    )]
    WildcardExclude,
    #[error(
        "invalid value for ISTIO_OUTBOUND_OWNER_GROUPS: {count} groups given, at most 64 are supported"
    )]
    TooManyOwnerGroups { count: usize },
    #[error("invalid value '{value}' for ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: {reason}")]
    LoopbackCidr { value: String, reason: String },
    #[error(
        "{} is not supported by outrigger-init yet; use the iptables backend",
        names::NATIVE_NFTABLES
    )]
    NativeNftables,
    #[error("reading the interface addresses: {0}")]
    InterfaceAddrs(std::io::Error),
    #[error("no valid local IP address found (every interface address is loopback or link-local)")]
    NoLocalIp,
    #[error("reading /etc/resolv.conf for DNS capture: {0}")]
    ResolvConf(std::io::Error),
}

fn invalid(flag: FlagName, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// An IP prefix printed as Go's `netip.Prefix` does: host bits kept, IPv6 in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| "a CIDR needs a prefix length, e.g. 10.0.0.0/8".to_string())?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match len.parse() {
            Ok(l) if l <= max && !(len.starts_with('0') && len.len() > 1) => l,
            _ => return Err(format!("prefix length '{len}' must be 0..{max}")),
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterceptionMode {
    Redirect,
    Tproxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `-b ''`: no inbound capture.
    None,
    /// `-b '*'`: every port but the excluded ones.
    All { exclude: Vec<u16> },
    /// `-b 80,443`.
    List(Vec<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundInclude {
    None,
    All,
    Cidrs(Vec<Cidr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCapture {
    Off,
    /// `--capture-all-dns`: every port-53 packet.
    All,
    /// Only the resolv.conf servers (printed as written there).
    Servers {
        v4: Vec<String>,
        v6: Vec<String>,
    },
}

impl DnsCapture {
    pub fn is_on(&self) -> bool {
        !matches!(self, DnsCapture::Off)
    }
}

/// Which owner groups' outbound traffic is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// All groups except these.
    AllExcept(Vec<String>),
    /// Only these groups.
    Only(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedBinary {
    Legacy,
    Nft,
}

/// What the rules are computed from. Built by [`Config::build`] or directly by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub envoy_port: u16,
    pub inbound_capture_port: u16,
    pub tunnel_port: u16,
    pub proxy_uids: Vec<String>,
    pub proxy_gids: Vec<String>,
    pub mode: InterceptionMode,
    pub inbound_ports: InboundPorts,
    pub exclude_interfaces: Vec<String>,
    pub kube_virt_interfaces: Vec<String>,
    pub outbound_include: OutboundInclude,
    pub outbound_exclude: Vec<Cidr>,
    pub outbound_ports_include: Vec<u16>,
    pub outbound_ports_exclude: Vec<u16>,
    pub tproxy_mark: u32,
    pub tproxy_route_table: u32,
    pub dns: DnsCapture,
    pub drop_invalid: bool,
    pub owner_groups: OwnerGroups,
    pub loopback_v4: Cidr,
    pub enable_ipv6: bool,
    pub host_ip: IpAddr,
    pub force_binary: Option<ForcedBinary>,
}

/// A valid configuration plus what the operator should be told about it.
#[derive(Debug)]
pub struct Built {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Splits a comma list, dropping empty items (as Istio's `config.Split`).
pub fn split(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn ports(flag: FlagName, value: &str) -> Result<Vec<u16>, ConfigError> {
    split(value)
        .into_iter()
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| invalid(flag, value, format!("'{p}' is not a port (0-65535)")))
        })
        .collect()
}

fn port(flag: FlagName, value: &str) -> Result<u16, ConfigError> {
    value
        .trim()
        .parse::<u16>()
        .map_err(|_| invalid(flag, value, "not a port (0-65535)"))
}

fn interfaces(flag: FlagName, value: &str) -> Result<Vec<String>, ConfigError> {
    split(value)
        .into_iter()
        .map(|name| {
            // IFNAMSIZ is 16 including the NUL; iptables accepts a trailing '+' wildcard.
            if name.len() > 15 || name.contains(char::is_whitespace) || name.contains('/') {
                Err(invalid(
                    flag,
                    value,
                    format!("'{name}' is not an interface name"),
                ))
            } else {
                Ok(name.to_string())
            }
        })
        .collect()
}

fn owners(flag: FlagName, value: &str) -> Result<Vec<String>, ConfigError> {
    split(value)
        .into_iter()
        .map(|o| {
            if o.contains(char::is_whitespace) {
                Err(invalid(
                    flag,
                    value,
                    format!("'{o}' is not a user or group"),
                ))
            } else {
                Ok(o.to_string())
            }
        })
        .collect()
}

fn cidrs(flag: FlagName, value: &str) -> Result<Vec<Cidr>, ConfigError> {
    split(value)
        .into_iter()
        .map(|c| c.parse::<Cidr>().map_err(|e| invalid(flag, value, e)))
        .collect()
}

fn number(flag: FlagName, value: &str) -> Result<u32, ConfigError> {
    let v = value.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    parsed.map_err(|_| invalid(flag, value, "not a 32-bit number"))
}

/// IPv6 detection as upstream's `getLocalIP`: skip loopback and link-local; without dual-stack
/// the first remaining address decides, with dual-stack any IPv6 address before the end does.
fn detect_ip(addrs: &[IpAddr], dual_stack: bool) -> Option<(IpAddr, bool)> {
    let usable = addrs.iter().map(|a| a.to_canonical()).filter(|a| {
        !a.is_loopback()
            && match a {
                IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_multicast(),
                IpAddr::V6(v6) => !v6.is_unicast_link_local() && !is_link_local_multicast(v6),
            }
    });
    let mut first = None;
    for addr in usable {
        let host = *first.get_or_insert(addr);
        if addr.is_ipv6() {
            return Some((host, true));
        }
        if !dual_stack {
            return Some((host, false));
        }
    }
    first.map(|a| (a, false))
}

fn is_link_local_multicast(v6: &std::net::Ipv6Addr) -> bool {
    v6.is_multicast() && (v6.segments()[0] & 0x000f) == 2
}

impl Config {
    /// Validates settings and resolves the host-dependent parts (uid lookup, IPv6, DNS servers).
    pub fn build(s: &Settings, host: &dyn Host) -> Result<Built, ConfigError> {
        use names::*;
        let mut warnings = Vec::new();

        if s.native_nftables {
            return Err(ConfigError::NativeNftables);
        }
        let force_binary = match s.force_iptables_binary.as_str() {
            "" => None,
            "legacy" => Some(ForcedBinary::Legacy),
            "nft" => Some(ForcedBinary::Nft),
            other => {
                return Err(invalid(
                    FORCE_IPTABLES_BINARY,
                    other,
                    "must be 'legacy' or 'nft'",
                ));
            }
        };

        let loopback_v4: Cidr =
            s.ipv4_loopback_cidr
                .parse()
                .map_err(|reason| ConfigError::LoopbackCidr {
                    value: s.ipv4_loopback_cidr.clone(),
                    reason,
                })?;
        if !(loopback_v4.is_v4() && loopback_v4.addr.is_loopback() && loopback_v4.len >= 8) {
            return Err(ConfigError::LoopbackCidr {
                value: s.ipv4_loopback_cidr.clone(),
                reason: "must be an IPv4 loopback prefix with a length of 8 to 32".into(),
            });
        }

        let owner_groups = if s.owner_groups_include.trim() == "*" {
            OwnerGroups::AllExcept(
                split(&s.owner_groups_exclude)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            )
        } else {
            let groups: Vec<String> = split(&s.owner_groups_include)
                .into_iter()
                .map(String::from)
                .collect();
            if groups.len() > 64 {
                return Err(ConfigError::TooManyOwnerGroups {
                    count: groups.len(),
                });
            }
            OwnerGroups::Only(groups)
        };

        let mode = match s.inbound_interception_mode.as_str() {
            "TPROXY" => InterceptionMode::Tproxy,
            "" | "REDIRECT" => InterceptionMode::Redirect,
            other => {
                warnings.push(format!(
                    "interception mode '{other}' is not TPROXY: using REDIRECT (as istio-iptables does; the value is case-sensitive)"
                ));
                InterceptionMode::Redirect
            }
        };

        let exclude_ports = ports(LOCAL_EXCLUDE_PORTS, &s.local_exclude_ports)?;
        let inbound_ports = match s.inbound_ports.trim() {
            "" => InboundPorts::None,
            "*" => InboundPorts::All {
                exclude: exclude_ports,
            },
            list => InboundPorts::List(ports(INBOUND_PORTS, list)?),
        };

        let outbound_exclude_raw = s.service_exclude_cidr.trim();
        if split(outbound_exclude_raw).contains(&"*") {
            return Err(ConfigError::WildcardExclude);
        }
        let outbound_exclude = cidrs(SERVICE_EXCLUDE_CIDR, outbound_exclude_raw)?;
        let outbound_include = match s.service_cidr.trim() {
            "" => OutboundInclude::None,
            "*" => OutboundInclude::All,
            list => OutboundInclude::Cidrs(cidrs(SERVICE_CIDR, list)?),
        };

        let proxy_uid = if s.proxy_uid.is_empty() {
            host.lookup_uid(&s.envoy_user)
                .map(|u| u.to_string())
                .unwrap_or_else(|| "1337".into())
        } else {
            s.proxy_uid.clone()
        };
        let proxy_gid = if s.proxy_gid.is_empty() {
            proxy_uid.clone()
        } else {
            s.proxy_gid.clone()
        };

        let addrs = host
            .interface_addrs()
            .map_err(ConfigError::InterfaceAddrs)?;
        let (host_ip, enable_ipv6) =
            detect_ip(&addrs, s.dual_stack).ok_or(ConfigError::NoLocalIp)?;

        let dns = if !s.redirect_dns {
            DnsCapture::Off
        } else if s.capture_all_dns {
            DnsCapture::All
        } else {
            let conf = host.resolv_conf().map_err(ConfigError::ResolvConf)?;
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for server in host::nameservers(&conf) {
                // Kept as written (upstream appends the original string, not a re-print).
                match server.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => v4.push(server),
                    Ok(IpAddr::V6(_)) => v6.push(server),
                    Err(_) => warnings.push(format!(
                        "resolv.conf nameserver '{server}' is not an IP address: skipped"
                    )),
                }
            }
            if v4.is_empty() && v6.is_empty() {
                warnings.push("DNS capture requested but /etc/resolv.conf names no nameserver: DNS is not captured (use --capture-all-dns to capture every port-53 packet)".into());
                DnsCapture::Off
            } else {
                DnsCapture::Servers { v4, v6 }
            }
        };

        Ok(Built {
            config: Config {
                envoy_port: port(ENVOY_PORT, &s.envoy_port)?,
                inbound_capture_port: port(INBOUND_CAPTURE_PORT, &s.inbound_capture_port)?,
                tunnel_port: port(INBOUND_TUNNEL_PORT, &s.inbound_tunnel_port)?,
                proxy_uids: owners(PROXY_UID, &proxy_uid)?,
                proxy_gids: owners(PROXY_GID, &proxy_gid)?,
                mode,
                inbound_ports,
                exclude_interfaces: interfaces(EXCLUDE_INTERFACES, &s.exclude_interfaces)?,
                kube_virt_interfaces: interfaces(KUBE_VIRT_INTERFACES, &s.kube_virt_interfaces)?,
                outbound_include,
                outbound_exclude,
                outbound_ports_include: ports(OUTBOUND_PORTS, &s.outbound_ports)?,
                outbound_ports_exclude: ports(
                    LOCAL_OUTBOUND_PORTS_EXCLUDE,
                    &s.local_outbound_ports_exclude,
                )?,
                tproxy_mark: number(TPROXY_MARK, &s.tproxy_mark)?,
                tproxy_route_table: number(TPROXY_ROUTE_TABLE, &s.tproxy_route_table)?,
                dns,
                drop_invalid: s.drop_invalid,
                owner_groups,
                loopback_v4,
                enable_ipv6,
                host_ip,
                force_binary,
            },
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn cidrs_print_like_go_netip() {
        let c: Cidr = "2001:DB8:0:0::/32".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::/32");
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/8", "host bits are kept");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/08",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_detection_follows_first_usable_address() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5));
        let v6 = IpAddr::V6("fd00::5".parse::<Ipv6Addr>().unwrap());
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ll = IpAddr::V6("fe80::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(detect_ip(&[lo, ll, v4, v6], false), Some((v4, false)));
        assert_eq!(detect_ip(&[lo, v4, v6], true), Some((v4, true)));
        assert_eq!(detect_ip(&[lo, ll, v6], false), Some((v6, true)));
        assert_eq!(detect_ip(&[lo, v4], true), Some((v4, false)));
        assert_eq!(detect_ip(&[lo, ll], true), None);
    }
}

#[cfg(test)]
mod build_tests {
    //! Validation of settings into a config (quirks and bad input).
    use std::collections::HashMap;
    use std::io;

    use clap::Parser;

    use super::*;
    use crate::flags::{Cli, Settings};

    struct Pod {
        addrs: Vec<IpAddr>,
        resolv: Option<&'static str>,
        istio_proxy_uid: Option<u32>,
    }

    impl Host for Pod {
        fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
            Ok(self.addrs.clone())
        }
        fn resolv_conf(&self) -> io::Result<String> {
            self.resolv
                .map(String::from)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no resolv.conf"))
        }
        fn lookup_uid(&self, user: &str) -> Option<u32> {
            if user == "istio-proxy" {
                self.istio_proxy_uid
            } else {
                None
            }
        }
    }

    fn v4_pod() -> Pod {
        Pod {
            addrs: vec!["127.0.0.1".parse().unwrap(), "10.1.1.1".parse().unwrap()],
            resolv: Some("nameserver 10.96.0.10\n"),
            istio_proxy_uid: None,
        }
    }

    fn build(args: &[&str], env: &[(&str, &str)], pod: &Pod) -> Result<Built, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::build(&Settings::resolve(cli, &env), pod)
    }

    fn err(args: &[&str], env: &[(&str, &str)]) -> String {
        build(args, env, &v4_pod())
            .expect_err("must be rejected")
            .to_string()
    }

    #[test]
    fn uid_defaults_to_istio_proxy_user_then_1337_and_gid_follows() {
        let c = build(&[], &[], &v4_pod()).unwrap().config;
        assert_eq!(
            (c.proxy_uids.clone(), c.proxy_gids.clone()),
            (vec!["1337".to_string()], vec!["1337".to_string()])
        );
        let pod = Pod {
            istio_proxy_uid: Some(1234),
            ..v4_pod()
        };
        let c = build(&[], &[], &pod).unwrap().config;
        assert_eq!(c.proxy_gids, vec!["1234".to_string()]);
        let c = build(&["-u", "5,6"], &[], &v4_pod()).unwrap().config;
        assert_eq!(
            c.proxy_gids,
            vec!["5".to_string(), "6".to_string()],
            "-g defaults to the -u string"
        );
    }

    #[test]
    fn interception_mode_is_case_sensitive() {
        assert_eq!(
            build(&["-m", "TPROXY"], &[], &v4_pod())
                .unwrap()
                .config
                .mode,
            InterceptionMode::Tproxy
        );
        let b = build(&["-m", "tproxy"], &[], &v4_pod()).unwrap();
        assert_eq!(b.config.mode, InterceptionMode::Redirect);
        assert!(
            b.warnings[0].contains("tproxy"),
            "an unknown mode is reported: {:?}",
            b.warnings
        );
    }

    #[test]
    fn local_exclude_ports_apply_only_to_wildcard() {
        let c = build(&["-b", "*", "-d", "15090,15021"], &[], &v4_pod())
            .unwrap()
            .config;
        assert_eq!(
            c.inbound_ports,
            InboundPorts::All {
                exclude: vec![15090, 15021]
            }
        );
        let c = build(&["-b", "80", "-d", "15090"], &[], &v4_pod())
            .unwrap()
            .config;
        assert_eq!(c.inbound_ports, InboundPorts::List(vec![80]));
    }

    #[test]
    fn dns_capture_reads_resolv_conf_and_is_dropped_without_servers() {
        let c = build(&["--redirect-dns"], &[], &v4_pod()).unwrap().config;
        assert_eq!(
            c.dns,
            DnsCapture::Servers {
                v4: vec!["10.96.0.10".into()],
                v6: vec![]
            }
        );
        let pod = Pod {
            resolv: Some("search x\n"),
            ..v4_pod()
        };
        let b = build(&["--redirect-dns"], &[], &pod).unwrap();
        assert_eq!(b.config.dns, DnsCapture::Off);
        assert!(!b.warnings.is_empty());
        let c = build(&["--redirect-dns", "--capture-all-dns"], &[], &pod)
            .unwrap()
            .config;
        assert_eq!(c.dns, DnsCapture::All);
        let pod = Pod {
            resolv: None,
            ..v4_pod()
        };
        assert!(matches!(
            build(&["--redirect-dns"], &[], &pod),
            Err(ConfigError::ResolvConf(_))
        ));
    }

    #[test]
    fn no_usable_address_is_an_error() {
        let pod = Pod {
            addrs: vec!["127.0.0.1".parse().unwrap(), "fe80::1".parse().unwrap()],
            ..v4_pod()
        };
        assert!(matches!(build(&[], &[], &pod), Err(ConfigError::NoLocalIp)));
    }

    #[test]
    fn bad_values_name_the_flag_and_value() {
        let e = err(&["-x", "*"], &[]);
        assert!(
            e.contains("--istio-service-exclude-cidr") && e.contains("'*'"),
            "{e}"
        );
        let e = err(&["-i", "10.0.0.0/8,banana"], &[]);
        assert!(
            e.contains("--istio-service-cidr (-i, env ISTIO_SERVICE_CIDR)") && e.contains("banana"),
            "{e}"
        );
        let e = err(&["-b", "80,70000"], &[]);
        assert!(
            e.contains("--istio-inbound-ports") && e.contains("70000"),
            "{e}"
        );
        let e = err(&["-q", "http"], &[]);
        assert!(
            e.contains("--istio-outbound-ports") && e.contains("http"),
            "{e}"
        );
        let e = err(&["-p", "0x"], &[]);
        assert!(e.contains("--envoy-port"), "{e}");
        let e = err(&["-c", "an-interface-name-too-long"], &[]);
        assert!(e.contains("--istio-exclude-interfaces"), "{e}");
        let e = err(&["--force-iptables-binary", "nftables"], &[]);
        assert!(
            e.contains("--force-iptables-binary") && e.contains("nftables"),
            "{e}"
        );
        let e = err(&["-t", "mark"], &[]);
        assert!(e.contains("--istio-inbound-tproxy-mark"), "{e}");
        let e = err(&[], &[("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8")]);
        assert!(
            e.contains("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR") && e.contains("loopback"),
            "{e}"
        );
        let groups = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let e = err(&[], &[("ISTIO_OUTBOUND_OWNER_GROUPS", &groups)]);
        assert!(e.contains("65 groups"), "{e}");
        let e = err(&["--native-nftables"], &[]);
        assert!(e.contains("--native-nftables"), "{e}");
    }

    #[test]
    fn ipv6_cidrs_are_canonicalised() {
        let c = build(&["-i", "2001:DB8::0/32,10.0.0.0/8"], &[], &v4_pod())
            .unwrap()
            .config;
        let OutboundInclude::Cidrs(cidrs) = c.outbound_include else {
            panic!()
        };
        assert_eq!(
            cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["2001:db8::/32", "10.0.0.0/8"]
        );
    }
}
