//! The rule plan: which iptables rules a [`Config`] installs, in istio-iptables' exact order.
//!
//! Pure: no I/O. Rules are collected into an IPv4 and an IPv6 list; a rule added for "both"
//! families goes into the IPv6 list only when IPv6 is enabled. The order of additions below is the
//! order of upstream's `run.go`, which decides the byte order of the restore payload.

use std::fmt;

use crate::config::{
    Config, DnsCapture, InboundPorts, InterceptionMode, OutboundInclude, OwnerGroups,
};

pub const DNS_CAPTURE_PORT: &str = "15053";
/// Mark the TPROXY outbound rules put on the proxy's own loopback traffic.
pub const OUTBOUND_MARK: &str = "1338";

pub mod chain {
    pub const INBOUND: &str = "ISTIO_INBOUND";
    pub const REDIRECT: &str = "ISTIO_REDIRECT";
    pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    pub const OUTPUT: &str = "ISTIO_OUTPUT";
    pub const OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
    pub const DIVERT: &str = "ISTIO_DIVERT";
    pub const TPROXY: &str = "ISTIO_TPROXY";
    pub const DROP: &str = "ISTIO_DROP";
    pub const PREROUTING: &str = "PREROUTING";
    pub const OUTPUT_BUILTIN: &str = "OUTPUT";
    /// Chains and targets that are never created with `-N`.
    pub const BUILTIN: [&str; 8] = [
        "INPUT",
        "OUTPUT",
        "FORWARD",
        "PREROUTING",
        "POSTROUTING",
        "ACCEPT",
        "RETURN",
        "DROP",
    ];

    pub fn is_builtin(name: &str) -> bool {
        BUILTIN.contains(&name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Mangle,
    Nat,
    Raw,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Filter, Table::Mangle, Table::Nat, Table::Raw];

    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Source address of the proxy's inbound passthrough connections.
    pub fn passthrough(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    fn host_mask(self) -> &'static str {
        match self {
            Family::V4 => "/32",
            Family::V6 => "/128",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Append,
    Insert(u32),
}

/// One rule: `-A CHAIN spec…` or `-I CHAIN N spec…` in a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub position: Position,
    pub spec: Vec<String>,
}

impl Rule {
    /// The words of the rule as the restore payload has them.
    pub fn words(&self) -> Vec<String> {
        let mut w = match self.position {
            Position::Append => vec!["-A".to_string(), self.chain.clone()],
            Position::Insert(n) => vec!["-I".to_string(), self.chain.clone(), n.to_string()],
        };
        w.extend(self.spec.iter().cloned());
        w
    }

    /// The target of a rule ending in `-j TARGET`.
    pub fn jump_target(&self) -> Option<&str> {
        match self.spec.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// The IPv4 and IPv6 rule lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub v4: Vec<Rule>,
    pub v6: Vec<Rule>,
}

impl Plan {
    pub fn family(&self, family: Family) -> &[Rule] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

macro_rules! spec {
    ($($x:expr),* $(,)?) => { vec![$($x.to_string()),*] };
}

struct Builder<'c> {
    cfg: &'c Config,
    plan: Plan,
}

impl Builder<'_> {
    fn one(
        &mut self,
        family: Family,
        table: Table,
        chain: &str,
        position: Position,
        spec: Vec<String>,
    ) {
        let rule = Rule {
            table,
            chain: chain.to_string(),
            position,
            spec,
        };
        match family {
            Family::V4 => self.plan.v4.push(rule),
            // With IPv6 disabled the IPv6 list stays empty: nothing is installed there.
            Family::V6 if self.cfg.enable_ipv6 => self.plan.v6.push(rule),
            Family::V6 => {}
        }
    }

    /// A rule for IPv4 and, if enabled, IPv6; `spec` may differ per family.
    fn both(
        &mut self,
        table: Table,
        chain: &str,
        position: Position,
        spec: impl Fn(Family) -> Vec<String>,
    ) {
        self.one(Family::V4, table, chain, position, spec(Family::V4));
        self.one(Family::V6, table, chain, position, spec(Family::V6));
    }

    fn append(&mut self, table: Table, chain: &str, spec: Vec<String>) {
        self.both(table, chain, Position::Append, |_| spec.clone());
    }

    fn insert(&mut self, table: Table, chain: &str, n: u32, spec: Vec<String>) {
        self.both(table, chain, Position::Insert(n), |_| spec.clone());
    }
}

/// Computes the rules of `cfg`, in upstream's order.
pub fn plan(cfg: &Config) -> Plan {
    use Table::*;
    use chain::*;
    let mut b = Builder {
        cfg,
        plan: Plan::default(),
    };
    let tproxy = cfg.mode == InterceptionMode::Tproxy;
    let dns_on = cfg.dns.is_on();
    let tunnel = cfg.tunnel_port.to_string();
    let lo4 = cfg.loopback_v4.to_string();
    let lo_of = |f: Family| {
        if f == Family::V4 {
            lo4.clone()
        } else {
            "::1/128".to_string()
        }
    };

    // 1. Excluded interfaces: nothing in or out of them is captured.
    for iface in &cfg.exclude_interfaces {
        b.append(Nat, PREROUTING, spec!["-i", iface, "-j", "RETURN"]);
        b.append(Nat, OUTPUT_BUILTIN, spec!["-o", iface, "-j", "RETURN"]);
    }
    if tproxy {
        for iface in &cfg.exclude_interfaces {
            b.append(Mangle, PREROUTING, spec!["-i", iface, "-j", "RETURN"]);
            b.append(Mangle, OUTPUT_BUILTIN, spec!["-o", iface, "-j", "RETURN"]);
        }
    }
    // 2. Virtual interfaces are not inbound.
    for iface in &cfg.kube_virt_interfaces {
        b.insert(Nat, PREROUTING, 1, spec!["-i", iface, "-j", "RETURN"]);
    }
    // 3. Drop conntrack-invalid packets.
    if cfg.drop_invalid {
        b.append(
            Mangle,
            PREROUTING,
            spec!["-m", "conntrack", "--ctstate", "INVALID", "-j", DROP],
        );
        b.append(Mangle, DROP, spec!["-j", "DROP"]);
    }
    // 4-6. The fixed chains.
    b.append(
        Nat,
        INBOUND,
        spec!["-p", "tcp", "--dport", tunnel, "-j", "RETURN"],
    );
    b.append(
        Nat,
        REDIRECT,
        spec!["-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.envoy_port],
    );
    b.append(
        Nat,
        IN_REDIRECT,
        spec![
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            cfg.inbound_capture_port
        ],
    );

    // 7. Inbound.
    if cfg.inbound_ports != InboundPorts::None {
        let table = if tproxy { Mangle } else { Nat };
        let mark = cfg.tproxy_mark.to_string();
        if tproxy {
            b.append(Mangle, DIVERT, spec!["-j", "MARK", "--set-mark", mark]);
            b.append(Mangle, DIVERT, spec!["-j", "ACCEPT"]);
            let on_port = cfg.inbound_capture_port.to_string();
            b.both(Mangle, TPROXY, Position::Append, |f| {
                spec![
                    "!",
                    "-d",
                    lo_of(f),
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--tproxy-mark",
                    format!("{mark}/0xffffffff"),
                    "--on-port",
                    on_port
                ]
            });
        }
        b.append(table, PREROUTING, spec!["-p", "tcp", "-j", INBOUND]);
        match &cfg.inbound_ports {
            InboundPorts::All { exclude } => {
                for p in exclude {
                    b.append(
                        table,
                        INBOUND,
                        spec!["-p", "tcp", "--dport", p, "-j", "RETURN"],
                    );
                }
                if tproxy {
                    b.append(
                        Mangle,
                        INBOUND,
                        spec![
                            "-p",
                            "tcp",
                            "-m",
                            "conntrack",
                            "--ctstate",
                            "RELATED,ESTABLISHED",
                            "-j",
                            DIVERT
                        ],
                    );
                    b.append(Mangle, INBOUND, spec!["-p", "tcp", "-j", TPROXY]);
                } else {
                    b.append(Nat, INBOUND, spec!["-p", "tcp", "-j", IN_REDIRECT]);
                }
            }
            InboundPorts::List(ports) => {
                for p in ports {
                    if tproxy {
                        b.append(
                            Mangle,
                            INBOUND,
                            spec![
                                "-p",
                                "tcp",
                                "--dport",
                                p,
                                "-m",
                                "conntrack",
                                "--ctstate",
                                "RELATED,ESTABLISHED",
                                "-j",
                                DIVERT
                            ],
                        );
                        b.append(
                            Mangle,
                            INBOUND,
                            spec!["-p", "tcp", "--dport", p, "-j", TPROXY],
                        );
                    } else {
                        b.append(
                            Nat,
                            INBOUND,
                            spec!["-p", "tcp", "--dport", p, "-j", IN_REDIRECT],
                        );
                    }
                }
            }
            InboundPorts::None => {}
        }
    }

    // 8-10. Outbound entry, excluded ports, inbound passthrough.
    b.append(Nat, OUTPUT_BUILTIN, spec!["-j", OUTPUT]);
    for p in &cfg.outbound_ports_exclude {
        b.append(
            Nat,
            OUTPUT,
            spec!["-p", "tcp", "--dport", p, "-j", "RETURN"],
        );
        b.append(
            Nat,
            OUTPUT,
            spec!["-p", "udp", "--dport", p, "-j", "RETURN"],
        );
    }
    b.both(Nat, OUTPUT, Position::Append, |f| {
        spec!["-o", "lo", "-s", f.passthrough(), "-j", "RETURN"]
    });

    // 11-12. The proxy's own traffic: to a local non-loopback address it is inbound (app
    // talking to itself through the mesh), otherwise it is never captured.
    let loopback_included = match &cfg.outbound_include {
        OutboundInclude::Cidrs(cidrs) => cidrs.iter().any(|c| c.addr.is_loopback()),
        _ => false,
    };
    for (owner, ids) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for id in ids {
            // Upstream never uses the DNS multiport variant for GIDs.
            let multiport = dns_on && owner == "--uid-owner";
            b.both(Nat, OUTPUT, Position::Append, |f| {
                let mut s = spec!["-o", "lo", "!", "-d", lo_of(f), "-p", "tcp"];
                if multiport {
                    s.extend(spec![
                        "-m",
                        "multiport",
                        "!",
                        "--dports",
                        format!("53,{tunnel}")
                    ]);
                } else {
                    s.extend(spec!["!", "--dport", tunnel]);
                }
                s.extend(spec!["-m", "owner", owner, id, "-j", IN_REDIRECT]);
                s
            });
            if !loopback_included {
                if dns_on {
                    b.append(
                        Nat,
                        OUTPUT,
                        spec![
                            "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!",
                            owner, id, "-j", "RETURN"
                        ],
                    );
                } else {
                    b.append(
                        Nat,
                        OUTPUT,
                        spec!["-o", "lo", "-m", "owner", "!", owner, id, "-j", "RETURN"],
                    );
                }
            }
            b.append(Nat, OUTPUT, spec!["-m", "owner", owner, id, "-j", "RETURN"]);
        }
    }

    // 13. Owner groups.
    match &cfg.owner_groups {
        OwnerGroups::AllExcept(excluded) => {
            for g in excluded {
                b.append(
                    Nat,
                    OUTPUT,
                    spec!["-m", "owner", "--gid-owner", g, "-j", "RETURN"],
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let mut s = Vec::new();
            for g in groups {
                s.extend(spec!["-m", "owner", "!", "--gid-owner", g]);
            }
            s.extend(spec!["-j", "RETURN"]);
            b.append(Nat, OUTPUT, s);
        }
    }

    // 14. DNS.
    if dns_on {
        dns_rules(&mut b);
    }

    // 15-16. Loopback and excluded CIDRs are never captured.
    b.both(Nat, OUTPUT, Position::Append, |f| {
        spec!["-d", lo_of(f), "-j", "RETURN"]
    });
    for c in &cfg.outbound_exclude {
        let f = if c.is_v4() { Family::V4 } else { Family::V6 };
        b.one(
            f,
            Nat,
            OUTPUT,
            Position::Append,
            spec!["-d", c, "-j", "RETURN"],
        );
    }
    // 17. Ports always captured.
    for p in &cfg.outbound_ports_include {
        b.append(
            Nat,
            OUTPUT,
            spec!["-p", "tcp", "--dport", p, "-j", REDIRECT],
        );
    }
    // 18. Outbound include, IPv4 then IPv6.
    for family in [Family::V4, Family::V6] {
        match &cfg.outbound_include {
            OutboundInclude::None => {}
            OutboundInclude::All => {
                b.one(family, Nat, OUTPUT, Position::Append, spec!["-j", REDIRECT]);
                for iface in &cfg.kube_virt_interfaces {
                    b.one(
                        family,
                        Nat,
                        PREROUTING,
                        Position::Insert(1),
                        spec!["-i", iface, "-j", REDIRECT],
                    );
                }
            }
            OutboundInclude::Cidrs(cidrs) => {
                for c in cidrs.iter().filter(|c| c.is_v4() == (family == Family::V4)) {
                    for iface in &cfg.kube_virt_interfaces {
                        b.one(
                            family,
                            Nat,
                            PREROUTING,
                            Position::Insert(1),
                            spec!["-i", iface, "-d", c, "-j", REDIRECT],
                        );
                    }
                    b.one(
                        family,
                        Nat,
                        OUTPUT,
                        Position::Append,
                        spec!["-d", c, "-j", REDIRECT],
                    );
                }
            }
        }
    }

    // 19. TPROXY marks: keep the proxy's loopback traffic to inbound out of TPROXY.
    if tproxy {
        let mark = cfg.tproxy_mark.to_string();
        b.append(
            Mangle,
            PREROUTING,
            spec![
                "-p",
                "tcp",
                "-m",
                "mark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--save-mark"
            ],
        );
        b.append(
            Mangle,
            OUTPUT_BUILTIN,
            spec![
                "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN"
            ],
        );
        for (owner, ids) in [
            ("--uid-owner", &cfg.proxy_uids),
            ("--gid-owner", &cfg.proxy_gids),
        ] {
            for id in ids {
                b.both(Mangle, OUTPUT_BUILTIN, Position::Append, |f| {
                    spec![
                        "!",
                        "-d",
                        lo_of(f),
                        "-p",
                        "tcp",
                        "-o",
                        "lo",
                        "-m",
                        "owner",
                        owner,
                        id,
                        "-j",
                        "MARK",
                        "--set-mark",
                        OUTBOUND_MARK
                    ]
                });
            }
        }
        b.append(
            Mangle,
            OUTPUT_BUILTIN,
            spec![
                "-p",
                "tcp",
                "-m",
                "connmark",
                "--mark",
                mark,
                "-j",
                "CONNMARK",
                "--restore-mark"
            ],
        );
        b.insert(
            Mangle,
            INBOUND,
            1,
            spec!["-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"],
        );
        b.both(Mangle, INBOUND, Position::Insert(2), |f| {
            spec![
                "-p",
                "tcp",
                "-s",
                f.passthrough(),
                "-i",
                "lo",
                "-j",
                "RETURN"
            ]
        });
        b.insert(
            Mangle,
            INBOUND,
            3,
            spec![
                "-p",
                "tcp",
                "-i",
                "lo",
                "-m",
                "mark",
                "!",
                "--mark",
                OUTBOUND_MARK,
                "-j",
                "RETURN"
            ],
        );
    }
    b.plan
}

/// Step 14: redirect DNS to the agent and separate its flows into conntrack zones.
fn dns_rules(b: &mut Builder<'_>) {
    use Table::*;
    use chain::*;
    let cfg = b.cfg;
    let (all, v4, v6): (bool, &[String], &[String]) = match &cfg.dns {
        DnsCapture::All => (true, &[], &[]),
        DnsCapture::Servers { v4, v6 } => (false, v4, v6),
        DnsCapture::Off => return,
    };
    let servers = |f: Family| if f == Family::V4 { v4 } else { v6 };

    b.append(Raw, OUTPUT_BUILTIN, spec!["-j", OUTPUT_DNS]);
    if all || !v4.is_empty() {
        b.one(
            Family::V4,
            Nat,
            OUTPUT,
            Position::Append,
            spec!["-j", OUTPUT_DNS],
        );
    }
    if all || !v6.is_empty() {
        b.one(
            Family::V6,
            Nat,
            OUTPUT,
            Position::Append,
            spec!["-j", OUTPUT_DNS],
        );
    }
    let families = [Family::V4, Family::V6];
    // TCP uses `--to-ports`, UDP `--to-port`: both spellings are upstream's.
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        if all {
            b.append(
                Nat,
                OUTPUT_DNS,
                spec![
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "REDIRECT",
                    to,
                    DNS_CAPTURE_PORT
                ],
            );
        } else {
            for &f in &families {
                for s in servers(f) {
                    b.one(
                        f,
                        Nat,
                        OUTPUT_DNS,
                        Position::Append,
                        spec![
                            "-p",
                            proto,
                            "--dport",
                            "53",
                            "-d",
                            format!("{s}{}", f.host_mask()),
                            "-j",
                            "REDIRECT",
                            to,
                            DNS_CAPTURE_PORT
                        ],
                    );
                }
            }
        }
    }
    // Zone 1: agent <-> upstream resolvers; zone 2: app <-> agent.
    for (owner, ids) in [
        ("--uid-owner", &cfg.proxy_uids),
        ("--gid-owner", &cfg.proxy_gids),
    ] {
        for id in ids {
            b.append(
                Raw,
                OUTPUT_DNS,
                spec![
                    "-p", "udp", "--dport", "53", "-m", "owner", owner, id, "-j", "CT", "--zone",
                    "1"
                ],
            );
            b.append(
                Raw,
                OUTPUT_DNS,
                spec![
                    "-p",
                    "udp",
                    "--sport",
                    DNS_CAPTURE_PORT,
                    "-m",
                    "owner",
                    owner,
                    id,
                    "-j",
                    "CT",
                    "--zone",
                    "2"
                ],
            );
        }
    }
    if all {
        b.append(Raw, PREROUTING, spec!["-j", INBOUND]);
        b.append(
            Raw,
            OUTPUT_DNS,
            spec!["-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2"],
        );
        b.append(
            Raw,
            INBOUND,
            spec!["-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1"],
        );
    } else {
        for &f in &families {
            if servers(f).is_empty() {
                continue;
            }
            b.one(f, Raw, PREROUTING, Position::Append, spec!["-j", INBOUND]);
            for s in servers(f) {
                let host = format!("{s}{}", f.host_mask());
                b.one(
                    f,
                    Raw,
                    OUTPUT_DNS,
                    Position::Append,
                    spec![
                        "-p", "udp", "--dport", "53", "-d", host, "-j", "CT", "--zone", "2"
                    ],
                );
                b.one(
                    f,
                    Raw,
                    INBOUND,
                    Position::Append,
                    spec![
                        "-p", "udp", "--sport", "53", "-s", host, "-j", "CT", "--zone", "1"
                    ],
                );
            }
        }
    }
}
