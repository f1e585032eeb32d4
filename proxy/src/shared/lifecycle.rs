//! The proxy's lifecycle as Envoy's: ready once the initial configuration is warmed, a health
//! check that can be failed by hand, and a drain (SIGTERM, `POST /drain_listeners`) during
//! which listeners stop accepting, open connections are asked to close (HTTP/1.1
//! `Connection: close`, HTTP/2 GOAWAY) and in-flight work may finish until the drain time ends.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{Notify, watch};

/// Envoy's `--drain-strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainStrategy {
    /// Each connection is asked to close with a probability that grows from 0 to 1 over the
    /// drain time (Envoy's default), spreading the reconnections.
    #[default]
    Gradual,
    /// Every connection is asked to close as soon as the drain starts.
    Immediate,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid value '{0}' for --drain-strategy: expected gradual or immediate")]
pub struct BadStrategy(String);

impl FromStr for DrainStrategy {
    type Err = BadStrategy;
    fn from_str(s: &str) -> Result<DrainStrategy, BadStrategy> {
        match s {
            "gradual" => Ok(DrainStrategy::Gradual),
            "immediate" => Ok(DrainStrategy::Immediate),
            other => Err(BadStrategy(other.into())),
        }
    }
}

/// Whether a connection should be closed now, by the drain's strategy: `elapsed` of
/// `drain_time` has passed, `roll` is uniform in `0..1` (Envoy's `drainClose`).
pub fn drain_close(
    strategy: DrainStrategy,
    elapsed: Duration,
    drain_time: Duration,
    roll: f64,
) -> bool {
    match strategy {
        DrainStrategy::Immediate => true,
        DrainStrategy::Gradual if drain_time.is_zero() || elapsed >= drain_time => true,
        DrainStrategy::Gradual => roll < elapsed.as_secs_f64() / drain_time.as_secs_f64(),
    }
}

/// Readiness, health and drain state, shared by the listeners, connections and admin ports.
pub struct Lifecycle {
    /// The initial configuration is in and warmed (listeners with their routes).
    warmed: watch::Sender<bool>,
    /// `POST /healthcheck/fail` (until `/healthcheck/ok`).
    failing: AtomicBool,
    /// When the drain started, if it has.
    drain: watch::Sender<Option<Instant>>,
    strategy: DrainStrategy,
    drain_time: Duration,
    /// Downstream connections open now.
    open: Arc<Open>,
}

#[derive(Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// An open downstream connection, counted until dropped.
pub struct ConnGuard(Arc<Open>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle::new(DrainStrategy::Gradual, Duration::from_secs(600))
    }
}

impl Lifecycle {
    /// Envoy's defaults are a gradual drain over 600 s; pilot-agent passes 45 s.
    pub fn new(strategy: DrainStrategy, drain_time: Duration) -> Lifecycle {
        Lifecycle {
            warmed: watch::channel(false).0,
            failing: AtomicBool::new(false),
            drain: watch::channel(None).0,
            strategy,
            drain_time,
            open: Arc::default(),
        }
    }

    pub fn drain_time(&self) -> Duration {
        self.drain_time
    }

    /// The initial configuration is warmed: readiness may turn 200.
    pub fn set_warmed(&self) {
        self.warmed.send_replace(true);
    }

    pub fn warmed(&self) -> watch::Receiver<bool> {
        self.warmed.subscribe()
    }

    /// Envoy's `/ready` and the status port's `/healthz/ready`: warmed, not failed by hand,
    /// not draining.
    pub fn is_ready(&self) -> bool {
        *self.warmed.borrow() && !self.is_failing() && !self.is_draining()
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// `/healthcheck/fail` (true) and `/healthcheck/ok` (false).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.drain.borrow().is_some()
    }

    /// Starts the drain (again: no change). True when this call started it.
    pub fn start_drain(&self) -> bool {
        let mut started = false;
        self.drain.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(Instant::now());
                started = true;
            }
            started
        });
        started
    }

    /// Resolves once the drain has started.
    pub async fn drain_started(&self) {
        let mut rx = self.drain.subscribe();
        let _ = rx.wait_for(|d| d.is_some()).await;
    }

    /// Whether the connection that is answering now should close after this response: while
    /// the health check is failed, or draining by the strategy.
    pub fn drain_close(&self) -> bool {
        if self.is_failing() {
            return true;
        }
        match *self.drain.borrow() {
            None => false,
            Some(at) => drain_close(
                self.strategy,
                at.elapsed(),
                self.drain_time,
                fastrand::f64(),
            ),
        }
    }

    /// Counts a downstream connection as open until the guard drops.
    pub fn open_connection(&self) -> ConnGuard {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.open.clone())
    }

    pub fn open_connections(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }

    /// Resolves when no downstream connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.open.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradual_drain_closes_more_connections_as_time_passes() {
        let total = Duration::from_secs(10);
        let closed = |elapsed: u64| {
            (0..1000)
                .filter(|i| {
                    drain_close(
                        DrainStrategy::Gradual,
                        Duration::from_secs(elapsed),
                        total,
                        f64::from(*i) / 1000.0,
                    )
                })
                .count()
        };
        assert_eq!(closed(0), 0);
        assert_eq!(closed(5), 500);
        assert_eq!(closed(10), 1000);
        assert!(drain_close(
            DrainStrategy::Immediate,
            Duration::ZERO,
            total,
            0.99
        ));
        assert_eq!(
            "fast".parse::<DrainStrategy>().unwrap_err().to_string(),
            "invalid value 'fast' for --drain-strategy: expected gradual or immediate"
        );
    }

    #[tokio::test]
    async fn readiness_follows_warming_failing_and_draining() {
        let l = Lifecycle::new(DrainStrategy::Immediate, Duration::from_secs(1));
        assert!(!l.is_ready());
        l.set_warmed();
        assert!(l.is_ready() && !l.drain_close());
        l.set_failing(true);
        assert!(!l.is_ready() && l.drain_close());
        l.set_failing(false);
        let conn = l.open_connection();
        assert!(l.start_drain() && !l.start_drain());
        assert!(!l.is_ready() && l.drain_close());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), l.all_closed())
                .await
                .is_err(),
            "a connection is open"
        );
        drop(conn);
        tokio::time::timeout(Duration::from_secs(5), l.all_closed())
            .await
            .expect("no connection is open");
    }
}
