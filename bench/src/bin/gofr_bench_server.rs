//! The framework path for the scenarios the `echo` example does not cover: S4 binds a JSON
//! object into a struct and returns it (`/json`), S6 fans one message out to every connection
//! through the app's hub (`/broadcast`; receivers connect to `/ws`, which echoes).
//!
//! Run with `HTTP_HOST=127.0.0.1 HTTP_PORT=0 cargo run --release -p bench --bin
//! gofr-bench-server`; the address is in the first log line.

use bench::Event;
use gofr_app::{App, BindError, Context, Message};

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

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut app = App::new();
            app.websocket("/ws", echo);
            app.websocket("/json", json);
            app.websocket("/broadcast", broadcast);
            app.run().await
        })?;
    Ok(())
}
