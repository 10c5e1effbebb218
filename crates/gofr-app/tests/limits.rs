//! Admission control, panics in HTTP handlers, and what the health endpoint shows of service
//! URLs.

use std::time::Duration;

use gofr_app::{App, AppError, Context, Error, HttpContext};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::support::{WAIT, config, http, serve};

async fn echo(ctx: Context) -> Result<String, Error> {
    Ok(ctx.bind()?)
}

/// A raw upgrade request to `/ws`; returns the response head.
async fn upgrade(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
    })
    .await
    .expect("response head in time");
    (
        stream,
        String::from_utf8(head).unwrap().to_ascii_lowercase(),
    )
}

#[tokio::test]
async fn over_the_app_wide_limit_upgrades_get_503_with_retry_after() {
    let mut app = App::with_config(config());
    app.websocket("/ws", echo);
    app.ws_max_connections(2);
    let served = serve(app).await;
    let (first, head) = upgrade(served.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (_second, head) = upgrade(served.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (_third, head) = upgrade(served.addr).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nretry-after: 5\r\n"), "{head}");
    // A place frees when a connection ends.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_stream, head) = upgrade(served.addr).await;
        if head.starts_with("http/1.1 101") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "place never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served.shutdown.shutdown();
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
    let served = serve(app).await;
    let (_first, head) = upgrade(served.addr).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let (_second, head) = upgrade(served.addr).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("\r\nretry-after: 5\r\n"), "{head}");
    served.shutdown.shutdown();
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
    let served = serve(app).await;
    let (status, body) = http(served.addr, "GET", "/boom", "").await;
    assert_eq!(status, 500);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    // The server lives on.
    let (status, _) = http(served.addr, "GET", "/fine", "").await;
    assert_eq!(status, 200);
    served.shutdown.shutdown();
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
    let served = serve(app).await;
    let (status, body) = http(served.addr, "GET", "/.well-known/health", "").await;
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
    served.shutdown.shutdown();
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
