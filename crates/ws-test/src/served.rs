//! [`Served`]: what every server under test answers about itself, whether it runs in the
//! test's process ([`TestServer`](crate::TestServer)) or as a child process
//! ([`AppProcess`](crate::AppProcess)).

use std::{future::Future, net::SocketAddr};

use crate::client::{ClientBuilder, WsClient};

/// A server under test on a loopback port: its addresses, and what runs it (`K`:
/// [`InProcess`](crate::InProcess) for a [`TestServer`](crate::TestServer),
/// [`ChildProcess`](crate::ChildProcess) for an [`AppProcess`](crate::AppProcess)). Use it
/// through those two names; the methods here are common to both.
#[derive(Debug)]
pub struct Served<K> {
    pub(crate) addr: SocketAddr,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) kind: K,
}

impl<K> Served<K> {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port><path>`; `path` starts with `/` and may carry a query.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:<port>/metrics` of an app (a program: if it logged its metrics
    /// address); `None` for a plain router.
    pub fn metrics_url(&self) -> Option<String> {
        self.metrics_addr
            .map(|addr| format!("http://{addr}/metrics"))
    }

    /// A client builder for `path` on this server.
    pub fn client(&self, path: &str) -> ClientBuilder {
        ClientBuilder::new(self.ws_url(path))
    }

    /// Connects a client to `path` with the builder's defaults.
    ///
    /// # Panics
    ///
    /// When the connection or the handshake fails.
    #[track_caller]
    pub fn connect(&self, path: &str) -> impl Future<Output = WsClient> + use<K> {
        self.client(path).connect()
    }
}
