//! One downstream HTTP connection: HTTP/1.x on the proxy's own codec ([`super::h1`]), HTTP/2
//! (h2c) on hyper. Its context is what every request on it reads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::router;
use super::timer::ConnTimer;
use crate::config::listener::HttpManager;
use crate::h1::body::Body;
use crate::h1::client::Affinity;
use crate::h1::idle::{Activity, MAX_REQUEST_HEADERS, idle_for};
use crate::h1::server::Handler;
use crate::shared::Shared;

/// Everything a request needs from its connection.
pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub manager: Arc<HttpManager>,
    pub original_dst: SocketAddr,
    pub downstream: SocketAddr,
    /// Accepted by `virtualInbound`: this proxy reports as the destination.
    pub inbound: bool,
    /// The HTTP/1.1 upstream connections this connection's requests reuse.
    pub affinity: Arc<Affinity>,
    /// The connection's one request timer, where its requests run one at a time (HTTP/1.x);
    /// `None` gives each request a timer of its own (HTTP/2).
    pub timer: Option<ConnTimer>,
}

impl ConnContext {
    pub fn new(
        shared: Arc<Shared>,
        manager: Arc<HttpManager>,
        original_dst: SocketAddr,
        downstream: SocketAddr,
        inbound: bool,
    ) -> ConnContext {
        ConnContext {
            shared,
            manager,
            original_dst,
            downstream,
            inbound,
            affinity: Arc::default(),
            timer: None,
        }
    }
}

/// The HTTP/1 codec serves its requests through the router, and asks the lifecycle whether to
/// close for a drain.
impl Handler for Arc<ConnContext> {
    fn handle(&self, req: Box<Request<Body>>) -> impl Future<Output = Box<Response<Body>>> + Send {
        router::handle(self.clone(), req)
    }

    fn drain_close(&self) -> bool {
        self.shared.lifecycle.drain_close()
    }

    fn drain_started(&self) -> impl Future<Output = ()> + Send {
        self.shared.lifecycle.drain_started()
    }
}

/// Serves one downstream HTTP connection: HTTP/2 with prior knowledge through hyper, HTTP/1.x
/// through the proxy's own codec. `h2` says which when the listener's inspector already knows;
/// otherwise the first bytes are looked at (without consuming them).
pub async fn serve_connection(ctx: ConnContext, stream: TcpStream, h2: Option<bool>) {
    let h2 = match h2 {
        Some(known) => known,
        None => {
            let idle = ctx.manager.idle_timeout.unwrap_or(Duration::MAX);
            match tokio::time::timeout(idle, opens_with_h2_preface(&stream)).await {
                Ok(h2) => h2,
                Err(_) => return,
            }
        }
    };
    serve_stream(ctx, stream, h2).await
}

/// Serves a connection on any stream (plain TCP, TLS): HTTP/2 when `h2` says so (the preface or
/// ALPN), else HTTP/1.x.
pub async fn serve_stream<S>(ctx: ConnContext, stream: S, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        serve_hyper(ctx, stream).await;
    } else {
        let idle = ctx.manager.idle_timeout;
        let ctx = ConnContext {
            timer: Some(ConnTimer::new()),
            ..ctx
        };
        crate::h1::server::serve(Arc::new(ctx), stream, idle).await;
    }
}

/// Whether the client's first bytes are the HTTP/2 connection preface. Clients send it whole,
/// so waiting for the rest of a partial match is rare and short.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    for _ in 0..100 {
        match stream.peek(&mut buf).await {
            Ok(n) if n > 0 && PREFACE.starts_with(&buf[..n]) => {
                if n == PREFACE.len() {
                    return true;
                }
            }
            _ => return false,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Serves a connection with hyper (HTTP/2 and HTTP/1.1). A drain sends GOAWAY, and requests
/// in flight finish.
async fn serve_hyper<S>(ctx: ConnContext, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = ctx.manager.idle_timeout;
    let ctx = Arc::new(ctx);
    let activity = Arc::new(Activity::default());
    let started = Instant::now();
    let service = {
        let (ctx, activity) = (ctx.clone(), activity.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ctx, activity) = (ctx.clone(), activity.clone());
            async move {
                let _active = activity.start(started);
                let resp = router::handle(ctx, Box::new(req.map(Body::Streamed))).await;
                Ok::<_, std::convert::Infallible>(*resp)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Envoy's default limits: 60 KiB of request headers and 100 headers, else 431.
    builder.http1().max_buf_size(MAX_REQUEST_HEADERS);
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEADERS as u32);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle_wait = async {
        match idle {
            Some(idle) => idle_for(&activity, started, idle).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = idle_wait => {
            // Envoy closes an idle connection (HTTP/2: GOAWAY first); a request that races in
            // is still answered.
            tracing::debug!(?idle, "downstream connection idle; closing");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = ctx.shared.lifecycle.drain_started() => {
            tracing::debug!("draining: GOAWAY to the downstream connection");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
