use super::*;
use crate::config::listener::{Collector, ZipkinCollector};
use crate::telemetry::span::sample as span;
use serde_json::Value;

fn collector(cluster: &str) -> Arc<Collector> {
    Arc::new(Collector::Zipkin(ZipkinCollector {
        cluster: cluster.into(),
        endpoint: "/api/v2/spans".into(),
        hostname: cluster.into(),
        trace_id_128bit: true,
    }))
}

/// Records what would be POSTed; answers with a fixed status, or fails.
struct Recorder {
    bodies: Mutex<Vec<(String, Vec<Value>)>>,
    answer: Sent,
}

impl Post for Recorder {
    async fn post(&self, collector: &Collector, body: Vec<u8>) -> Sent {
        let spans: Vec<Value> = serde_json::from_slice(&body).unwrap();
        self.bodies
            .lock()
            .unwrap()
            .push((collector.cluster().to_string(), spans));
        self.answer.clone()
    }
}

fn recorder(answer: Sent) -> Arc<Recorder> {
    Arc::new(Recorder {
        bodies: Mutex::new(Vec::new()),
        answer,
    })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn five_spans_go_at_once_fewer_on_the_timer() {
    let reporter = Arc::new(Reporter::new(Local::default()));
    let rec = recorder(Sent::Accepted);
    tokio::spawn(run(reporter.clone(), rec.clone()));
    settle().await;
    let (a, b) = (collector("zipkin"), collector("outbound|9411||zipkin"));
    for i in 0..4 {
        reporter.submit(&a, span(i));
    }
    reporter.submit(&b, span(100));
    settle().await;
    assert!(rec.bodies.lock().unwrap().is_empty(), "4 spans wait");
    reporter.submit(&a, span(4));
    settle().await;
    {
        let bodies = rec.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "zipkin");
        assert_eq!(bodies[0].1.len(), 5);
    }
    // The other collector's lone span goes with the next tick.
    tokio::time::advance(FLUSH_INTERVAL).await;
    settle().await;
    let bodies = rec.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[1].0, "outbound|9411||zipkin");
    assert_eq!(bodies[1].1[0]["id"], "0000000000000064");
    let s = &reporter.zipkin;
    assert_eq!(s.spans_sent.load(Ordering::Relaxed), 6);
    assert_eq!(s.reports_sent.load(Ordering::Relaxed), 2);
    assert_eq!(s.timer_flushed.load(Ordering::Relaxed), 1);
    assert!(
        reporter
            .stats_text()
            .contains("tracing.zipkin.spans_sent: 6\n")
    );
}

#[tokio::test(start_paused = true)]
async fn failed_and_refused_reports_are_counted() {
    for (answer, field) in [
        (
            Sent::Failed("connection refused".to_string()),
            "reports_failed",
        ),
        (Sent::Refused("HTTP 500".to_string()), "reports_dropped"),
        (Sent::NoCluster, "reports_skipped_no_cluster"),
    ] {
        let reporter = Arc::new(Reporter::new(Local::default()));
        let rec = recorder(answer);
        tokio::spawn(run(reporter.clone(), rec.clone()));
        settle().await;
        for i in 0..5 {
            reporter.submit(&collector("zipkin"), span(i));
        }
        settle().await;
        let text = reporter.stats_text();
        assert!(
            text.contains(&format!("tracing.zipkin.{field}: 1\n")),
            "{text}"
        );
        assert!(text.contains("tracing.zipkin.spans_sent: 0\n"), "{text}");
    }
}

#[test]
fn the_buffer_is_bounded() {
    let reporter = Reporter::new(Local::default());
    // No sender runs: everything beyond the bound is dropped and counted.
    for i in 0..(MAX_PENDING as u64 + 10) {
        reporter.submit(&collector("zipkin"), span(i));
    }
    assert_eq!(reporter.zipkin.spans_dropped.load(Ordering::Relaxed), 10);
    assert_eq!(reporter.take(1)[0].1.len(), MAX_PENDING);
}
