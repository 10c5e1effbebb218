//! GoFr's WebSocket example: greets every message with "Hello! GoFr", then echoes it.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example using-web-socket
//! ```
//!
//! and connect to `ws://127.0.0.1:8000/ws` (`HTTP_PORT` changes the port).

use std::time::Duration;

use gofr_app::{App, Context, Error, WsUpgrader};

async fn ws_handler(ctx: Context) -> Result<String, Error> {
    let message: String = ctx.bind()?;
    tracing::info!("Received message: {message}");
    ctx.write_message_to_socket("Hello! GoFr").await?;
    Ok(message)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut app = App::new();
    // GoFr's example chain; each option acts on the wire (see `WsUpgraderBuilder`).
    let upgrader = WsUpgrader::builder()
        .handshake_timeout(Duration::from_secs(5)) // request head within 5 s, or closed
        .read_buffer_size(2048) // at most 2 KiB per read from the socket
        .write_buffer_size(2048) // frames coalesced up to 2 KiB before a write
        .subprotocols(["chat", "binary"]) // server's order; echoed when the client offers one
        .compression() // permessage-deflate, only with clients that offer it
        .build()?;
    app.override_websocket_upgrader(upgrader);
    app.websocket("/ws", ws_handler);
    app.run().await?;
    Ok(())
}
