//! The ecosystem's default: a tokio-tungstenite echo in its fastest form, the read half
//! `forward`ed into the write half (replies are written as they come and flushed once when
//! nothing more is ready; DESIGN.md, "Performance principles").
//!
//! Run with `cargo run --release -p bench --bin raw-tungstenite-echo`; it prints its address.

use futures_util::{StreamExt as _, TryStreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn main() -> anyhow::Result<()> {
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
            let _ = echo(stream).await;
        });
    }
}

async fn echo(stream: TcpStream) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (write, read) = ws.split();
    // Pings are answered by tungstenite itself; only data is echoed.
    read.try_filter(|message| {
        std::future::ready(matches!(message, Message::Text(_) | Message::Binary(_)))
    })
    .forward(write)
    .await
}
