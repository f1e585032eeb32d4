//! Istio's standard request metrics, as the `istio.stats` filter reports them:
//! `istio_requests_total` and the `istio_request_duration_milliseconds`, `istio_request_bytes`
//! and `istio_response_bytes` histograms, labelled with
//! the reporter, the source and destination workloads and the response. Rendered for
//! `/stats/prometheus`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Envoy's default histogram buckets, which Istio's metrics use: milliseconds for durations,
/// bytes for sizes.
pub const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// One request as the metrics count it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observation {
    pub duration_ms: f64,
    /// Request and response body sizes (Content-Length or a known body length).
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS_MS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    /// Counts `v` in the first bucket that holds it (the counts are made cumulative when
    /// written, so a request touches one bucket).
    fn observe(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        if let Some(i) = BUCKETS_MS.iter().position(|le| v <= *le) {
            self.buckets[i] += 1;
        }
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.buckets[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// One side of a request, as the labels name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
}

impl Workload {
    pub fn unknown() -> Workload {
        let u = || "unknown".to_string();
        Workload {
            name: u(),
            namespace: u(),
            app: u(),
            version: u(),
            cluster: u(),
        }
    }

    /// From EDS metadata `istio.workload`: `name;namespace;app;version;cluster`.
    pub fn from_istio(s: &str) -> Workload {
        let mut parts = s.split(';').map(|p| {
            if p.is_empty() {
                "unknown".to_string()
            } else {
                p.to_string()
            }
        });
        let mut next = || parts.next().unwrap_or_else(|| "unknown".into());
        Workload {
            name: next(),
            namespace: next(),
            app: next(),
            version: next(),
            cluster: next(),
        }
    }

    /// A pod's workload name: its Deployment's (`name-<hash>-<id>` loses both suffixes), else
    /// the pod name.
    pub fn name_of_pod(pod: &str) -> String {
        let parts: Vec<&str> = pod.split('-').collect();
        let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        match parts.as_slice() {
            [head @ .., hash, id]
                if !head.is_empty()
                    && id.len() == 5
                    && alnum(id)
                    && (6..=10).contains(&hash.len())
                    && alnum(hash) =>
            {
                head.join("-")
            }
            _ => pod.to_string(),
        }
    }
}

/// The labels of one request series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestLabels {
    /// `source` (outbound, the client's sidecar) or `destination` (inbound).
    pub reporter: &'static str,
    pub source: Workload,
    pub destination: Workload,
    /// The service host, its name and namespace.
    pub service: (String, String, String),
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: String,
    pub grpc_status: String,
}

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Reads one counter of a TCP series.
type TcpField = fn(&TcpSeries) -> u64;

#[derive(Debug, Default, Clone)]
struct TcpSeries {
    opened: u64,
    closed: u64,
    /// Bytes to the client (Istio's "sent": the response direction).
    sent: u64,
    /// Bytes from the client.
    received: u64,
}

/// Series by a hash of what tells them apart; the labels are built on a series' first request.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<std::collections::HashMap<u64, (RequestLabels, Series), SeriesKeys>>,
    tcp: Mutex<std::collections::HashMap<u64, (RequestLabels, TcpSeries), SeriesKeys>>,
}

/// The Prometheus label text of a series (TCP series have no response code).
fn label_text(l: &RequestLabels, tcp: bool) -> String {
    let (src, dst) = (&l.source, &l.destination);
    let mut pairs = vec![
        ("reporter", l.reporter.to_string()),
        ("source_workload", src.name.clone()),
        ("source_canonical_service", src.app.clone()),
        ("source_canonical_revision", src.version.clone()),
        ("source_workload_namespace", src.namespace.clone()),
        ("source_principal", "unknown".into()),
        ("source_app", src.app.clone()),
        ("source_version", src.version.clone()),
        ("source_cluster", src.cluster.clone()),
        ("destination_workload", dst.name.clone()),
        ("destination_workload_namespace", dst.namespace.clone()),
        ("destination_principal", "unknown".into()),
        ("destination_app", dst.app.clone()),
        ("destination_version", dst.version.clone()),
        ("destination_service", l.service.0.clone()),
        ("destination_canonical_service", dst.app.clone()),
        ("destination_canonical_revision", dst.version.clone()),
        ("destination_service_name", l.service.1.clone()),
        ("destination_service_namespace", l.service.2.clone()),
        ("destination_cluster", dst.cluster.clone()),
        ("request_protocol", l.protocol.to_string()),
    ];
    if !tcp {
        pairs.push(("response_code", l.response_code.to_string()));
        pairs.push(("grpc_response_status", l.grpc_status.clone()));
    }
    pairs.push(("response_flags", l.response_flags.clone()));
    pairs.push(("connection_security_policy", "none".into()));
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Series keys are already hashes of their labels: the map uses them as they are.
type SeriesKeys = std::hash::BuildHasherDefault<KeyIsHash>;

#[derive(Default)]
pub struct KeyIsHash(u64);

impl std::hash::Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Metrics {
    pub fn record(&self, key: u64, labels: impl FnOnce() -> RequestLabels, o: Observation) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let (_, s) = m
            .entry(key)
            .or_insert_with(|| (labels(), Series::default()));
        s.count += 1;
        s.duration.observe(o.duration_ms);
        s.request_bytes.observe(o.request_bytes as f64);
        s.response_bytes.observe(o.response_bytes as f64);
    }

    /// A TCP connection opened (counted once its upstream is connected).
    pub fn tcp_opened(&self, key: u64, labels: impl FnOnce() -> RequestLabels) {
        let mut m = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        let (_, s) = m
            .entry(key)
            .or_insert_with(|| (labels(), TcpSeries::default()));
        s.opened += 1;
    }

    /// A TCP connection closed after moving these bytes.
    pub fn tcp_closed(&self, key: u64, sent: u64, received: u64) {
        let mut m = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = m.get_mut(&key) {
            s.closed += 1;
            s.sent += sent;
            s.received += received;
        }
    }

    fn tcp_prometheus(&self) -> String {
        let m = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_empty() {
            return String::new();
        }
        let m: BTreeMap<&RequestLabels, &TcpSeries> = m.values().map(|(l, s)| (l, s)).collect();
        let mut out = String::new();
        let metrics: [(&str, TcpField); 4] = [
            ("istio_tcp_connections_opened_total", |s| s.opened),
            ("istio_tcp_connections_closed_total", |s| s.closed),
            ("istio_tcp_sent_bytes_total", |s| s.sent),
            ("istio_tcp_received_bytes_total", |s| s.received),
        ];
        for (name, value) in metrics {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (l, s) in &m {
                let _ = writeln!(out, "{name}{{{}}} {}", label_text(l, true), value(s));
            }
        }
        out
    }

    /// The Prometheus text of every series.
    pub fn prometheus(&self) -> String {
        let tcp = self.tcp_prometheus();
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_empty() {
            return tcp;
        }
        // Sorted by labels, so that scrapes are stable.
        let m: BTreeMap<&RequestLabels, &Series> = m.values().map(|(l, s)| (l, s)).collect();
        let mut total = String::from("# TYPE istio_requests_total counter\n");
        let names = [
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ];
        let mut hists: Vec<String> = names
            .iter()
            .map(|n| format!("# TYPE {n} histogram\n"))
            .collect();
        for (l, s) in m.iter() {
            let labels = label_text(l, false);
            let _ = writeln!(total, "istio_requests_total{{{labels}}} {}", s.count);
            for (i, h) in [&s.duration, &s.request_bytes, &s.response_bytes]
                .into_iter()
                .enumerate()
            {
                h.write(&mut hists[i], names[i], &labels);
            }
        }
        total + &hists.concat() + &tcp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_and_metadata() {
        assert_eq!(
            Workload::name_of_pod("reviews-v1-5d8b7c9f4-abcde"),
            "reviews-v1"
        );
        assert_eq!(Workload::name_of_pod("bill-service-v1"), "bill-service-v1");
        let w = Workload::from_istio("bill-service-v2;default;bill-service;v2;Kubernetes");
        assert_eq!(
            (w.name.as_str(), w.version.as_str(), w.cluster.as_str()),
            ("bill-service-v2", "v2", "Kubernetes")
        );
        assert_eq!(Workload::from_istio(";;;;").app, "unknown");
    }

    #[test]
    fn series_render_as_prometheus_with_istio_names() {
        let m = Metrics::default();
        let labels = RequestLabels {
            reporter: "source",
            source: Workload::from_istio("client;default;client;v1;Kubernetes"),
            destination: Workload::from_istio("bill;default;bill;v2;Kubernetes"),
            service: (
                "bill.default.svc.cluster.local".into(),
                "bill".into(),
                "default".into(),
            ),
            protocol: "http",
            response_code: 200,
            response_flags: "-".into(),
            grpc_status: String::new(),
        };
        let o = |duration_ms, response_bytes| Observation {
            duration_ms,
            request_bytes: 0,
            response_bytes,
        };
        m.record(1, || labels.clone(), o(3.0, 20));
        m.record(1, || labels, o(700.0, 2000));
        let text = m.prometheus();
        assert!(text.contains("# TYPE istio_requests_total counter"));
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(
            line.contains("reporter=\"source\",source_workload=\"client\""),
            "{line}"
        );
        assert!(
            line.contains("destination_service=\"bill.default.svc.cluster.local\""),
            "{line}"
        );
        assert!(line.ends_with("} 2"), "{line}");
        assert!(text.contains(",le=\"5\"} 1\n"), "one request within 5 ms");
        assert!(text.contains(",le=\"1000\"} 2\n"));
        assert!(
            text.contains("istio_request_duration_milliseconds_sum{") && text.contains("} 703\n")
        );
        let bytes = |name: &str, le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!("{name}_bucket{{"))
                        && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
        };
        assert_eq!(bytes("istio_response_bytes", "25").as_deref(), Some("1"));
        assert_eq!(bytes("istio_response_bytes", "2500").as_deref(), Some("2"));
        assert_eq!(bytes("istio_request_bytes", "0.5").as_deref(), Some("2"));
        assert!(text.contains("# TYPE istio_response_bytes histogram"));
    }
}
