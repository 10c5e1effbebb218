//! DESIGN.md point 7: the upgrade request stays visible, and layers run before the upgrade.

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;
use ws_context::{Context, Endpoint};

use crate::support::{WAIT, connect_with_header, next_data, serve};

#[derive(Clone)]
struct User(String);

async fn require_auth(mut request: Request, next: Next) -> Response {
    match request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        Some(token) => {
            let user = User(token.trim_start_matches("Bearer ").to_owned());
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => (StatusCode::UNAUTHORIZED, "missing Authorization header").into_response(),
    }
}

async fn describe(ctx: Context) -> Result<serde_json::Value, std::convert::Infallible> {
    Ok(serde_json::json!({
        "room": ctx.path_param("room"),
        "nick": ctx.query_param("nick"),
        "user": ctx.extensions().get::<User>().map(|u| u.0.clone()),
        "route": ctx.route(),
        "peer_known": ctx.remote_addr().is_some(),
    }))
}

fn router() -> axum::Router {
    let route = Endpoint::new(describe)
        .into_route()
        .expect("valid endpoint options")
        .route_layer(middleware::from_fn(require_auth));
    axum::Router::new().route("/ws/{room}", route)
}

#[tokio::test]
async fn handler_sees_path_query_and_auth_extensions() {
    let addr = serve(router()).await;
    let mut client = connect_with_header(
        addr,
        "/ws/kitchen?nick=al%20ice",
        Some(("authorization", "Bearer alice")),
    )
    .await;
    client.send(Message::text("?")).await.unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(next_data(&mut client).await.to_text().unwrap()).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "room": "kitchen", "nick": "al ice", "user": "alice",
            "route": "/ws/{room}", "peer_known": true,
        })
    );
}

#[tokio::test]
async fn a_layer_refuses_with_401_before_any_upgrade() {
    let addr = serve(router()).await;
    let error = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/kitchen")),
    )
    .await
    .unwrap()
    .unwrap_err();
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected HTTP 401, got {other:?}"),
    }
}

/// A plain HTTP request over a raw socket, returning status line and body.
async fn plain_http(addr: std::net::SocketAddr, method: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} /ws/kitchen HTTP/1.1\r\nHost: {addr}\r\nAuthorization: x\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn plain_http_to_a_websocket_route_gets_a_clear_4xx() {
    let addr = serve(router()).await;
    let get = plain_http(addr, "GET").await;
    assert!(get.starts_with("HTTP/1.1 426"), "{get}");
    assert!(get.contains("Upgrade: websocket"), "{get}");
    let post = plain_http(addr, "POST").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.contains("use GET"), "{post}");
}

/// The connection keeps its own copies of the request's URI and headers (not slices of
/// hyper's read buffer, which would stay allocated for the connection's life); every message
/// sees the same values.
#[tokio::test]
async fn uri_and_headers_stay_readable_for_the_whole_connection() {
    async fn request_seen(ctx: Context) -> Result<serde_json::Value, std::convert::Infallible> {
        Ok(serde_json::json!({
            "uri": ctx.uri().to_string(),
            "trace": ctx.headers().get("x-trace").and_then(|v| v.to_str().ok()),
            "original": ctx.extensions().get::<axum::extract::OriginalUri>().map(|u| u.0.to_string()),
        }))
    }
    let router = axum::Router::new().route(
        "/ws/{room}",
        Endpoint::new(request_seen)
            .into_route()
            .expect("valid endpoint options"),
    );
    let addr = serve(router).await;
    let mut client = connect_with_header(addr, "/ws/hall?x=1", Some(("x-trace", "abc-123"))).await;
    for _ in 0..2 {
        client.send(Message::text("?")).await.unwrap();
        let seen: serde_json::Value =
            serde_json::from_str(next_data(&mut client).await.to_text().unwrap()).unwrap();
        assert_eq!(
            seen,
            serde_json::json!({
                "uri": "/ws/hall?x=1", "trace": "abc-123", "original": "/ws/hall?x=1",
            })
        );
    }
}
