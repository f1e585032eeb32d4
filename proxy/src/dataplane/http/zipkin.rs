//! Span reporting to a Zipkin collector, as Envoy's `envoy.tracers.zipkin` does it: one span per
//! sampled request on each sidecar (CLIENT on the outbound side, SERVER on the inbound side,
//! each with its own id, Istio's `shared_span_context: false`), buffered and POSTed as a Zipkin
//! v2 JSON array to the collector cluster once five spans wait, or every five seconds.
//!
//! Reporting never delays a request: a request only appends its span to a buffer; a background
//! task sends. A collector that is down loses its spans (counted), and the buffer is bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::config::listener::ZipkinCollector;

/// Envoy's `tracing.zipkin.min_flush_spans`.
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `tracing.zipkin.flush_interval_ms`.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's `tracing.zipkin.request_timeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting for a report beyond this are dropped, so a collector that cannot keep up never
/// grows the proxy's memory.
pub const MAX_PENDING: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The outbound side: this proxy calls a service.
    Client,
    /// The inbound side: this proxy receives for its workload.
    Server,
}

/// Zipkin's `localEndpoint`: the reporting sidecar, named as Istio names it
/// (`<app>.<namespace>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub service_name: String,
    pub ip: Option<IpAddr>,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    /// The other side of the hop: the upstream host (client) or the downstream peer (server).
    pub remote: Option<SocketAddr>,
    pub tags: Vec<(&'static str, String)>,
}

fn endpoint(ip: IpAddr) -> (&'static str, String) {
    match ip {
        IpAddr::V4(v4) => ("ipv4", v4.to_string()),
        IpAddr::V6(v6) => ("ipv6", v6.to_string()),
    }
}

impl Span {
    /// The span in Zipkin's v2 JSON model; times in microseconds since the epoch.
    pub fn to_json(&self, local: &Local) -> Value {
        let start = self
            .start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut span = Map::new();
        span.insert("traceId".into(), json!(self.trace_id));
        span.insert("id".into(), json!(self.id));
        if let Some(p) = &self.parent_id {
            span.insert("parentId".into(), json!(p));
        }
        span.insert("name".into(), json!(self.name));
        span.insert(
            "kind".into(),
            json!(match self.kind {
                Kind::Client => "CLIENT",
                Kind::Server => "SERVER",
            }),
        );
        span.insert("timestamp".into(), json!(start));
        // Zipkin wants at least a microsecond.
        span.insert(
            "duration".into(),
            json!((self.duration.as_micros() as u64).max(1)),
        );
        let mut le = Map::new();
        le.insert("serviceName".into(), json!(local.service_name));
        if let Some(ip) = local.ip {
            let (k, v) = endpoint(ip);
            le.insert(k.into(), json!(v));
        }
        span.insert("localEndpoint".into(), Value::Object(le));
        if let Some(r) = self.remote {
            let (k, v) = endpoint(r.ip());
            span.insert("remoteEndpoint".into(), json!({ k: v, "port": r.port() }));
        }
        let tags: Map<String, Value> = self
            .tags
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        span.insert("tags".into(), Value::Object(tags));
        Value::Object(span)
    }
}

/// Envoy's `tracing.zipkin.*` counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub spans_sent: AtomicU64,
    pub timer_flushed: AtomicU64,
    pub reports_sent: AtomicU64,
    /// The collector answered with a status other than 2xx.
    pub reports_dropped: AtomicU64,
    /// No answer: connection refused, reset or timed out.
    pub reports_failed: AtomicU64,
    pub reports_skipped_no_cluster: AtomicU64,
    /// Not in Envoy: spans over [`MAX_PENDING`].
    pub spans_dropped: AtomicU64,
}

/// The spans waiting for their report, by collector.
pub struct Reporter {
    local: Local,
    pending: Mutex<Vec<(Arc<ZipkinCollector>, Vec<Value>)>>,
    wake: tokio::sync::Notify,
    pub stats: Stats,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("local", &self.local)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(local: Local) -> Reporter {
        Reporter {
            local,
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            stats: Stats::default(),
        }
    }

    /// Queues a finished span for `collector`; wakes the sender once a batch is full.
    pub fn submit(&self, collector: &Arc<ZipkinCollector>, span: &Span) {
        let json = span.to_json(&self.local);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.iter().map(|(_, s)| s.len()).sum::<usize>() >= MAX_PENDING {
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let batch = match pending.iter().position(|(c, _)| c == collector) {
            Some(i) => &mut pending[i].1,
            None => {
                pending.push((collector.clone(), Vec::new()));
                &mut pending.last_mut().expect("just pushed").1
            }
        };
        batch.push(json);
        if batch.len() >= MIN_FLUSH_SPANS {
            self.wake.notify_one();
        }
    }

    /// The batches of at least `min` spans, taken out of the buffer.
    fn take(&self, min: usize) -> Vec<(Arc<ZipkinCollector>, Vec<Value>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (collector, spans) in pending.iter_mut() {
            if !spans.is_empty() && spans.len() >= min {
                out.push((collector.clone(), std::mem::take(spans)));
            }
        }
        pending.retain(|(_, s)| !s.is_empty());
        out
    }

    /// `/stats` lines, as Envoy names them.
    pub fn stats_text(&self) -> String {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "tracing.zipkin.reports_dropped: {}\ntracing.zipkin.reports_failed: {}\ntracing.zipkin.reports_sent: {}\ntracing.zipkin.reports_skipped_no_cluster: {}\ntracing.zipkin.spans_dropped: {}\ntracing.zipkin.spans_sent: {}\ntracing.zipkin.timer_flushed: {}\n",
            get(&s.reports_dropped),
            get(&s.reports_failed),
            get(&s.reports_sent),
            get(&s.reports_skipped_no_cluster),
            get(&s.spans_dropped),
            get(&s.spans_sent),
            get(&s.timer_flushed),
        )
    }
}

/// What a report needs from the data plane: the collector cluster's endpoint, and a POST.
pub trait Post: Sync + Send + 'static {
    /// POSTs `body` to `collector` and returns the answer's status; `Ok(None)`: no cluster.
    fn post(
        &self,
        collector: &ZipkinCollector,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Option<u16>, String>> + Send;
}

/// Sends the batches: a full one at once, any waiting one every [`FLUSH_INTERVAL`].
pub async fn run(reporter: Arc<Reporter>, sender: Arc<impl Post>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timer = tokio::select! {
            _ = reporter.wake.notified() => false,
            _ = tick.tick() => true,
        };
        let batches = reporter.take(if timer { 1 } else { MIN_FLUSH_SPANS });
        for (collector, spans) in batches {
            if timer {
                reporter.stats.timer_flushed.fetch_add(1, Ordering::Relaxed);
            }
            let (reporter, sender) = (reporter.clone(), sender.clone());
            tokio::spawn(async move {
                let count = spans.len() as u64;
                let body = serde_json::to_vec(&Value::Array(spans)).unwrap_or_default();
                let stats = &reporter.stats;
                match tokio::time::timeout(REQUEST_TIMEOUT, sender.post(&collector, body)).await {
                    Ok(Ok(Some(status))) if (200..300).contains(&status) => {
                        stats.reports_sent.fetch_add(1, Ordering::Relaxed);
                        stats.spans_sent.fetch_add(count, Ordering::Relaxed);
                    }
                    Ok(Ok(Some(status))) => {
                        tracing::debug!(cluster = %collector.cluster, status, "span report refused");
                        stats.reports_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(None)) => {
                        tracing::debug!(cluster = %collector.cluster, "span collector cluster unknown");
                        stats
                            .reports_skipped_no_cluster
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(cluster = %collector.cluster, error = %e, "span report failed");
                        stats.reports_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tracing::debug!(cluster = %collector.cluster, "span report timed out");
                        stats.reports_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
