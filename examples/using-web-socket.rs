//! GoFr's WebSocket example: greets every message with "Hello! GoFr", then echoes it.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example using-web-socket
//! ```
//!
//! and connect to `ws://127.0.0.1:8000/ws` (`HTTP_PORT` changes the port).

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
    let upgrader = WsUpgrader::builder()
        .write_buffer_size(2048)
        .subprotocols(["chat", "binary"])
        .compression()
        .build()?;
    app.override_websocket_upgrader(upgrader);
    app.websocket("/ws", ws_handler);
    app.run().await?;
    Ok(())
}
