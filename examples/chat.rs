//! A browser chat served by the app itself: `/` is one static page with a few lines of plain
//! JavaScript, and `/ws/{room}` joins the room named in the path. Every message a member
//! sends goes to everyone in that room as JSON `{"from": ..., "text": ..., "at": ...}`
//! (`from` is the `name` query parameter or the connection id, `at` milliseconds since the
//! Unix epoch).
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example chat
//! ```
//!
//! and open <http://127.0.0.1:8000/> in two browser windows (`HTTP_PORT` changes the port;
//! metrics are on `METRICS_PORT`, 2121), or run `cargo xtask demo`, which also prints the URL.
//! Compression (permessage-deflate) is on: browsers offer it, so their frames are compressed;
//! `cargo xtask browser-test` checks that in headless Chromium.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::{response::Html, routing::get};
use gofr_app::{App, CloseFrame, Connection, Context, Error, Message, WsUpgrader};

const PAGE: &str = include_str!("chat.html");
/// Longest message accepted, in characters.
const MAX_TEXT: usize = 2000;

#[derive(serde::Serialize)]
struct ChatMessage<'a> {
    from: &'a str,
    text: &'a str,
    at: u128,
}

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    conn.hub().join(conn.id(), &room).await;
    tracing::info!(room, "joined");
    Ok(())
}

async fn chat(ctx: Context) -> Result<(), Error> {
    let text: String = ctx.bind()?;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(Error::bad_request(format!(
            "a message has 1 to {MAX_TEXT} characters"
        )));
    }
    let from = ctx
        .query_param("name")
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| ctx.id().to_string());
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let json = serde_json::to_string(&ChatMessage {
        from: &from,
        text,
        at,
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub().send_to_room(room, Message::text(json)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut app = App::new();
    // Browsers offer permessage-deflate; chat text compresses well.
    app.override_websocket_upgrader(WsUpgrader::builder().compression().build()?);
    app.merge(axum::Router::new().route("/", get(|| async { Html(PAGE) })));
    app.websocket_with("/ws/{room}", chat, |route| route.on_connect(join_room));
    app.run().await?;
    Ok(())
}
