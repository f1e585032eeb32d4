//! Opening a TCP connection to an upstream endpoint.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::listener::ConnError;

pub async fn connect(
    cluster: &str,
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ConnError::Connect {
        cluster: cluster.into(),
        addr,
        source,
    })?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| ConnError::Connect {
                cluster: cluster.into(),
                addr,
                source,
            })?;
    }
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnError::Connect {
            cluster: cluster.into(),
            addr,
            source,
        }),
        Err(_) => Err(ConnError::ConnectTimeout {
            cluster: cluster.into(),
            addr,
        }),
    }
}
