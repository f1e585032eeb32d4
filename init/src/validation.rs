//! `--run-validation`: proves that capture works by connecting to `127.0.0.6:<probe port>` and
//! checking that the connection arrives on the proxy ports with that original destination.
//!
//! Only the proxy's own uid is redirected for that address (through the `--uid-owner`
//! ISTIO_IN_REDIRECT rule), which is how istio-cni's `istio-validation` container runs it.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use thiserror::Error;

/// Exit code upstream uses when validation fails.
pub const EXIT_CODE: i32 = 126;

const HINT: &str = "Traffic is not being captured: the iptables rules of this pod are missing or do not redirect \
the proxy's probe. When istio-cni is used, this usually means the pod was scheduled before the \
CNI plugin was ready on the node; deleting the pod lets it be recreated with the rules in place \
(istio-cni can do this automatically with cni.repair.deletePods).";

#[derive(Debug, Error)]
pub enum ValidationError {
    #[error("validation: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "validation timeout after {0:?}: no connection to {1} reached the proxy ports with the expected original destination. {HINT}"
    )]
    Timeout(Duration, SocketAddr),
}

#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub envoy_port: u16,
    pub inbound_port: u16,
    pub probe_port: u16,
    pub timeout: Duration,
    pub ipv6: bool,
}

fn listen(addr: SocketAddr) -> Result<TcpListener, ValidationError> {
    let err = |source| ValidationError::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(16).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

fn original_dst(stream: &TcpStream, ipv6: bool) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if ipv6 {
        let a = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
        let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
        Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
    } else {
        let a = getsockopt(stream, sockopt::OriginalDst).ok()?;
        let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
        Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
    }
}

/// Runs the probe until it succeeds or the timeout passes.
pub fn validate(p: Probe) -> Result<(), ValidationError> {
    let (local, passthrough) = if p.ipv6 {
        (
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        )
    };
    let target = SocketAddr::new(passthrough, p.probe_port);
    let listeners = [p.envoy_port, p.inbound_port]
        .into_iter()
        .map(|port| listen(SocketAddr::new(local, port)))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + p.timeout;
    let (tx, rx) = mpsc::channel();
    for listener in listeners {
        let tx = tx.clone();
        thread::spawn(move || {
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let dst = original_dst(&stream, p.ipv6);
                        if let Some(dst) = dst {
                            let _ = writeln!(stream, "{}", dst.port());
                        }
                        let _ = tx.send(dst);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }
    drop(tx);
    while Instant::now() < deadline {
        let client = Socket::new(Domain::for_address(target), Type::STREAM, None);
        if let Ok(client) = client {
            let _ = client.bind(&SocketAddr::new(local, 0).into());
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            if client
                .connect_timeout(&target.into(), left.max(Duration::from_millis(1)))
                .is_ok()
            {
                tracing::debug!(%target, "validation connection established");
            }
        }
        let wait_until = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while let Some(left) = wait_until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(Some(dst)) if dst.port() == p.probe_port => {
                    tracing::info!(original_dst = %dst, "validation passed: the probe reached the proxy port");
                    return Ok(());
                }
                Ok(other) => {
                    tracing::warn!(original_dst = ?other, "validation: unexpected original destination")
                }
                Err(_) => break,
            }
        }
    }
    Err(ValidationError::Timeout(p.timeout, target))
}
