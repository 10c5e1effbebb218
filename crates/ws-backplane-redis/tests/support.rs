//! Server and client helpers shared by the tests.

use std::{net::SocketAddr, time::Duration};

use futures_util::StreamExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use ws_backplane_redis::{RedisBackplane, Settings};
use ws_context::{CloseFrame, Connection, ConnectionHub, Context, Endpoint};

pub(crate) type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounded wait for anything a test awaits.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// One app instance: a hub on a Redis backplane, serving `/ws/{room}` on 127.0.0.1:0.
/// Every text a member sends goes to its room.
pub(crate) struct Instance {
    pub(crate) hub: ConnectionHub,
    pub(crate) backplane: RedisBackplane,
    pub(crate) addr: SocketAddr,
}

impl Instance {
    pub(crate) async fn start(redis_url: &str, heartbeat: Duration) -> Instance {
        Instance::start_with(redis_url, Settings::default().heartbeat(heartbeat)).await
    }

    pub(crate) async fn start_with(redis_url: &str, settings: Settings) -> Instance {
        Instance::start_custom(redis_url, settings, |endpoint| endpoint).await
    }

    /// With the endpoint's options changed by `options`.
    pub(crate) async fn start_custom(
        redis_url: &str,
        settings: Settings,
        options: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Instance {
        let backplane = RedisBackplane::with_settings(settings);
        let hub = ConnectionHub::with_backplane(backplane.clone());
        backplane.connect(redis_url).await.unwrap();
        let endpoint = options(
            Endpoint::new(to_room)
                .hub(hub.clone())
                .on_connect(join_room),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/ws/{room}", endpoint.into_route());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Instance {
            hub,
            backplane,
            addr,
        }
    }

    pub(crate) async fn connect(&self, room: &str) -> Client {
        self.connect_to(&format!("/ws/{room}")).await
    }

    /// Connects to a path and query, such as `/ws/lobby?name=ann`.
    pub(crate) async fn connect_to(&self, path: &str) -> Client {
        let (client, _response) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr)),
        )
        .await
        .expect("connect timed out")
        .expect("connect failed");
        client
    }
}

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    // `?name=` is the member's presence key.
    if let Some(name) = conn.query_param("name") {
        conn.hub().set_presence_info(conn.id(), name);
    }
    conn.hub()
        .join(conn.id(), conn.path_param("room").unwrap_or("lobby"))
        .await;
    Ok(())
}

async fn to_room(ctx: Context) -> Result<(), anyhow::Error> {
    let text: String = ctx.bind()?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub()
        .send_to_room(room, ws_context::Message::text(text))
        .await;
    Ok(())
}

/// The next text or binary frame (pings and pongs skipped).
pub(crate) async fn next_data(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("read failed");
        match message {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Whether a data frame arrives within `wait`.
pub(crate) async fn nothing_within(client: &mut Client, wait: Duration) -> bool {
    loop {
        match tokio::time::timeout(wait, client.next()).await {
            Err(_) => return true,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(_) => return false,
        }
    }
}

/// Reads until the server's close frame and returns its code (1005 when it has none).
pub(crate) async fn close_code(client: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| f.code.into()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Waits, bounded by `wait`, until `check` holds.
pub(crate) async fn eventually(what: &str, wait: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
