//! Envoy's response flags (`%RESPONSE_FLAGS%`, the `response_flags` metric label) and their
//! response code details.

use http::Response;

/// Envoy's response flags, as access logs and metrics report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No route.
    NR,
    /// No such cluster.
    NC,
    /// No healthy upstream.
    UH,
    /// Upstream connection failure.
    UF,
    /// Upstream request timeout.
    UT,
    /// Aborted by fault injection.
    FI,
    /// Upstream overflow (circuit breaking).
    UO,
    /// Stream idle timeout.
    SI,
}

impl ResponseFlag {
    /// `%RESPONSE_CODE_DETAILS%` of the local reply that carries this flag.
    pub fn details(self) -> &'static str {
        match self {
            ResponseFlag::NR => "route_not_found",
            ResponseFlag::NC => "cluster_not_found",
            ResponseFlag::UH => "no_healthy_upstream",
            ResponseFlag::UF => "upstream_reset_before_response_started{connection_failure}",
            ResponseFlag::UT => "response_timeout",
            ResponseFlag::FI => "fault_filter_abort",
            ResponseFlag::UO => "upstream_reset_before_response_started{overflow}",
            ResponseFlag::SI => "stream_idle_timeout",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NR => "NR",
            ResponseFlag::NC => "NC",
            ResponseFlag::UH => "UH",
            ResponseFlag::UF => "UF",
            ResponseFlag::UT => "UT",
            ResponseFlag::FI => "FI",
            ResponseFlag::UO => "UO",
            ResponseFlag::SI => "SI",
        }
    }
}

/// Marks a response whose request was delayed by fault injection (flag DI).
#[derive(Debug, Clone, Copy)]
pub struct DelayInjected;

/// Envoy's response flags of a response, comma-separated (`DI,FI`), or `-`.
pub fn response_flags<B>(resp: &Response<B>) -> std::borrow::Cow<'static, str> {
    let delayed = resp.extensions().get::<DelayInjected>().is_some();
    match (delayed, resp.extensions().get::<ResponseFlag>()) {
        (false, None) => "-".into(),
        (true, None) => "DI".into(),
        (false, Some(f)) => f.as_str().into(),
        (true, Some(f)) => format!("DI,{}", f.as_str()).into(),
    }
}
