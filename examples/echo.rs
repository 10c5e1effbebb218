//! Returns every message as it came: text as text, binary as binary. The server of the
//! conformance suite and the benchmarks.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example echo
//! ```
//!
//! and connect to `ws://127.0.0.1:8000/ws` (`HTTP_PORT` changes the port).

use gofr_app::{App, Context, Message, WsUpgrader};

async fn echo(ctx: Context) -> Result<Message, gofr_app::BindError> {
    ctx.bind()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut app = App::new();
    // Negotiated only with clients that offer permessage-deflate.
    app.override_websocket_upgrader(WsUpgrader::builder().compression().build()?);
    app.websocket("/ws", echo);
    app.run().await?;
    Ok(())
}
