//! One app instance on a Redis backplane, as every test here runs it; clients, waits and the
//! server itself are ws-test's.

use test_support::RedisServer;
use ws_backplane_redis::{RedisBackplane, SettingsBuilder};
use ws_context::{ConnectionHub, Endpoint};
use ws_test::{TestServer, WsClient};

/// A redis-server and two instances on it, both with `settings`; `None` (the test passes)
/// when redis-server is not installed.
pub(crate) async fn two_instances(
    settings: SettingsBuilder,
) -> Option<(RedisServer, Instance, Instance)> {
    let redis = RedisServer::start()?;
    let a = Instance::start_with(&redis.url(), settings.clone()).await;
    let b = Instance::start_with(&redis.url(), settings).await;
    Some((redis, a, b))
}

/// One app instance: a hub on a Redis backplane, serving `/ws/{room}` on 127.0.0.1:0.
/// Every text a member sends goes to its room.
pub(crate) struct Instance {
    pub(crate) hub: ConnectionHub,
    pub(crate) backplane: RedisBackplane,
    pub(crate) server: TestServer,
}

impl Instance {
    pub(crate) async fn start_with(redis_url: &str, settings: SettingsBuilder) -> Instance {
        Instance::start_custom(redis_url, settings, |endpoint| endpoint).await
    }

    /// With the endpoint's options changed by `options`.
    pub(crate) async fn start_custom(
        redis_url: &str,
        settings: SettingsBuilder,
        options: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Instance {
        let backplane = RedisBackplane::with_settings(settings.build().expect("valid settings"));
        let hub = ConnectionHub::with_backplane(backplane.clone());
        backplane.connect(redis_url).await.unwrap();
        let router = test_support::room_chat(&hub, options);
        let server = TestServer::router_with_hub(router, hub.clone()).await;
        Instance {
            hub,
            backplane,
            server,
        }
    }

    /// A client in `room` (`room?query` passes a query too).
    pub(crate) async fn connect(&self, room: &str) -> WsClient {
        self.server.connect(&format!("/ws/{room}")).await
    }
}
