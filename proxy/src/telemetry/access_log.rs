//! Access logs as Envoy writes them: a format string of command operators (`%START_TIME%`,
//! `%REQ(X-REQUEST-ID)%`, `%RESPONSE_FLAGS%`, …) rendered once per request, as text or JSON,
//! appended to a file (`/dev/stdout` for `kubectl logs`). Parsing and rendering are pure; the
//! writer is the only I/O.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccessLogError {
    #[error("unknown command operator %{0}%")]
    UnknownOperator(String),
    #[error("unterminated command operator at byte {0}")]
    Unterminated(usize),
    #[error("%{0}% needs an argument in parentheses")]
    MissingArgument(String),
}

/// Envoy's default text format (used when a file logger gives none).
pub const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    StartTime,
    Req(Vec<String>),
    Resp(Vec<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RequestedServerName,
    RouteName,
}

impl Op {
    fn numeric(&self) -> bool {
        matches!(
            self,
            Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Vec<Piece>);

/// How a logger writes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text(Format),
    /// Keys in order, each with its format.
    Json(Vec<(String, Format)>),
}

fn operator(name: &str, arg: Option<&str>) -> Result<Op, AccessLogError> {
    let headers = |arg: Option<&str>| -> Result<Vec<String>, AccessLogError> {
        let a = arg.ok_or_else(|| AccessLogError::MissingArgument(name.into()))?;
        Ok(a.split('?').map(|h| h.to_ascii_lowercase()).collect())
    };
    Ok(match name {
        "START_TIME" => Op::StartTime,
        "REQ" => Op::Req(headers(arg)?),
        "RESP" => Op::Resp(headers(arg)?),
        "PROTOCOL" => Op::Protocol,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Op::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_PEER_ADDRESS" => Op::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "REQUESTED_SERVER_NAME" => Op::RequestedServerName,
        "ROUTE_NAME" => Op::RouteName,
        other => return Err(AccessLogError::UnknownOperator(other.into())),
    })
}

/// Parses an Envoy format string. `%%` is a literal `%`; `%OP(ARG):N%` truncates to N bytes.
pub fn parse(s: &str) -> Result<Format, AccessLogError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    let mut at = 0;
    while let Some(i) = rest.find('%') {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('%') {
            text.push('%');
            at += i + 2;
            rest = stripped;
            continue;
        }
        // The operator runs to the next '%' that is not inside parentheses.
        let mut depth = 0;
        let end = after
            .char_indices()
            .find(|(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' => {
                    depth -= 1;
                    false
                }
                '%' => depth == 0,
                _ => false,
            })
            .map(|(j, _)| j)
            .ok_or(AccessLogError::Unterminated(at + i))?;
        let body = &after[..end];
        let (body, max) = match body.rsplit_once(':') {
            Some((b, n))
                if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && !b.ends_with('(') =>
            {
                (b, n.parse().ok())
            }
            _ => (body, None),
        };
        let (name, arg) = match body.split_once('(') {
            Some((n, a)) => (n, Some(a.strip_suffix(')').unwrap_or(a))),
            None => (body, None),
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Op(operator(name, arg)?, max));
        at += i + 1 + end + 1;
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(Format(pieces))
}

/// What one request leaves for the log.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub protocol: &'a str,
    pub request_headers: &'a http::HeaderMap,
    pub response_headers: &'a http::HeaderMap,
    pub response_code: u16,
    /// `-` when none.
    pub response_flags: &'a str,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_host: Option<&'a str>,
    pub upstream_cluster: Option<&'a str>,
    pub downstream_local: SocketAddr,
    pub downstream_remote: SocketAddr,
    pub route_name: &'a str,
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// One operator's value; `None` is Envoy's `-` (or JSON null).
fn value(op: &Op, e: &Entry) -> Option<String> {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    match op {
        Op::StartTime => Some(rfc3339_millis(e.start)),
        Op::Req(names) => names.iter().find_map(|n| match n.as_str() {
            ":method" => nonempty(e.method),
            ":path" => nonempty(e.path),
            ":authority" => nonempty(e.authority),
            other => header(e.request_headers, other).map(str::to_string),
        }),
        Op::Resp(names) => names
            .iter()
            .find_map(|n| header(e.response_headers, n).map(str::to_string)),
        Op::Protocol => nonempty(e.protocol),
        Op::ResponseCode => Some(e.response_code.to_string()),
        Op::ResponseFlags => Some(e.response_flags.to_string()),
        Op::ResponseCodeDetails => nonempty(e.response_code_details),
        Op::ConnectionTerminationDetails | Op::UpstreamTransportFailureReason => None,
        Op::BytesReceived => Some(e.bytes_received.to_string()),
        Op::BytesSent => Some(e.bytes_sent.to_string()),
        Op::Duration => Some(e.duration_ms.to_string()),
        Op::UpstreamHost => e.upstream_host.map(str::to_string),
        Op::UpstreamCluster => e.upstream_cluster.map(str::to_string),
        Op::UpstreamLocalAddress => None,
        Op::DownstreamLocalAddress => Some(e.downstream_local.to_string()),
        Op::DownstreamRemoteAddress => Some(e.downstream_remote.to_string()),
        Op::DownstreamRemoteAddressWithoutPort => Some(e.downstream_remote.ip().to_string()),
        Op::RequestedServerName => None,
        Op::RouteName => nonempty(e.route_name),
    }
}

fn truncated(mut v: String, max: Option<usize>) -> String {
    if let Some(max) = max
        && v.len() > max
    {
        let mut cut = max;
        while !v.is_char_boundary(cut) {
            cut -= 1;
        }
        v.truncate(cut);
    }
    v
}

impl Format {
    fn render(&self, e: &Entry) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op, max) => match value(op, e) {
                    Some(v) => out.push_str(&truncated(v, *max)),
                    None => out.push('-'),
                },
            }
        }
        out
    }

    /// A JSON value: a lone numeric operator is a number, a lone missing value is null.
    fn json(&self, e: &Entry) -> serde_json::Value {
        if let [Piece::Op(op, max)] = self.0.as_slice() {
            return match value(op, e) {
                None => serde_json::Value::Null,
                Some(v) if op.numeric() => v
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .unwrap_or(serde_json::Value::String(v)),
                Some(v) => serde_json::Value::String(truncated(v, *max)),
            };
        }
        serde_json::Value::String(self.render(e))
    }
}

impl LogFormat {
    /// One log line, newline-terminated.
    pub fn render(&self, e: &Entry) -> String {
        match self {
            LogFormat::Text(f) => {
                let mut s = f.render(e);
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                s
            }
            LogFormat::Json(fields) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|(k, f)| (k.clone(), f.json(e))).collect();
                format!("{}\n", serde_json::Value::Object(map))
            }
        }
    }
}

/// `2026-11-23T02:30:00.123Z`, as Envoy's default START_TIME.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// One configured logger: where and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub path: String,
    pub format: LogFormat,
}

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Open log files, shared by every logger that names the same path.
fn sink(path: &str) -> Option<Sink> {
    static SINKS: OnceLock<Mutex<HashMap<String, Sink>>> = OnceLock::new();
    let mut sinks = SINKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = sinks.get(path) {
        return Some(s.clone());
    }
    let w: Box<dyn Write + Send> = match path {
        "/dev/stdout" => Box::new(std::io::stdout()),
        "/dev/stderr" => Box::new(std::io::stderr()),
        p => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                // Said once: the path then writes nowhere until the proxy restarts.
                tracing::warn!(path = p, error = %e, "cannot open the access log; not logging to it");
                Box::new(std::io::sink())
            }
        },
    };
    let s: Sink = Arc::new(Mutex::new(w));
    sinks.insert(path.to_string(), s.clone());
    Some(s)
}

impl AccessLog {
    /// Writes the entry (one `write` per line, so lines from several proxies appending to one
    /// file stay whole). `/dev/null` costs nothing.
    pub fn write(&self, e: &Entry) {
        if self.path == "/dev/null" {
            return;
        }
        let line = self.format.render(e);
        if let Some(s) = sink(&self.path) {
            let mut w = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_all(line.as_bytes());
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Istio's TEXT format (pilot/pkg/model/telemetry_logging.go).
    const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

    fn entry<'a>(req: &'a http::HeaderMap, resp: &'a http::HeaderMap) -> Entry<'a> {
        Entry {
            start: UNIX_EPOCH + Duration::from_millis(1_795_401_000_123),
            method: "GET",
            path: "/bill?id=7",
            authority: "bill-service:8080",
            protocol: "HTTP/1.1",
            request_headers: req,
            response_headers: resp,
            response_code: 200,
            response_flags: "-",
            response_code_details: "via_upstream",
            bytes_received: 0,
            bytes_sent: 42,
            duration_ms: 3,
            upstream_host: Some("10.30.0.11:8080"),
            upstream_cluster: Some("outbound|8080|v1|bill-service.default.svc.cluster.local"),
            downstream_local: "10.96.0.10:8080".parse().unwrap(),
            downstream_remote: "10.30.0.10:40112".parse().unwrap(),
            route_name: "default",
        }
    }

    #[test]
    fn istio_text_format() {
        let mut req = http::HeaderMap::new();
        req.insert("user-agent", "curl/7.88.1".parse().unwrap());
        req.insert(
            "x-request-id",
            "6b1f0c2e-1d2a-4c1e-9a7b-0c1d2e3f4a5b".parse().unwrap(),
        );
        let mut resp = http::HeaderMap::new();
        resp.insert("x-envoy-upstream-service-time", "2".parse().unwrap());
        let line = LogFormat::Text(parse(ISTIO).unwrap()).render(&entry(&req, &resp));
        assert_eq!(
            line,
            "[2026-11-23T02:30:00.123Z] \"GET /bill?id=7 HTTP/1.1\" 200 - via_upstream - \"-\" 0 42 3 2 \"-\" \"curl/7.88.1\" \"6b1f0c2e-1d2a-4c1e-9a7b-0c1d2e3f4a5b\" \"bill-service:8080\" \"10.30.0.11:8080\" outbound|8080|v1|bill-service.default.svc.cluster.local - 10.96.0.10:8080 10.30.0.10:40112 - default\n"
        );
    }

    #[test]
    fn json_format_types_values() {
        let req = http::HeaderMap::new();
        let resp = http::HeaderMap::new();
        let fields = vec![
            (
                "response_code".to_string(),
                parse("%RESPONSE_CODE%").unwrap(),
            ),
            (
                "response_flags".to_string(),
                parse("%RESPONSE_FLAGS%").unwrap(),
            ),
            (
                "user_agent".to_string(),
                parse("%REQ(USER-AGENT)%").unwrap(),
            ),
            (
                "path".to_string(),
                parse("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):4%").unwrap(),
            ),
            (
                "mixed".to_string(),
                parse("%REQ(:METHOD)% %DURATION%ms").unwrap(),
            ),
        ];
        let line = LogFormat::Json(fields).render(&entry(&req, &resp));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["user_agent"], serde_json::Value::Null);
        assert_eq!(v["path"], "/bil");
        assert_eq!(v["mixed"], "GET 3ms");
    }

    #[test]
    fn parse_errors_name_the_operator() {
        assert_eq!(
            parse("%START_TIME% %NOT_AN_OP%"),
            Err(AccessLogError::UnknownOperator("NOT_AN_OP".into()))
        );
        assert_eq!(parse("abc %REQ(X"), Err(AccessLogError::Unterminated(4)));
        assert_eq!(
            parse("%REQ%"),
            Err(AccessLogError::MissingArgument("REQ".into()))
        );
        assert!(parse(ENVOY_DEFAULT).is_ok());
        let f = parse("100%% %RESPONSE_CODE%").unwrap();
        let (req, resp) = (http::HeaderMap::new(), http::HeaderMap::new());
        assert_eq!(LogFormat::Text(f).render(&entry(&req, &resp)), "100% 200\n");
    }

    #[test]
    fn start_time_is_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + Duration::from_millis(951_782_400_007)),
            "2000-02-29T00:00:00.007Z"
        );
    }
}
