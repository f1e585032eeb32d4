//! Retry decisions (pure): whether an attempt's outcome is retried under a route's policy, and
//! how long to back off before the next attempt.

use std::time::Duration;

use crate::config::route::{GRPC_RETRY_CODES, RetryPolicy};

/// How one upstream attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection to the endpoint.
    ConnectFailure,
    /// Connected, but reset or closed before a response.
    Reset,
    /// The per-try timeout expired.
    PerTryTimeout,
    /// A response: its status and, for gRPC, its `grpc-status` header.
    Response { status: u16, grpc: Option<u32> },
}

/// Whether `policy` retries `outcome` (Envoy's `retry_on` semantics).
pub fn retriable(policy: &RetryPolicy, outcome: Outcome) -> bool {
    let on = &policy.on;
    match outcome {
        Outcome::ConnectFailure => {
            on.connect_failure || on.server_error || on.reset || on.gateway_error
        }
        Outcome::Reset => on.reset || on.server_error,
        Outcome::PerTryTimeout => on.server_error || on.gateway_error || on.reset,
        Outcome::Response { status, grpc } => {
            (on.server_error && status >= 500)
                || (on.gateway_error && matches!(status, 502..=504))
                || (on.retriable_4xx && status == 409)
                || (on.status_codes && policy.retriable_status_codes.contains(&status))
                || grpc.is_some_and(|g| {
                    GRPC_RETRY_CODES
                        .iter()
                        .zip(on.grpc)
                        .any(|(code, enabled)| enabled && *code == g)
                })
        }
    }
}

/// The wait before retry number `retry` (1 for the first retry): full jitter over
/// `[0, min(max, base × (2^retry − 1))]`; `roll` is uniform in `[0, 1)`.
pub fn backoff(policy: &RetryPolicy, retry: u32, roll: f64) -> Duration {
    let (base, max) = policy.backoff;
    let factor = (1u64 << retry.min(16)).saturating_sub(1) as u32;
    let upper = base.saturating_mul(factor).min(max);
    upper.mul_f64(roll.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::RetryOn;

    fn policy(on: RetryOn) -> RetryPolicy {
        RetryPolicy {
            on,
            num_retries: 2,
            per_try_timeout: None,
            retriable_status_codes: vec![503],
            previous_hosts: true,
            host_selection_max_attempts: 5,
            backoff: (Duration::from_millis(25), Duration::from_millis(250)),
        }
    }

    #[test]
    fn conditions_as_envoy_reads_them() {
        let r = |status| Outcome::Response { status, grpc: None };
        let five = policy(RetryOn {
            server_error: true,
            ..RetryOn::default()
        });
        assert!(retriable(&five, r(500)) && retriable(&five, r(503)));
        assert!(retriable(&five, Outcome::Reset) && retriable(&five, Outcome::ConnectFailure));
        assert!(retriable(&five, Outcome::PerTryTimeout));
        assert!(!retriable(&five, r(404)) && !retriable(&five, r(200)));
        let gw = policy(RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        });
        assert!(retriable(&gw, r(502)) && !retriable(&gw, r(500)));
        // Istio's default: connect-failure, refused-stream, unavailable, cancelled,
        // retriable-status-codes (503).
        let istio = policy(RetryOn {
            connect_failure: true,
            refused_stream: true,
            status_codes: true,
            grpc: [true, false, false, false, true],
            ..RetryOn::default()
        });
        assert!(retriable(&istio, r(503)) && !retriable(&istio, r(500)));
        assert!(retriable(&istio, Outcome::ConnectFailure) && !retriable(&istio, Outcome::Reset));
        assert!(retriable(
            &istio,
            Outcome::Response {
                status: 200,
                grpc: Some(14)
            }
        ));
        assert!(!retriable(
            &istio,
            Outcome::Response {
                status: 200,
                grpc: Some(13)
            }
        ));
        let c409 = policy(RetryOn {
            retriable_4xx: true,
            ..RetryOn::default()
        });
        assert!(retriable(&c409, r(409)) && !retriable(&c409, r(404)));
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let p = policy(RetryOn::default());
        assert_eq!(backoff(&p, 1, 0.999_999).as_millis(), 24);
        assert_eq!(backoff(&p, 2, 0.999_999).as_millis(), 74);
        assert_eq!(
            backoff(&p, 5, 0.999_999).as_millis(),
            249,
            "capped at the maximum"
        );
        assert_eq!(backoff(&p, 3, 0.0), Duration::ZERO);
    }
}
