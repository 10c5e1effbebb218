//! Returns every message as it came: text as text, binary as binary. The server of the
//! conformance suite, the interop suite and the benchmarks.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example echo
//! ```
//!
//! and connect to `ws://127.0.0.1:8000/ws` (`HTTP_PORT` changes the port).
//!
//! Variables of its own set up permessage-deflate, which is negotiated only with clients that
//! offer it:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_COMPRESSION` | `on` | `off` declines permessage-deflate |
//! | `WS_CONTEXT_TAKEOVER` | `0` | `1` lets both sides keep their compression context between messages |
//! | `WS_COMPRESSION_THRESHOLD` | `32` | messages shorter than this many bytes go uncompressed (the conformance suite sets 0) |
//!
//! and the server's pings (the browser test makes them frequent):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WS_PING_INTERVAL_MS` | `30000` | a connection quiet this many milliseconds is pinged |
//! | `WS_PONG_TIMEOUT_MS` | `10000` | milliseconds the pong may take before the connection is closed (1001) |

use std::time::Duration;

use gofr_app::{
    App, Context, Message, WsUpgrader,
    upgrader::{Compression, DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT},
};

async fn echo(ctx: Context) -> Result<Message, gofr_app::BindError> {
    ctx.bind()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let compression = flag("WS_COMPRESSION", true)?;
    let context_takeover = flag("WS_CONTEXT_TAKEOVER", false)?;
    let threshold = number("WS_COMPRESSION_THRESHOLD")?.unwrap_or(Compression::default().threshold);
    let ping_interval =
        number("WS_PING_INTERVAL_MS")?.map_or(DEFAULT_PING_INTERVAL, Duration::from_millis);
    let pong_timeout =
        number("WS_PONG_TIMEOUT_MS")?.map_or(DEFAULT_PONG_TIMEOUT, Duration::from_millis);
    let mut upgrader = WsUpgrader::builder()
        .ping_interval(Some(ping_interval))
        .pong_timeout(pong_timeout);
    if compression {
        upgrader = upgrader.compression_with(Compression {
            context_takeover,
            threshold,
            ..Compression::default()
        });
    }
    let mut app = App::new();
    app.override_websocket_upgrader(upgrader.build()?);
    app.websocket("/ws", echo);
    tracing::info!(compression, context_takeover, threshold, "echo settings");
    app.run().await?;
    Ok(())
}

/// A variable holding a whole number, if set.
fn number<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(text) => match text.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => anyhow::bail!("{name}={text:?} is not a whole number"),
        },
        Err(_) => Ok(None),
    }
}

/// An on/off variable: `on`/`1`/`true` or `off`/`0`/`false`; unset or empty is `default`.
fn flag(name: &str, default: bool) -> anyhow::Result<bool> {
    match std::env::var(name).as_deref().map(str::trim) {
        Err(_) | Ok("") => Ok(default),
        Ok("on" | "1" | "true") => Ok(true),
        Ok("off" | "0" | "false") => Ok(false),
        Ok(other) => anyhow::bail!("{name}={other:?} is not one of on, off, 1, 0, true, false"),
    }
}
