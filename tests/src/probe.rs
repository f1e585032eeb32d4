//! What `outrigger-probe` answers, and how it reads the original destination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

use serde::{Deserialize, Serialize};

/// One answer line of `outrigger-probe serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The `--name` of the server that accepted the connection.
    pub server: String,
    /// The port of the listener that accepted it.
    pub listen_port: u16,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6), when the connection was NATed.
    pub original_dst: Option<SocketAddr>,
}

pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    match stream.local_addr().ok()? {
        SocketAddr::V4(_) => {
            let a = getsockopt(stream, sockopt::OriginalDst).ok()?;
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        SocketAddr::V6(_) => {
            let a = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
    }
}
