//! The body type of proxied messages: a streamed body passed through, or a local reply's bytes.
//! An enum rather than a boxed trait object: no allocation per message.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum Body {
    /// A body received from the other side, streamed through.
    Streamed(Incoming),
    /// A body the proxy wrote itself, or one that arrived whole.
    Local(Full<Bytes>),
    /// An HTTP/1.1 upstream response body, read from its connection as it is polled.
    Upstream(Box<super::client::Streaming>),
    /// An HTTP/1.x request body the downstream connection's task is still reading.
    Inbound(super::server::Inbound),
}

impl Body {
    /// No body.
    pub fn empty() -> Body {
        Body::Local(Full::new(Bytes::new()))
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Body {
        Body::Streamed(b)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Streamed(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Body::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            Body::Upstream(b) => Pin::new(b.as_mut()).poll_frame(cx),
            Body::Inbound(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Streamed(b) => b.is_end_stream(),
            Body::Local(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Inbound(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Streamed(b) => b.size_hint(),
            Body::Local(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Inbound(b) => b.size_hint(),
        }
    }
}
