//! TODO

use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

/// A timer kept for a connection's whole life and shared by its requests in turn. It is
/// re-armed only when a request's deadline comes before the one it is set for, or once it
/// has fired; a request then checks its own deadline against the clock. With a route timeout
/// that is the same for every request, that is one timer registration per timeout period
/// instead of a registration and a removal per request.
#[derive(Debug)]
pub struct ConnTimer(Mutex<Pin<Box<tokio::time::Sleep>>>);

impl ConnTimer {
    pub fn new() -> ConnTimer {
        // Unarmed until the first deadline: far off, and never polled before re-arming.
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        ConnTimer(Mutex::new(Box::pin(tokio::time::sleep_until(far))))
    }

    /// Whether `at` has come; otherwise the task is woken no later than `at`.
    fn poll_until(&self, at: Instant, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut timer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = tokio::time::Instant::from_std(at);
        if timer.deadline() > at || timer.is_elapsed() {
            timer.as_mut().reset(at);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired: at this request's deadline, or at an earlier request's.
            if tokio::time::Instant::now() >= at {
                return Poll::Ready(());
            }
            timer.as_mut().reset(at);
        }
    }
}

/// `fut`'s output, or `None` when `at` comes first. Unlike `tokio::time::timeout_at`, the
/// future is polled where it lies instead of being moved into the timeout's own; the timer is
/// the connection's when it has one, else one made for this wait.
pub(crate) async fn until<F: Future>(
    timer: Option<&ConnTimer>,
    at: Instant,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    let mut own: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let fired = match timer {
            Some(shared) => shared.poll_until(at, cx),
            None => own
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())))
                .as_mut()
                .poll(cx),
        };
        fired.map(|()| None)
    })
    .await
}
