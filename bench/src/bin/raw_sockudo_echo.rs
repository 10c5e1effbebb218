//! The engine alone: a sockudo-ws echo with no framework around it, the baseline every
//! other figure is divided by. Its loop is the fastest the engine's stream API allows: read a
//! message, queue the reply, keep queueing while more messages are already parsed, flush once.
//!
//! Run with `cargo run --release -p bench --bin raw-sockudo-echo`; it prints its address.

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use sockudo_ws::{Config, Message, Role, WebSocketStream, handshake::server_handshake};
use tokio::net::TcpStream;

fn main() -> anyhow::Result<()> {
    // One thread: the server is pinned to one CPU, as every server in the comparison.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let (listener, _) = bench::listen().await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A failed connection only ends itself; the load generator counts the error.
            let _ = echo(stream).await;
        });
    }
}

async fn echo(mut stream: TcpStream) -> sockudo_ws::Result<()> {
    stream.set_nodelay(true)?;
    let handshake = server_handshake(&mut stream).await?;
    let config = Config {
        // As in our upgrader: liveness is left to pings, never an absolute idle deadline.
        idle_timeout: 0,
        // As in our upgrader: the write buffer starts small and grows as frames are queued
        // (the default allocates 16 KiB per connection, 4 KiB of which an idle one touches).
        write_buffer_size: 512,
        ..Config::default()
    };
    let mut ws =
        WebSocketStream::from_raw_with_leftover(stream, Role::Server, config, handshake.leftover);
    while let Some(message) = ws.next().await {
        feed_data(&mut ws, message?).await?;
        // Everything already parsed goes into the same flush.
        while let Some(ready) = ws.next().now_or_never() {
            match ready {
                Some(message) => feed_data(&mut ws, message?).await?,
                None => return ws.flush().await,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// Queues the echo of a data message; control frames are answered by the engine.
async fn feed_data(
    ws: &mut WebSocketStream<TcpStream>,
    message: Message,
) -> sockudo_ws::Result<()> {
    match message {
        Message::Text(_) | Message::Binary(_) => ws.feed(message).await,
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
    }
}
