//! The framework path for the scenarios the `echo` example does not cover: S4 binds a JSON
//! object into a struct and returns it (`/json`), S6 and S8 fan one message out to every
//! connection (receivers connect to `/ws`, which echoes): `/broadcast` through the app's hub
//! (`ConnectionHub::broadcast`), `/broadcast-each` by sending to each connection separately
//! (`ConnectionHub::send_to` per id), which compresses once per receiver on compressed
//! connections. permessage-deflate is on with the default settings (no context takeover,
//! level 1, 32-byte threshold), negotiated only with clients that offer it (S8's do; the
//! sockudo-ws clients of S4 and S6 do not).
//!
//! Run with `HTTP_HOST=127.0.0.1 HTTP_PORT=0 cargo run --release -p bench --bin
//! gofr-bench-server`; the address is in the first log line.

use bench::Event;
use gofr_app::{App, BindError, Context, Message, WsUpgrader, upgrader::Compression};

async fn json(ctx: Context) -> Result<Event, BindError> {
    ctx.bind::<Event>()
}

async fn echo(ctx: Context) -> Result<Message, BindError> {
    ctx.bind()
}

/// Sends the message to every open connection (the sender included) and answers nothing.
async fn broadcast(ctx: Context) -> Result<(), BindError> {
    ctx.hub().broadcast(ctx.message().clone()).await;
    Ok(())
}

/// Sends the message to every open connection one by one, each copy encoded (and compressed)
/// by its own connection: the per-receiver cost S8 compares `broadcast` with.
async fn broadcast_each(ctx: Context) -> Result<(), BindError> {
    let hub = ctx.hub();
    for connection in hub.list() {
        // A connection that closed meanwhile is skipped, as `broadcast` skips it.
        let _ = hub.send_to(&connection.id, ctx.message().clone()).await;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let upgrader = WsUpgrader::builder()
        .compression_with(Compression::default())
        .build()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut app = App::new();
            app.override_websocket_upgrader(upgrader);
            app.websocket("/ws", echo);
            app.websocket("/json", json);
            app.websocket("/broadcast", broadcast);
            app.websocket("/broadcast-each", broadcast_each);
            app.run().await
        })?;
    Ok(())
}
