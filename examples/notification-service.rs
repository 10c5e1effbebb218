//! The service `ws-inter-service` talks to: logs every notification it receives.
//!
//! Run with
//!
//! ```not_rust
//! HTTP_PORT=8081 cargo run --example notification-service
//! ```
//!
//! and point `ws-inter-service` at it (its default `NOTIFICATION_URL` is
//! `ws://127.0.0.1:8081/ws`).

use gofr_app::{App, BindError, Context};

async fn receive(ctx: Context) -> Result<(), BindError> {
    let notification: String = ctx.bind()?;
    tracing::info!(%notification, "notification received");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut app = App::new();
    app.websocket("/ws", receive);
    app.run().await?;
    Ok(())
}
