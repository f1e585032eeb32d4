//! Copying bytes both ways between two TCP connections, with half-close and an idle timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
    pub idle_timeout: bool,
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    start: Instant,
    last: Arc<AtomicU64>,
) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Half-close: pass the FIN on and keep the other direction open.
                let _ = to.shutdown().await;
                return total;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return total;
                }
                total += n as u64;
                last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Relays until both directions are closed, or nothing moved for `idle`.
pub async fn relay(downstream: TcpStream, upstream: TcpStream, idle: Option<Duration>) -> Moved {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (dr, dw) = downstream.into_split();
    let (ur, uw) = upstream.into_split();
    let both = async {
        tokio::join!(
            pump(dr, uw, start, last.clone()),
            pump(ur, dw, start, last.clone())
        )
    };
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            let since = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        (up, down) = both => Moved { downstream_to_upstream: up, upstream_to_downstream: down, idle_timeout: false },
        () = watchdog => Moved { idle_timeout: true, ..Moved::default() },
    }
}
