//! HTTP/1.x on the wire, generic over the stream it runs on (plain TCP or TLS): the head parser,
//! framing, the downstream server loop and the upstream client connection. It imports nothing
//! from the layers above it: the request handler is passed in.

pub mod body;
pub mod client;
pub mod idle;
pub mod parse;
pub mod server;
pub mod wire;
