//! The engine alone: a sockudo-ws echo with no framework around it, the baseline every
//! other figure is divided by. Its loop is the fastest the engine's stream API allows: read a
//! message, queue the reply, keep queueing while more messages are already parsed, flush once.
//!
//! With `DEFLATE=1` it also negotiates permessage-deflate with clients that offer it, with our
//! server's default policy (no context takeover both ways, level 1, 32-byte threshold): the
//! reference of S5d. Its own handshake does that, as sockudo-ws's `server_handshake` answers
//! without extensions.
//!
//! Run with `cargo run --release -p bench --bin raw-sockudo-echo`; it prints its address.

use futures_util::{FutureExt as _, Sink, SinkExt as _, Stream, StreamExt as _};
use sockudo_ws::{
    CompressedWebSocketStream, Config, DeflateConfig, Message, Role, WebSocketStream,
    deflate::negotiate_server_deflate,
    handshake::{build_response, generate_accept_key, parse_request, server_handshake},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

fn main() -> anyhow::Result<()> {
    let deflate = std::env::var("DEFLATE").is_ok_and(|v| v == "1");
    // One thread: the server is pinned to one CPU, as every server in the comparison.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(deflate))
}

async fn serve(deflate: bool) -> anyhow::Result<()> {
    let (listener, _) = bench::listen().await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            // A failed connection only ends itself; the load generator counts the error.
            let _ = if deflate {
                echo_deflate(stream).await
            } else {
                echo_plain(stream).await
            };
        });
    }
}

fn config() -> Config {
    Config {
        // As in our upgrader: liveness is left to pings, never an absolute idle deadline.
        idle_timeout: 0,
        // As in our upgrader: the write buffer starts small and grows as frames are queued
        // (the default allocates 16 KiB per connection, 4 KiB of which an idle one touches).
        write_buffer_size: 512,
        ..Config::default()
    }
}

async fn echo_plain(mut stream: TcpStream) -> sockudo_ws::Result<()> {
    stream.set_nodelay(true)?;
    let handshake = server_handshake(&mut stream).await?;
    let ws =
        WebSocketStream::from_raw_with_leftover(stream, Role::Server, config(), handshake.leftover);
    echo(ws).await
}

/// The handshake with permessage-deflate negotiated (when offered), then the same loop.
async fn echo_deflate(mut stream: TcpStream) -> sockudo_ws::Result<()> {
    stream.set_nodelay(true)?;
    let policy = DeflateConfig {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        compression_level: 1,
        compression_threshold: 32,
        ..DeflateConfig::default()
    };
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let (negotiated, leftover) = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(sockudo_ws::Error::ConnectionClosed);
        }
        if let Some((request, consumed)) = parse_request(&buf)? {
            let negotiated = request
                .extensions
                .and_then(|offer| negotiate_server_deflate(offer, &policy));
            let answer = negotiated.as_ref().map(|n| n.to_response_header());
            let response =
                build_response(&generate_accept_key(request.key), None, answer.as_deref());
            stream.write_all(&response).await?;
            let leftover = (consumed < buf.len()).then(|| buf.split_off(consumed).freeze());
            break (negotiated, leftover);
        }
    };
    drop(buf);
    match negotiated {
        Some(negotiated) => {
            echo(CompressedWebSocketStream::server_with_leftover(
                stream,
                config(),
                negotiated.config,
                leftover,
            ))
            .await
        }
        None => {
            echo(WebSocketStream::from_raw_with_leftover(
                stream,
                Role::Server,
                config(),
                leftover,
            ))
            .await
        }
    }
}

async fn echo<S>(mut ws: S) -> sockudo_ws::Result<()>
where
    S: Stream<Item = sockudo_ws::Result<Message>>
        + Sink<Message, Error = sockudo_ws::Error>
        + Unpin,
{
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
async fn feed_data<S>(ws: &mut S, message: Message) -> sockudo_ws::Result<()>
where
    S: Sink<Message, Error = sockudo_ws::Error> + Unpin,
{
    match message {
        Message::Text(_) | Message::Binary(_) => ws.feed(message).await,
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => Ok(()),
    }
}
