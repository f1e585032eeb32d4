//! A fixed-rate (open-loop) HTTP/1.1 keep-alive load generator, the way Istio measures a mesh's
//! added latency (fortio at a set total rate over a set number of connections), for
//! `cargo xtask bench`. wrk only runs closed loop: its latencies at saturation are mostly
//! queueing, while a sidecar normally runs far below saturation.
//!
//! Each connection is a thread that sends its requests at fixed times (the total rate spread
//! evenly over the connections). A request is timed from when it was sent, unless its
//! connection was still busy with the previous one at the time it was due: then from the time
//! it was due, so that a stall is not hidden by the requests it delayed (coordinated omission).
//! The threads ask the kernel for 1 µs timer slack, so sleeping to a due time is not 50 µs late.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What to send, how fast, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub port: u16,
    /// Requests per second over all connections.
    pub rate: u32,
    pub connections: u32,
    pub seconds: u32,
}

/// What one run measured; latencies in microseconds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// Requests completed per second of the run.
    pub rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests, "errors": self.errors, "rps": self.rps,
            "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99,
            "p999_us": self.p999, "max_us": self.max,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let f = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("load generator output lacks {k:?}: {v}"))
        };
        Ok(Self {
            requests: f("requests")? as u64,
            errors: f("errors")? as u64,
            rps: f("rps")?,
            p50: f("p50_us")?,
            p90: f("p90_us")?,
            p99: f("p99_us")?,
            p999: f("p999_us")?,
            max: f("max_us")?,
        })
    }
}

/// The `q`-quantile (0..=1) of sorted nanosecond samples, in microseconds (nearest rank).
pub fn quantile(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1000.0
}

/// When the `k`-th request of connection `conn` is due, from the start of the run: the
/// connections take turns, so the whole run sends one request every `1/rate` seconds.
pub fn due(k: u64, conn: u32, plan: &Plan) -> Duration {
    let index = k * u64::from(plan.connections) + u64::from(conn);
    Duration::from_nanos(index.saturating_mul(1_000_000_000) / u64::from(plan.rate.max(1)))
}

/// The length of a complete HTTP/1.1 response at the start of `buf` (head and a
/// Content-Length body), its status, or None while more bytes are needed.
pub fn response_len(buf: &[u8]) -> Result<Option<(usize, u16)>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("a response head over 64 KiB");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("a response head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .context("a response without a status line")?;
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a chunked response (the origin should send Content-Length)");
            }
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("a bad Content-Length")?;
            }
        }
    }
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some((total, status)))
}

/// One connection's share of the run: (latencies in ns, errors).
fn connection(conn: u32, plan: Plan, start: Instant) -> (Vec<u64>, u64) {
    let _ = nix::sys::prctl::set_timerslack(1000);
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", plan.port);
    let end = start + Duration::from_secs(u64::from(plan.seconds));
    let per_conn = u64::from(plan.rate) * u64::from(plan.seconds) / u64::from(plan.connections);
    let mut latencies = Vec::with_capacity(per_conn as usize + 1);
    let mut errors = 0u64;
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    for k in 0.. {
        let due_at = start + due(k, conn, &plan);
        if due_at >= end {
            break;
        }
        let now = Instant::now();
        let sent = if now < due_at {
            std::thread::sleep(due_at - now);
            Instant::now()
        } else {
            // Late: the previous response held this connection past this request's time.
            due_at
        };
        if stream.is_none() {
            stream = TcpStream::connect(("127.0.0.1", plan.port))
                .ok()
                .inspect(|s| {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                });
        }
        let Some(s) = stream.as_mut() else {
            errors += 1;
            continue;
        };
        match exchange(s, request.as_bytes(), &mut buf) {
            Ok(200) => latencies.push(sent.elapsed().as_nanos() as u64),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                stream = None;
            }
        }
    }
    (latencies, errors)
}

/// Sends one request and reads its whole response; its status.
fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Result<u16> {
    s.write_all(request)?;
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            bail!("a response over {} bytes", buf.len());
        }
        let n = s.read(&mut buf[filled..])?;
        if n == 0 {
            bail!("the connection closed before the response ended");
        }
        filled += n;
        if let Some((len, status)) = response_len(&buf[..filled])? {
            if len != filled {
                bail!("bytes after the response");
            }
            return Ok(status);
        }
    }
}

/// Runs the plan and summarises it.
pub fn run(plan: Plan) -> Result<Summary> {
    if plan.rate == 0 || plan.connections == 0 || plan.seconds == 0 {
        bail!("--rate, --connections and --seconds must be at least 1");
    }
    // Connections are opened by their threads before the first request is due.
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..plan.connections)
        .map(|c| std::thread::spawn(move || connection(c, plan, start)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    Ok(Summary {
        requests: all.len() as u64,
        errors,
        rps: all.len() as f64 / f64::from(plan.seconds),
        p50: quantile(&all, 0.50),
        p90: quantile(&all, 0.90),
        p99: quantile(&all, 0.99),
        p999: quantile(&all, 0.999),
        max: all.last().map_or(0.0, |n| *n as f64 / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_spread_evenly_over_the_connections() {
        let plan = Plan {
            port: 1,
            rate: 1000,
            connections: 4,
            seconds: 1,
        };
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|c| (0..250).map(move |k| due(k, c, &plan)))
            .collect();
        all.sort();
        for (i, d) in all.iter().enumerate() {
            assert_eq!(*d, Duration::from_millis(i as u64));
        }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let ns: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(quantile(&ns, 0.5), 500.0);
        assert_eq!(quantile(&ns, 0.99), 990.0);
        assert_eq!(quantile(&ns, 0.999), 999.0);
        assert_eq!(quantile(&ns, 1.0), 1000.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn responses_are_complete_only_with_their_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(response_len(r).unwrap(), Some((r.len(), 200)));
        assert_eq!(response_len(&r[..r.len() - 1]).unwrap(), None);
        assert_eq!(response_len(b"HTTP/1.1 503 x\r\n").unwrap(), None);
        let no_body = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(response_len(no_body).unwrap(), Some((no_body.len(), 503)));
        assert!(response_len(b"nonsense\r\n\r\n").is_err());
        assert!(response_len(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn summaries_survive_their_json() {
        let s = Summary {
            requests: 10,
            errors: 1,
            rps: 10.0,
            p50: 1.5,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            max: 5.0,
        };
        assert_eq!(Summary::from_json(&s.to_json()).unwrap(), s);
    }
}
