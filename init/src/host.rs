//! Facts about the host the rules are computed from: interface addresses (IPv6 detection),
//! resolv.conf (DNS capture) and the proxy user's uid. Behind a trait so tests can supply them.

use std::io;
use std::net::IpAddr;

pub trait Host {
    /// Addresses of all interfaces, in kernel dump order (IPv4 before IPv6, by interface).
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>>;
    /// The content of `/etc/resolv.conf`.
    fn resolv_conf(&self) -> io::Result<String>;
    /// The uid of a user name, if it exists.
    fn lookup_uid(&self, user: &str) -> Option<u32>;
}

/// The machine (or network namespace) this process runs in.
pub struct RealHost;

impl Host for RealHost {
    fn interface_addrs(&self) -> io::Result<Vec<IpAddr>> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        Ok(addrs
            .filter_map(|ifa| {
                let addr = ifa.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect())
    }

    fn resolv_conf(&self) -> io::Result<String> {
        std::fs::read_to_string("/etc/resolv.conf")
    }

    fn lookup_uid(&self, user: &str) -> Option<u32> {
        nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
}

/// The `nameserver` entries of a resolv.conf, in order, as written (unparsable ones included;
/// the caller filters). Comments start with `#` or `;`.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(server)) => Some(server.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameservers() {
        let conf = "# generated\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver   ::127.0.0.53 # v6\n;nameserver 1.1.1.1\noptions ndots:5\nnameserver\n";
        assert_eq!(nameservers(conf), vec!["10.96.0.10", "::127.0.0.53"]);
    }
}
