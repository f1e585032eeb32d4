//! Pure decisions of the accept path: which listener owns a connection's original destination,
//! and which filter chain of that listener matches it (Envoy's filter chain match order).

use std::net::{IpAddr, SocketAddr};

use crate::config::Address;
use crate::config::Snapshot;
use crate::config::listener::{ChainMatch, FilterChain, Listener};

/// What is known about a connection when its filter chain is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    /// The original destination (SO_ORIGINAL_DST, or the local address).
    pub dst: SocketAddr,
    pub src: SocketAddr,
    /// `raw_buffer` or `tls`.
    pub transport: &'static str,
    /// Detected application protocols (`http/1.1`, `h2c`, …); empty if unknown.
    pub app_protocols: Vec<&'static str>,
    pub sni: Option<String>,
}

/// The listener that handles a connection accepted by `accepting` with original destination
/// `dst`: with `use_original_dst`, the listener bound to exactly `dst`, else the wildcard
/// listener of that port and family, else the accepting listener itself.
pub fn listener_for<'a>(
    snap: &'a Snapshot,
    accepting: &'a Listener,
    dst: SocketAddr,
) -> &'a Listener {
    if !accepting.use_original_dst {
        return accepting;
    }
    let at = |want: SocketAddr| {
        snap.listeners
            .values()
            .find(|l| l.name != accepting.name && l.address == Address::Socket(want))
            .map(|l| l.as_ref())
    };
    let unspecified = match dst.ip() {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    at(dst)
        .or_else(|| at(SocketAddr::new(unspecified, dst.port())))
        .unwrap_or(accepting)
}

fn server_name_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => sni.ends_with(suffix) && sni.len() > suffix.len(),
        None => pattern == sni,
    }
}

/// Narrows `candidates` by one criterion: keep the most specific matches (score > 0, highest
/// wins), else the chains that do not constrain this criterion (score 0), else nothing.
fn narrow(
    candidates: Vec<&FilterChain>,
    score: impl Fn(&ChainMatch) -> Option<u32>,
) -> Vec<&FilterChain> {
    let scored: Vec<(Option<u32>, &FilterChain)> = candidates
        .into_iter()
        .map(|c| (score(&c.matcher), c))
        .collect();
    let best = scored
        .iter()
        .filter_map(|(s, _)| s.filter(|s| *s > 0))
        .max();
    match best {
        Some(best) => scored
            .into_iter()
            .filter(|(s, _)| *s == Some(best))
            .map(|(_, c)| c)
            .collect(),
        None => scored
            .into_iter()
            .filter(|(s, _)| *s == Some(0))
            .map(|(_, c)| c)
            .collect(),
    }
}

/// Envoy's filter chain selection: destination port, destination IP (longest prefix), server
/// name, transport protocol, application protocols, source IP (longest prefix), source port. At
/// each step the most specific matching chains win; unconstrained chains are the fallback.
/// Returns the default filter chain when nothing matches.
pub fn filter_chain<'a>(listener: &'a Listener, m: &ConnMeta) -> Option<&'a FilterChain> {
    let mut c: Vec<&FilterChain> = listener.filter_chains.iter().collect();
    // Score: None = excludes the connection, Some(0) = does not constrain, Some(n>0) = matches.
    c = narrow(c, |cm| match cm.destination_port {
        None => Some(0),
        Some(p) if p == m.dst.port() => Some(1),
        Some(_) => None,
    });
    c = narrow(c, |cm| prefix_score(&cm.prefix_ranges, m.dst.ip()));
    c = narrow(c, |cm| {
        if cm.server_names.is_empty() {
            return Some(0);
        }
        let sni = m.sni.as_deref()?;
        // Exact names beat wildcards; longer wildcards beat shorter ones.
        cm.server_names
            .iter()
            .filter(|p| server_name_matches(p, sni))
            .map(|p| {
                if p.starts_with('*') {
                    p.len() as u32
                } else {
                    10_000
                }
            })
            .max()
    });
    c = narrow(c, |cm| match &cm.transport_protocol {
        None => Some(0),
        Some(t) if t == m.transport => Some(1),
        Some(_) => None,
    });
    c = narrow(c, |cm| {
        if cm.application_protocols.is_empty() {
            Some(0)
        } else if cm
            .application_protocols
            .iter()
            .any(|p| m.app_protocols.contains(&p.as_str()))
        {
            Some(1)
        } else {
            None
        }
    });
    c = narrow(c, |cm| prefix_score(&cm.source_prefix_ranges, m.src.ip()));
    c = narrow(c, |cm| {
        if cm.source_ports.is_empty() {
            Some(0)
        } else if cm.source_ports.contains(&m.src.port()) {
            Some(1)
        } else {
            None
        }
    });
    c.first()
        .copied()
        .or(listener.default_filter_chain.as_ref())
}

/// Longest matching prefix length + 1 (so that /0 still beats "unconstrained").
fn prefix_score(ranges: &[crate::config::Cidr], ip: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.len) + 1)
        .max()
}

#[cfg(test)]
mod tests;
