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

use gofr_app::{App, Context, Message, WsUpgrader, upgrader::Compression};

async fn echo(ctx: Context) -> Result<Message, gofr_app::BindError> {
    ctx.bind()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let compression = flag("WS_COMPRESSION", true)?;
    let context_takeover = flag("WS_CONTEXT_TAKEOVER", false)?;
    let threshold = match std::env::var("WS_COMPRESSION_THRESHOLD") {
        Ok(bytes) => bytes.trim().parse().map_err(|_| {
            anyhow::anyhow!("WS_COMPRESSION_THRESHOLD={bytes:?} is not a number of bytes")
        })?,
        Err(_) => Compression::default().threshold,
    };
    let mut upgrader = WsUpgrader::builder();
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

/// An on/off variable: `on`/`1`/`true` or `off`/`0`/`false`; unset or empty is `default`.
fn flag(name: &str, default: bool) -> anyhow::Result<bool> {
    match std::env::var(name).as_deref().map(str::trim) {
        Err(_) | Ok("") => Ok(default),
        Ok("on" | "1" | "true") => Ok(true),
        Ok("off" | "0" | "false") => Ok(false),
        Ok(other) => anyhow::bail!("{name}={other:?} is not one of on, off, 1, 0, true, false"),
    }
}
