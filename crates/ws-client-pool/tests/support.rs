//! One-service pools as the tests here make them; the service they talk to is
//! test-support's recording `Service`.

use std::{net::SocketAddr, time::Duration};

use http::HeaderMap;
use ws_client_pool::{ServiceOptionsBuilder, ServiceState, WsClientPool};

/// Bounded wait for anything a test awaits.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A pool with one service, `svc`, as `options` say.
pub(crate) async fn pool_of(options: ServiceOptionsBuilder) -> WsClientPool {
    let options = options.build().expect("valid service options");
    let pool = WsClientPool::new();
    pool.add_ws_service_with("svc", options).await.unwrap();
    pool
}

/// A pool with one service, `svc` at `url`, without extra headers.
pub(crate) async fn pool_with(url: &str, reconnect: bool, retry: Duration) -> WsClientPool {
    let pool = WsClientPool::new();
    pool.add_ws_service("svc", url, HeaderMap::new(), reconnect, retry)
        .await
        .unwrap();
    pool
}

/// A loopback address with nothing listening: its port was free a moment ago.
pub(crate) fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], test_support::free_port()))
}

pub(crate) fn state(pool: &WsClientPool, name: &str) -> ServiceState {
    pool.status(name).expect("service registered").state
}
