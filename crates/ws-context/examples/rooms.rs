//! Rooms on a plain axum router, without the `gofr-app` umbrella: `/ws/{room}` joins the
//! room named in the path, and every message a member sends goes to every member of that
//! room, the sender included.
//!
//! Run with
//!
//! ```not_rust
//! cargo run -p ws-context --example rooms
//! ```
//!
//! then connect two clients to `ws://127.0.0.1:3000/ws/lobby`. Settings (environment):
//! `PORT` (3000; 0 picks a free port), `QUEUE_CAPACITY` (messages per connection),
//! `SEND_TIMEOUT_MS` and `CLOSE_GRACE_MS` (see `Endpoint`), `MESSAGE_TIMEOUT_MS` (see
//! `WsUpgraderBuilder::message_timeout`). The tests run it to measure the server's memory while
//! a client stops reading, and while clients hold unfinished messages.

use std::{net::SocketAddr, time::Duration};

use ws_context::{CloseFrame, Connection, Context, DEFAULT_QUEUE_MESSAGES, Endpoint, WsUpgrader};

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    conn.hub().join(conn.id(), &room).await;
    Ok(())
}

async fn to_room(ctx: Context) -> Result<(), ws_context::BindError> {
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub().send_to_room(room, ctx.message().clone()).await;
    Ok(())
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let queue = usize::try_from(setting("QUEUE_CAPACITY", DEFAULT_QUEUE_MESSAGES as u64))
        .unwrap_or(DEFAULT_QUEUE_MESSAGES);
    let upgrader = WsUpgrader::builder()
        .message_timeout(Duration::from_millis(setting("MESSAGE_TIMEOUT_MS", 30_000)))
        .build()
        .map_err(std::io::Error::other)?;
    let endpoint = Endpoint::new(to_room)
        .upgrader(upgrader)
        .on_connect(join_room)
        .queue_capacity(queue)
        .send_timeout(Duration::from_millis(setting("SEND_TIMEOUT_MS", 5000)))
        .close_grace(Duration::from_millis(setting("CLOSE_GRACE_MS", 5000)));
    let app = axum::Router::new().route(
        "/ws/{room}",
        endpoint.into_route().map_err(std::io::Error::other)?,
    );
    let port = u16::try_from(setting("PORT", 3000)).unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
