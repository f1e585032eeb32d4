//! TODO

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::upstream::NoUpstream;

use crate::h1::body::Body;
use crate::http::headers::GRPC_STATUS;
use crate::telemetry::flags::ResponseFlag;

pub(crate) fn full(status: StatusCode, body: impl Into<Bytes>) -> Box<Response<Body>> {
    let mut r = Box::new(Response::new(Body::Local(Full::new(body.into()))));
    *r.status_mut() = status;
    r
}

pub(crate) fn local_reply(
    status: StatusCode,
    flag: ResponseFlag,
    body: &str,
) -> Box<Response<Body>> {
    let mut r = full(status, body.to_string());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(flag);
    r
}

pub(crate) fn no_upstream(e: NoUpstream) -> Box<Response<Body>> {
    match e {
        NoUpstream::UnknownCluster(_) => {
            local_reply(StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::NC, "")
        }
        NoUpstream::NoHealthyEndpoint(_) => local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::UH,
            "no healthy upstream",
        ),
    }
}

/// A gRPC abort as Envoy's fault filter sends it: HTTP 200, trailers-only, with the status.
pub(crate) fn grpc_abort(code: u32) -> Box<Response<Body>> {
    let mut r = full(StatusCode::OK, String::new());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    h.insert(
        HeaderName::from_static("grpc-message"),
        HeaderValue::from_static("fault filter abort"),
    );
    r.extensions_mut().insert(ResponseFlag::FI);
    r
}
