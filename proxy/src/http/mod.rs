//! The HTTP connection manager: serving downstream connections (HTTP/1.x on the proxy's own
//! codec in [`h1`], HTTP/2 on hyper), routing each request and forwarding it upstream.

pub mod body;
pub mod h1;
pub mod hash_policy;
pub mod manager;
pub mod retry;
pub mod routing;
