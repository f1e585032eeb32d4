//! hyper's pooled upstream clients: HTTP/2 upstreams (one multiplexed connection serves many
//! requests), mirrored requests and span reports. HTTP/1.1 requests go over their downstream
//! connection's own upstream connections instead (`http::h1::client`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::h1::body::Body;

type UpstreamClient = Client<HttpConnector, Body>;

/// (source address, connect timeout, HTTP/2).
type PoolKey = (Option<IpAddr>, Duration, bool);

/// Upstream clients, pooled per (source address, connect timeout, HTTP/2).
#[derive(Default)]
pub struct Clients {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl Clients {
    pub fn client(
        &self,
        bind: Option<IpAddr>,
        connect_timeout: Duration,
        http2: bool,
    ) -> UpstreamClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((bind, connect_timeout, http2))
            .or_insert_with(|| {
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(connect_timeout));
                c.set_nodelay(true);
                c.set_local_address(bind);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    // Plaintext HTTP/2 is h2c with prior knowledge, as Envoy speaks it.
                    .http2_only(http2)
                    .build(c)
            })
            .clone()
    }
}
