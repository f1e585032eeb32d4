//! The HTTP connection manager: serving downstream connections (HTTP/1.x on the proxy's own
//! codec in [`crate::h1`], HTTP/2 on hyper), routing each request and forwarding it upstream.

mod attempt;
pub mod collector;
pub mod connection;
mod forward;
pub mod hash_policy;
mod headers;
mod local_reply;
mod mirror;
mod observe;
pub mod retry;
pub mod router;
pub mod routing;
mod timeouts;
mod timer;

pub use connection::{ConnContext, serve_connection};
pub use timeouts::grpc_timeout;
