//! GoFr's inter-service WebSocket example: `POST /send-notification` writes a message to the
//! WebSocket service named `notification-service`.
//!
//! Run with
//!
//! ```not_rust
//! HTTP_PORT=8081 cargo run --example notification-service
//! cargo run --example ws-inter-service
//! curl -X POST http://127.0.0.1:8000/send-notification
//! ```
//!
//! `NOTIFICATION_URL` (default `ws://127.0.0.1:8081/ws`) says where the service is,
//! `RETRY_INTERVAL_MS` (default 5000) how long to wait between dials. The service may start
//! after this program, or restart: notifications written meanwhile are queued and sent, in
//! order, once it is back (the reply says so). `/.well-known/health` shows its state.

use std::time::Duration;

use gofr_app::{App, Error, HttpContext, ServiceExt as _, ServiceState};

const SERVICE: &str = "notification-service";

async fn send_notification(ctx: HttpContext) -> Result<&'static str, Error> {
    let message = serde_json::json!({
        "title": "New Message",
        "content": "You have a new notification!",
    });
    if let Err(error) = ctx.write_message_to_service(SERVICE, &message) {
        tracing::error!(%error, "Failed to send message");
        return Err(error.into());
    }
    let connected = ctx
        .ws_service_status(SERVICE)
        .is_some_and(|status| status.state == ServiceState::Connected);
    Ok(if connected {
        "Notification sent successfully!"
    } else {
        "Notification queued: notification-service is not connected; it will be sent when it is."
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("NOTIFICATION_URL").unwrap_or_else(|_| "ws://127.0.0.1:8081/ws".to_owned());
    let retry_ms: u64 = match std::env::var("RETRY_INTERVAL_MS") {
        Ok(value) => value.parse().map_err(|_| {
            anyhow::anyhow!("RETRY_INTERVAL_MS must be a number of milliseconds, got {value:?}")
        })?,
        Err(_) => 5000,
    };

    let mut app = App::new();
    // Reconnection on: starts even if the service is not up yet, and keeps dialling.
    app.add_ws_service(
        SERVICE,
        &url,
        http::HeaderMap::new(),
        true,
        Duration::from_millis(retry_ms),
    )
    .await?;
    app.post("/send-notification", send_notification);
    app.run().await?;
    Ok(())
}
