//! TODO

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http::header::{self};
use http_body_util::Full;

use crate::upstream::{Pick, endpoint};

use crate::h1::body::Body;
use crate::http::headers::GRPC_STATUS;

/// Reports spans through the proxy's own clients, to an endpoint of the collector cluster.
pub struct SpanPoster(pub Arc<crate::shared::Shared>);

impl crate::telemetry::report::Post for SpanPoster {
    async fn post(
        &self,
        collector: &crate::config::listener::Collector,
        body: Vec<u8>,
    ) -> crate::telemetry::report::Sent {
        use crate::config::listener::Collector;
        use crate::telemetry::report::Sent;
        use http_body_util::BodyExt;
        let snap = self.0.snapshot();
        let Some(cluster) = snap.clusters.get(collector.cluster()) else {
            return Sent::NoCluster;
        };
        let state = self.0.upstreams.clusters.get(cluster);
        let pick = Pick::random(fastrand::u64(..), &state.hash_table);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let Ok(dest) = endpoint(&snap, cluster, unspecified, &pick) else {
            return Sent::Failed("no healthy endpoint".into());
        };
        let addr = match dest.resolve().await {
            Ok(a) => a,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        // (path, Host, content type, HTTP/2): Zipkin JSON and OTLP/HTTP over HTTP/1.1, OTLP
        // gRPC over h2c.
        let (path, host, content_type, grpc) = match collector {
            Collector::Zipkin(z) => (z.endpoint.as_str(), &z.hostname, "application/json", false),
            Collector::OpenTelemetry(o) => match &o.http_path {
                Some(p) => (p.as_str(), &o.authority, "application/x-protobuf", false),
                None => (
                    crate::telemetry::otlp::EXPORT_PATH,
                    &o.authority,
                    "application/grpc",
                    true,
                ),
            },
        };
        let client =
            self.0
                .upstreams
                .clients
                .client(cluster.bind_source, cluster.connect_timeout, grpc);
        let mut req = Request::post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, content_type);
        req = if grpc {
            req.header(header::TE, "trailers")
        } else {
            req.header(header::HOST, host.as_str())
        };
        let Ok(req) = req.body(Body::Local(Full::new(Bytes::from(body)))) else {
            return Sent::Failed("bad collector address".into());
        };
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let status = resp.status();
        let header_status = resp
            .headers()
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        // Read the answer to its end (the connection is reused; gRPC's status is in trailers).
        let trailers = resp
            .into_body()
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned());
        if !status.is_success() {
            return Sent::Refused(format!("HTTP {status}"));
        }
        if grpc {
            let code = header_status.or_else(|| {
                trailers
                    .as_ref()?
                    .get(GRPC_STATUS)?
                    .to_str()
                    .ok()
                    .map(String::from)
            });
            if code.as_deref() != Some("0") {
                return Sent::Refused(format!(
                    "grpc-status {}",
                    code.as_deref().unwrap_or("missing")
                ));
            }
        }
        Sent::Accepted
    }
}
