//! A connection's requests in flight, and its idle timeout (Envoy's `idle_timeout`: no request
//! in flight for that long closes the connection).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Envoy's `max_request_headers_kb` default (60 KiB).
pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;

/// Requests in flight on a downstream connection, and when the last one ended (for the
/// connection's idle timeout).
#[derive(Default)]
pub struct Activity {
    active: AtomicUsize,
    /// Milliseconds since the connection started.
    last: AtomicU64,
}

/// A request in flight; its end is noted when it is dropped.
pub struct Active<'a>(&'a Activity, Instant);

impl Activity {
    /// A request starts on a connection that started at `started`.
    pub fn start(&self, started: Instant) -> Active<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        Active(self, started)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0
            .last
            .store(self.1.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has had no request in flight for `idle`.
pub async fn idle_for(activity: &Activity, started: Instant, idle: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.last.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline && activity.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep_until(
            deadline
                .max(Instant::now() + Duration::from_millis(10))
                .into(),
        )
        .await;
    }
}
