//! TODO

use http::header::{self, HeaderName, HeaderValue};

use crate::config::route::{HeaderAction, HeaderOps};

/// Headers that belong to one connection and are never forwarded.
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Header names the proxy reads or writes on every request, made once at compile time.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub(crate) const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub(crate) const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub(crate) const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
pub(crate) const X_ENVOY_ATTEMPT_COUNT: HeaderName =
    HeaderName::from_static("x-envoy-attempt-count");
pub(crate) const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Removes the hop-by-hop headers: one pass over the names finds which are there (usually
/// none on a request), and only those are looked up to be removed.
pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut found = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found |= 1 << i;
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// A new request id, as a header value.
pub(crate) fn request_id_value() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes()).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
pub(crate) fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// A random (version 4) UUID in its 36-character text form, made on the stack.
pub(crate) fn request_id_bytes() -> [u8; 36] {
    // Each byte's two hex digits from one table lookup, written where the text form puts them
    // (the dashes stay where they were laid).
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut b: [u8; 16] = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    for (x, at) in b.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&PAIRS[usize::from(*x)]);
    }
    out
}

/// A number as a header value; the one-digit ones (most upstream service times) are static,
/// without an allocation.
pub(crate) fn number_value(n: u64) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(d) => HeaderValue::from_static(d),
        None => HeaderValue::from(n),
    }
}

/// Writes `adds` into `headers` as their actions say.
pub(crate) fn add_headers(headers: &mut http::HeaderMap, adds: &[(String, String, HeaderAction)]) {
    for (k, v, action) in adds {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            continue;
        };
        match action {
            HeaderAction::Append => {
                headers.append(name, value);
            }
            HeaderAction::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            HeaderAction::Overwrite => {
                headers.insert(name, value);
            }
            HeaderAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// Applies the route's, then the virtual host's, then the route configuration's request header
/// operations.
pub(crate) fn request_headers(headers: &mut http::HeaderMap, ops: [&HeaderOps; 3]) {
    for o in ops {
        for h in &o.request_remove {
            headers.remove(h.as_str());
        }
        add_headers(headers, &o.request_add);
    }
}

pub(crate) fn response_headers(headers: &mut http::HeaderMap, ops: [&HeaderOps; 3]) {
    for o in ops {
        for h in &o.response_remove {
            headers.remove(h.as_str());
        }
        add_headers(headers, &o.response_add);
    }
}

pub(crate) fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(
            crate::http::timeouts::grpc_timeout("100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            crate::http::timeouts::grpc_timeout("5S"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            crate::http::timeouts::grpc_timeout("2H"),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(crate::http::timeouts::grpc_timeout("x"), None);
        assert_eq!(crate::http::timeouts::grpc_timeout(""), None);
    }

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(
            crate::http::mirror::shadow_host("ratings:9080"),
            "ratings-shadow:9080"
        );
        assert_eq!(
            crate::http::mirror::shadow_host("ratings"),
            "ratings-shadow"
        );
        assert_eq!(
            crate::http::mirror::shadow_host("[fd00::1]:80"),
            "[fd00::1]-shadow:80"
        );
    }

    #[test]
    fn numbers_become_header_values() {
        for n in [0, 7, 9, 10, 1234, u64::MAX] {
            assert_eq!(super::number_value(n), n.to_string().as_str());
        }
    }

    #[test]
    fn request_ids_are_v4_uuids() {
        let id = super::request_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(id, super::request_id());
    }
}
