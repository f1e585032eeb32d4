//! Span reporting, as Envoy's tracers do it: sampled spans are buffered per collector and sent
//! once five wait, or every five seconds (Zipkin v2 JSON, or OTLP over gRPC or HTTP).
//!
//! Reporting never delays a request: a request only appends its span to a buffer; a background
//! task encodes and sends. A collector that is down loses its spans (counted), and the buffer is
//! bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::span::{Local, Span};
use crate::config::listener::Collector;

/// Envoy's `min_flush_spans` (Zipkin and OpenTelemetry).
pub const MIN_FLUSH_SPANS: usize = 5;
/// Envoy's `flush_interval_ms`.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Envoy's report timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans waiting for a report beyond this are dropped, so a collector that cannot keep up never
/// grows the proxy's memory.
pub const MAX_PENDING: usize = 1000;

/// A tracer's counters, as Envoy names them under `tracing.zipkin.*` and
/// `tracing.opentelemetry.*`.
#[derive(Debug, Default)]
pub struct Stats {
    pub spans_sent: AtomicU64,
    pub timer_flushed: AtomicU64,
    pub reports_sent: AtomicU64,
    /// The collector answered with a failure (HTTP status other than 2xx, gRPC status not OK).
    pub reports_dropped: AtomicU64,
    /// No answer: connection refused, reset or timed out.
    pub reports_failed: AtomicU64,
    pub reports_skipped_no_cluster: AtomicU64,
    /// Not in Envoy: spans over [`MAX_PENDING`].
    pub spans_dropped: AtomicU64,
}

impl Stats {
    fn text(&self, prefix: &str) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("reports_dropped", get(&self.reports_dropped)),
            ("reports_failed", get(&self.reports_failed)),
            ("reports_sent", get(&self.reports_sent)),
            (
                "reports_skipped_no_cluster",
                get(&self.reports_skipped_no_cluster),
            ),
            ("spans_dropped", get(&self.spans_dropped)),
            ("spans_sent", get(&self.spans_sent)),
            ("timer_flushed", get(&self.timer_flushed)),
        ]
        .iter()
        .map(|(k, v)| format!("tracing.{prefix}.{k}: {v}\n"))
        .collect()
    }
}

/// The spans waiting for their report, by collector.
pub struct Reporter {
    local: Local,
    pending: Mutex<Vec<(Arc<Collector>, Vec<Span>)>>,
    wake: tokio::sync::Notify,
    pub zipkin: Stats,
    pub opentelemetry: Stats,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("local", &self.local)
            .field("zipkin", &self.zipkin)
            .field("opentelemetry", &self.opentelemetry)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub fn new(local: Local) -> Reporter {
        Reporter {
            local,
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            zipkin: Stats::default(),
            opentelemetry: Stats::default(),
        }
    }

    /// The counters of `collector`'s tracer.
    pub fn stats(&self, collector: &Collector) -> &Stats {
        match collector {
            Collector::Zipkin(_) => &self.zipkin,
            Collector::OpenTelemetry(_) => &self.opentelemetry,
        }
    }

    /// Queues a finished span for `collector`; wakes the sender once a batch is full.
    pub fn submit(&self, collector: &Arc<Collector>, span: Span) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.iter().map(|(_, s)| s.len()).sum::<usize>() >= MAX_PENDING {
            self.stats(collector)
                .spans_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let batch = match pending.iter().position(|(c, _)| c == collector) {
            Some(i) => &mut pending[i].1,
            None => {
                pending.push((collector.clone(), Vec::new()));
                &mut pending.last_mut().expect("just pushed").1
            }
        };
        batch.push(span);
        if batch.len() >= MIN_FLUSH_SPANS {
            self.wake.notify_one();
        }
    }

    /// The batches of at least `min` spans, taken out of the buffer.
    fn take(&self, min: usize) -> Vec<(Arc<Collector>, Vec<Span>)> {
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
        self.opentelemetry.text("opentelemetry") + &self.zipkin.text("zipkin")
    }
}

/// A report's body for `collector`: Zipkin JSON, or an OTLP export (framed for gRPC).
pub fn encode(collector: &Collector, spans: &[Span], local: &Local) -> Vec<u8> {
    match collector {
        Collector::Zipkin(_) => super::zipkin::encode(spans, local),
        Collector::OpenTelemetry(o) => {
            let message = super::otlp::encode(spans, local, &o.service_name);
            match o.http_path {
                Some(_) => message,
                None => super::otlp::grpc_frame(&message),
            }
        }
    }
}

/// What a report needs from the data plane: an endpoint of the collector cluster, and the
/// request.
pub trait Post: Sync + Send + 'static {
    /// Sends `body` to `collector`.
    fn post(
        &self,
        collector: &Collector,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Sent> + Send;
}

/// How a report went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Accepted,
    /// The collector answered with a failure (its status, for the log).
    Refused(String),
    /// No answer.
    Failed(String),
    /// The collector cluster is not in the configuration.
    NoCluster,
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
            let stats = reporter.stats(&collector);
            if timer {
                stats.timer_flushed.fetch_add(1, Ordering::Relaxed);
            }
            let body = encode(&collector, &spans, &reporter.local);
            let count = spans.len() as u64;
            let (reporter, sender) = (reporter.clone(), sender.clone());
            tokio::spawn(async move {
                let stats = reporter.stats(&collector);
                let cluster = collector.cluster();
                match tokio::time::timeout(REQUEST_TIMEOUT, sender.post(&collector, body)).await {
                    Ok(Sent::Accepted) => {
                        stats.reports_sent.fetch_add(1, Ordering::Relaxed);
                        stats.spans_sent.fetch_add(count, Ordering::Relaxed);
                    }
                    Ok(Sent::Refused(why)) => {
                        tracing::debug!(cluster, why, "span report refused");
                        stats.reports_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Sent::NoCluster) => {
                        tracing::debug!(cluster, "span collector cluster unknown");
                        stats
                            .reports_skipped_no_cluster
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Sent::Failed(e)) => {
                        tracing::debug!(cluster, error = %e, "span report failed");
                        stats.reports_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        tracing::debug!(cluster, "span report timed out");
                        stats.reports_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
