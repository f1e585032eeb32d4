//! Trace context for a forwarded request, as a tracing sidecar passes it on: Zipkin's B3
//! headers (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`), and W3C
//! `traceparent` when the request carries one. A request that arrives with a trace continues it
//! with a new span whose parent is the incoming span; one without starts a trace here (128-bit
//! trace id), sampled at the configured percentage. Pure: ids and the sampling draw are passed in.

/// This hop's span: its ids, its parent (the incoming span, if any) and the sampling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub sampled: bool,
    /// The request came with a W3C `traceparent`, which is passed on too.
    pub w3c: bool,
}

impl Hop {
    /// The headers to set on the upstream request.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-b3-traceid", self.trace_id.clone()),
            ("x-b3-spanid", self.span_id.clone()),
            (
                "x-b3-sampled",
                if self.sampled { "1" } else { "0" }.to_string(),
            ),
        ];
        if let Some(p) = &self.parent_id {
            headers.push(("x-b3-parentspanid", p.clone()));
        }
        if self.w3c {
            // The W3C trace continues with the same span; a 64-bit B3 trace id is left-padded.
            headers.push((
                "traceparent",
                format!(
                    "00-{:0>32}-{}-{}",
                    self.trace_id,
                    self.span_id,
                    if self.sampled { "01" } else { "00" }
                ),
            ));
        }
        headers
    }
}

fn hex_ok(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `00-<trace id>-<parent id>-<flags>` → (trace id, parent id, sampled).
fn traceparent(v: &str) -> Option<(String, String, bool)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if !hex_ok(version, 2)
        || version == "ff"
        || !hex_ok(trace, 32)
        || !hex_ok(parent, 16)
        || !hex_ok(flags, 2)
    {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        trace.to_ascii_lowercase(),
        parent.to_ascii_lowercase(),
        flags & 1 == 1,
    ))
}

fn sampled_value(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// This hop's span. `header` reads a request header (lower-case name); `sample` draws the
/// sampling decision for a new trace; `id` gives random 64-bit ids; a new trace gets a 128-bit
/// id when `long_ids`, else 64-bit.
pub fn next_hop(
    header: impl Fn(&str) -> Option<String>,
    sample: impl FnOnce() -> bool,
    mut id: impl FnMut() -> u64,
    long_ids: bool,
) -> Hop {
    let b3_trace = header("x-b3-traceid").filter(|t| hex_ok(t, 32) || hex_ok(t, 16));
    let w3c = header("traceparent").and_then(|v| traceparent(&v));
    let (trace_id, parent_id, sampled) = match (b3_trace, &w3c) {
        (Some(t), _) => {
            let sampled = header("x-b3-sampled")
                .and_then(|v| sampled_value(&v))
                .or_else(|| header("x-b3-flags").map(|f| f.trim() == "1"));
            (
                t.to_ascii_lowercase(),
                header("x-b3-spanid")
                    .filter(|s| hex_ok(s, 16))
                    .map(|s| s.to_ascii_lowercase()),
                sampled,
            )
        }
        (None, Some((t, p, s))) => (t.clone(), Some(p.clone()), Some(*s)),
        (None, None) if long_ids => (format!("{:016x}{:016x}", id(), id()), None, None),
        (None, None) => (format!("{:016x}", id()), None, None),
    };
    Hop {
        trace_id,
        parent_id,
        sampled: sampled.unwrap_or_else(sample),
        span_id: format!("{:016x}", id()),
        w3c: w3c.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(incoming: &[(&str, &str)], sample: bool) -> HashMap<&'static str, String> {
        let h: HashMap<String, String> = incoming
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut n = 0u64;
        next_hop(
            |name| h.get(name).cloned(),
            || sample,
            || {
                n += 1;
                0xa000 + n
            },
            true,
        )
        .headers()
        .into_iter()
        .collect()
    }

    #[test]
    fn a_new_trace_starts_at_the_edge() {
        let h = run(&[], true);
        assert_eq!(h["x-b3-traceid"], "000000000000a001000000000000a002");
        assert_eq!(h["x-b3-spanid"], "000000000000a003");
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-parentspanid"));
        assert!(!h.contains_key("traceparent"));
        assert_eq!(run(&[], false)["x-b3-sampled"], "0");
    }

    #[test]
    fn b3_continues_with_a_child_span() {
        let h = run(
            &[
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ],
            false,
        );
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-spanid"], "000000000000a001");
        // The upstream decision stands, whatever this proxy's sampling says.
        assert_eq!(h["x-b3-sampled"], "1");
    }

    #[test]
    fn w3c_traceparent_is_continued() {
        let h = run(
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
            false,
        );
        assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(h["x-b3-parentspanid"], "b7ad6b7169203331");
        assert_eq!(
            h["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-000000000000a001-01"
        );
        // Malformed ones start a new trace.
        let h = run(&[("traceparent", "00-zz-b7ad6b7169203331-01")], true);
        assert!(!h.contains_key("traceparent"));
        assert!(!h.contains_key("x-b3-parentspanid"));
    }

    #[test]
    fn a_new_trace_id_is_64_bit_unless_asked_for_128() {
        let hop = next_hop(|_| None, || true, || 0xabc, false);
        assert_eq!(hop.trace_id, "0000000000000abc");
        assert_eq!(hop.parent_id, None);
        let hop = next_hop(|_| None, || true, || 0xabc, true);
        assert_eq!(hop.trace_id.len(), 32);
    }
}
