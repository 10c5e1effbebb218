//! Outbound WebSocket services through the app: handlers write to them, health shows them,
//! shutdown closes them.

use std::time::Duration;

use gofr_app::{App, Context, Error, HttpContext, ServiceExt as _, ServiceState};
use http::HeaderMap;
use test_support::{Behaviour, Log, Service};
use ws_test::{HttpResponse, TestServer, eventually, http_get, http_post_text};

use crate::support::config;

async fn from_http(ctx: HttpContext) -> Result<&'static str, Error> {
    let text: String = ctx.bind()?;
    ctx.write_message_to_service("notifications", &text)?;
    Ok("sent")
}

async fn from_websocket(ctx: Context) -> Result<(), Error> {
    let text: String = ctx.bind()?;
    ctx.write_message_to_service("notifications", &format!("ws: {text}"))?;
    Ok(())
}

async fn health(server: &TestServer) -> serde_json::Value {
    let health = http_get(&server.http_url("/.well-known/health")).await;
    assert_eq!(health.status, 200, "{health}");
    health.json()
}

#[tokio::test]
async fn handlers_write_to_a_service_that_starts_late_health_degrades_and_shutdown_closes_it() {
    // Nothing listens yet: the port is free.
    let service_addr = std::net::SocketAddr::from(([127, 0, 0, 1], test_support::free_port()));

    let mut app = App::with_config(config());
    app.add_ws_service(
        "notifications",
        &format!("ws://{service_addr}/ws"),
        HeaderMap::new(),
        true,
        Duration::from_millis(50),
    )
    .await
    .expect("reconnection on: Ok while the service is down");
    app.post("/notify", from_http);
    app.websocket("/ws", from_websocket);
    let pool = app.ws_services();
    let server = TestServer::app(app).await;

    // Down: the app still serves, health says DEGRADED with the dial error.
    let body = health(&server).await;
    assert_eq!(body["data"]["status"], "DEGRADED", "{body}");
    let service = &body["data"]["services"]["notifications"];
    assert_eq!(service["status"], "RECONNECTING", "{body}");
    assert!(
        service["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    // Written from an HTTP handler while down: queued.
    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/notify"), "from http").await;
    assert_eq!((status, body.as_str()), (201, r#"{"data":"sent"}"#));

    let service = Service::restart(service_addr, Log::default(), Behaviour::default()).await;
    eventually("the service connects", || {
        pool.status("notifications").unwrap().state == ServiceState::Connected
    })
    .await;
    let body = health(&server).await;
    assert_eq!(body["data"]["status"], "UP", "{body}");
    assert_eq!(
        body["data"]["services"]["notifications"]["status"],
        "CONNECTED"
    );

    // From a WebSocket handler.
    let mut client = server.connect("/ws").await;
    client.send_text("hello").await;
    eventually("both messages arrive", || service.log.count() == 2).await;
    assert_eq!(service.log.texts(), ["from http", "ws: hello"]);

    // Shutdown closes the service connection with 1001 and ends every task.
    server.stop_handle().shutdown();
    client.expect_close(1001).await;
    server.shutdown().await;
    eventually("the service sees the close frame", || {
        !service.log.close_codes.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*service.log.close_codes.lock().unwrap(), [1001]);
    assert_eq!(
        pool.status("notifications").unwrap().state,
        ServiceState::Closed
    );
}

#[tokio::test]
async fn writing_to_an_unknown_service_is_an_error_response() {
    let mut app = App::with_config(config());
    app.post("/notify", from_http);
    let server = TestServer::app(app).await;
    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/notify"), r#""x""#).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("connection not found for service: notifications"),
        "{body}"
    );
}
