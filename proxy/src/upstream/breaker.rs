//! Circuit breaking per cluster, as Envoy's thresholds: concurrent requests (`max_requests`),
//! connections in use (`max_connections`; an HTTP/1.1 request holds one while it waits for its
//! response), requests waiting for one (`max_pending_requests`), and concurrent retries
//! (`max_retries`). Overflow is answered 503 with response flag UO.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::config::cluster::Limits;

/// One cluster's breaker.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    /// Connections in use; at `max_connections`, requests wait for `freed`.
    connections: AtomicU32,
    freed: Notify,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    /// Envoy's `upstream_rq_pending_overflow`.
    pub pending_overflow: AtomicU64,
    /// Requests refused by `max_requests`.
    pub requests_overflow: AtomicU64,
    /// Envoy's `upstream_rq_retry_overflow`.
    pub retry_overflow: AtomicU64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Requests,
    Pending,
}

/// Held while a request is admitted (and holds a connection).
#[derive(Debug)]
pub struct Admitted {
    breaker: Arc<Breaker>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let b = &self.breaker;
        b.requests.fetch_sub(1, Ordering::AcqRel);
        b.connections.fetch_sub(1, Ordering::AcqRel);
        // A waiter is woken only when there is one; a wake-up that finds no waiter yet is kept
        // by Notify for the next one, so none is lost.
        if b.pending.load(Ordering::Acquire) > 0 {
            b.freed.notify_one();
        }
    }
}

/// Held while a retry is in flight.
#[derive(Debug)]
pub struct Retrying(Arc<Breaker>);

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    pub fn new(limits: Limits) -> Breaker {
        Breaker {
            limits,
            connections: AtomicU32::new(0),
            freed: Notify::new(),
            pending: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            pending_overflow: AtomicU64::new(0),
            requests_overflow: AtomicU64::new(0),
            retry_overflow: AtomicU64::new(0),
        }
    }

    /// Admits a request: under `max_requests`, with a connection now or after waiting among at
    /// most `max_pending_requests` others.
    pub async fn admit(self: &Arc<Self>) -> Result<Admitted, Overflow> {
        if self.requests.fetch_add(1, Ordering::AcqRel) >= self.limits.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            self.requests_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Requests);
        }
        if !self.take_connection() {
            if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limits.max_pending_requests {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.requests.fetch_sub(1, Ordering::AcqRel);
                self.pending_overflow.fetch_add(1, Ordering::Relaxed);
                return Err(Overflow::Pending);
            }
            // Leaves the pending count however the wait ends (a cancelled request included),
            // passing on a wake-up it may have taken.
            struct Waiting<'a>(&'a Breaker);
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    if self.0.pending.fetch_sub(1, Ordering::AcqRel) > 1 {
                        self.0.freed.notify_one();
                    }
                }
            }
            let _waiting = Waiting(self);
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if self.take_connection() {
                    break;
                }
                freed.await;
            }
        }
        Ok(Admitted {
            breaker: self.clone(),
        })
    }

    /// Takes a connection if fewer than `max_connections` are in use: one atomic operation, no
    /// lock.
    fn take_connection(&self) -> bool {
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_connections).then_some(n + 1)
            })
            .is_ok()
    }

    /// How many retries may be in flight: `max_retries`, or with a retry budget its share of
    /// the requests active and pending now, but at least its minimum.
    fn retry_limit(&self) -> u32 {
        match self.limits.retry_budget {
            None => self.limits.max_retries,
            Some(b) => {
                let load = u64::from(self.requests.load(Ordering::Acquire))
                    + u64::from(self.pending.load(Ordering::Acquire));
                let share = (load * u64::from(b.budget_per_mille) / 1000) as u32;
                share.max(b.min_retry_concurrency)
            }
        }
    }

    /// A retry, if fewer than the limit are in flight.
    pub fn retry(self: &Arc<Self>) -> Option<Retrying> {
        if self.retries.fetch_add(1, Ordering::AcqRel) >= self.retry_limit() {
            self.retries.fetch_sub(1, Ordering::AcqRel);
            self.retry_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Retrying(self.clone()))
    }
}

/// One cluster's overflow counters, as Envoy names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStats {
    pub cluster: String,
    /// `upstream_rq_pending_overflow`: refused by `max_pending_requests` or `max_requests`.
    pub pending_overflow: u64,
    /// `upstream_rq_retry_overflow`: retries refused by `max_retries`.
    pub retry_overflow: u64,
}

impl Breaker {
    /// The breaker's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Its overflow counters, for `cluster`.
    pub fn stats(&self, cluster: &str) -> BreakerStats {
        BreakerStats {
            cluster: cluster.to_string(),
            pending_overflow: self.pending_overflow.load(Ordering::Relaxed)
                + self.requests_overflow.load(Ordering::Relaxed),
            retry_overflow: self.retry_overflow.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(c: u32, p: u32, r: u32, retries: u32) -> Limits {
        Limits {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
            max_retries: retries,
            retry_budget: None,
        }
    }

    #[tokio::test]
    async fn connections_pending_and_requests_overflow() {
        let b = Arc::new(Breaker::new(limits(1, 1, 10, 3)));
        let first = b.admit().await.unwrap();
        // The second waits for the connection; a third finds the pending queue full.
        let b2 = b.clone();
        let second = tokio::spawn(async move { b2.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(b.admit().await.unwrap_err(), Overflow::Pending);
        assert_eq!(b.pending_overflow.load(Ordering::Relaxed), 1);
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));

        let b = Arc::new(Breaker::new(limits(100, 100, 1, 3)));
        let _one = b.admit().await.unwrap();
        assert_eq!(b.admit().await.unwrap_err(), Overflow::Requests);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let b = Arc::new(Breaker::new(limits(1, 1, 10, 3)));
        let first = b.admit().await.unwrap();
        let b2 = b.clone();
        let waiting = tokio::spawn(async move { b2.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(b.pending.load(Ordering::Acquire), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(
            b.pending.load(Ordering::Acquire),
            0,
            "the cancelled wait left"
        );
        // The queue has room again, and the next waiter gets the connection once it is freed.
        let b3 = b.clone();
        let next = tokio::spawn(async move { b3.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(next.await.unwrap(), Ok(()));
        assert_eq!(b.connections.load(Ordering::Acquire), 0);
    }

    #[test]
    fn retries_are_bounded_and_released() {
        let b = Arc::new(Breaker::new(limits(1, 1, 1, 1)));
        let r = b.retry().expect("first retry");
        assert!(b.retry().is_none(), "max_retries 1");
        drop(r);
        assert!(b.retry().is_some());
    }

    #[tokio::test]
    async fn a_retry_budget_scales_with_the_requests_in_flight() {
        let mut l = limits(1000, 1000, 1000, 1);
        l.retry_budget = Some(crate::config::cluster::RetryBudget {
            budget_per_mille: 200,
            min_retry_concurrency: 2,
        });
        let b = Arc::new(Breaker::new(l));
        // Idle: the minimum concurrency (not max_retries, which the budget replaces).
        let first: Vec<_> = (0..3).filter_map(|_| b.retry()).collect();
        assert_eq!(first.len(), 2);
        drop(first);
        // 20 requests in flight: 20% of them, 4.
        let mut admitted = Vec::new();
        for _ in 0..20 {
            admitted.push(b.admit().await.unwrap());
        }
        let busy: Vec<_> = (0..10).filter_map(|_| b.retry()).collect();
        assert_eq!(busy.len(), 4);
        assert_eq!(b.retry_overflow.load(Ordering::Relaxed), 1 + 6);
        drop(busy);
        drop(admitted);
        let idle: Vec<_> = (0..10).filter_map(|_| b.retry()).collect();
        assert_eq!(idle.len(), 2, "back to the minimum");
    }
}
