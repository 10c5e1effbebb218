//! Admission control, panics in HTTP handlers, and what the health endpoint shows of service
//! URLs.

use std::time::Duration;

use gofr_app::{App, AppError, Context, Error, HttpContext};
use test_support::{header, raw_request, upgrade_request};
use tokio::net::TcpStream;
use ws_test::{DEFAULT_TIMEOUT as WAIT, HttpResponse, TestServer, http_get};

use crate::support::config;

async fn echo(ctx: Context) -> Result<String, Error> {
    Ok(ctx.bind()?)
}

/// A hand-written upgrade request to `/ws`: the socket, the status and the `Retry-After`
/// header.
async fn upgrade(addr: std::net::SocketAddr) -> (TcpStream, u16, Option<String>) {
    let (stream, status, headers) = raw_request(addr, &upgrade_request(addr, "/ws", "")).await;
    let retry_after = header(&headers, "retry-after").map(str::to_owned);
    (stream, status, retry_after)
}

#[tokio::test]
async fn over_the_app_wide_limit_upgrades_get_503_with_retry_after() {
    let mut app = App::with_config(config());
    app.websocket("/ws", echo);
    app.ws_max_connections(2);
    let server = TestServer::app(app).await;
    let (first, status, _) = upgrade(server.addr()).await;
    assert_eq!(status, 101);
    let (_second, status, _) = upgrade(server.addr()).await;
    assert_eq!(status, 101);
    let (_third, status, retry_after) = upgrade(server.addr()).await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("5"));
    // A place frees when a connection ends.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_stream, status, _) = upgrade(server.addr()).await;
        if status == 101 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "place never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_per_ip_limit_upgrades_get_503_with_retry_after() {
    let mut vars: std::collections::HashMap<String, String> = [
        ("HTTP_HOST", "127.0.0.1"),
        ("METRICS_PORT", "0"),
        ("SHUTDOWN_GRACE_PERIOD", "1s"),
        ("WS_MAX_CONNECTIONS_PER_IP", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.insert("WS_MAX_CONNECTIONS".to_owned(), "100".to_owned());
    let mut app = App::with_config(gofr_app::Config::from_vars(&vars).unwrap());
    app.websocket("/ws", echo);
    let server = TestServer::app(app).await;
    let (_first, status, _) = upgrade(server.addr()).await;
    assert_eq!(status, 101);
    let (_second, status, retry_after) = upgrade(server.addr()).await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("5"));
    server.shutdown().await;
}

async fn panics(_ctx: HttpContext) -> Result<String, Error> {
    panic!("handler bug");
}

#[tokio::test]
async fn a_panicking_http_handler_is_answered_500_in_the_error_envelope() {
    let mut app = App::with_config(config());
    app.get("/boom", panics);
    app.get("/fine", |_ctx: HttpContext| async {
        Ok::<_, Error>("fine")
    });
    let server = TestServer::app(app).await;
    let HttpResponse { status, body, .. } = http_get(&server.http_url("/boom")).await;
    assert_eq!(status, 500);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    // The server lives on.
    let HttpResponse { status, .. } = http_get(&server.http_url("/fine")).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn health_shows_service_urls_without_credentials_or_query() {
    let app = App::with_config(config());
    // Nothing listens there: the service stays down, which is enough to be listed.
    let _ = app
        .add_ws_service(
            "secretive",
            "ws://user:hunter2@127.0.0.1:9/ws?token=abc",
            http::HeaderMap::new(),
            true,
            Duration::from_secs(60),
        )
        .await;
    let server = TestServer::app(app).await;
    let HttpResponse { status, body, .. } = http_get(&server.http_url("/.well-known/health")).await;
    assert_eq!(status, 200);
    assert!(
        !body.contains("hunter2") && !body.contains("token"),
        "{body}"
    );
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health["data"]["services"]["secretive"]["url"],
        "ws://127.0.0.1:9/ws"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_route_option_that_cannot_work_stops_serve_before_it_serves() {
    let mut app = App::with_config(config());
    app.websocket_with("/ws", echo, |route| route.queue_capacity(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = tokio::time::timeout(WAIT, app.serve(listener))
        .await
        .expect("serve returns at once");
    match served {
        Err(AppError::WebSocketRoute { path, source }) => {
            assert_eq!(path, "/ws");
            assert_eq!(
                source.to_string(),
                "queue_capacity must be between 1 and 4294967295, got 0"
            );
        }
        other => panic!("expected a route error, got {other:?}"),
    }
}
