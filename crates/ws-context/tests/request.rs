//! DESIGN.md point 7: the upgrade request stays visible, and layers run before the upgrade.

use axum::{
    extract::Request,
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use test_support::raw_exchange;
use ws_context::{Context, Endpoint};
use ws_test::TestServer;

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
    let server = TestServer::router(router()).await;
    let mut client = server
        .client("/ws/kitchen?nick=al%20ice")
        .bearer("alice")
        .connect()
        .await;
    client.send_text("?").await;
    let seen: serde_json::Value = client.recv_json().await;
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
    let server = TestServer::router(router()).await;
    // No Authorization header.
    server.client("/ws/kitchen").expect_refused(401).await;
}

/// A plain HTTP request with `method` (and an `Authorization`, so the layer lets it
/// through); the whole answer.
async fn plain_http(server: &TestServer, method: &str) -> String {
    let addr = server.addr();
    let request = format!(
        "{method} /ws/kitchen HTTP/1.1\r\nHost: {addr}\r\nAuthorization: x\r\nConnection: close\r\n\r\n"
    );
    raw_exchange(addr, &request).await
}

#[tokio::test]
async fn plain_http_to_a_websocket_route_gets_a_clear_4xx() {
    let server = TestServer::router(router()).await;
    let get = plain_http(&server, "GET").await;
    assert!(get.starts_with("HTTP/1.1 426"), "{get}");
    assert!(get.contains("Upgrade: websocket"), "{get}");
    let post = plain_http(&server, "POST").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.contains("use GET"), "{post}");
}

/// What a handler sees of the request's URI: the URI, the URI as sent, axum's `OriginalUri`.
async fn request_seen(ctx: Context) -> Result<serde_json::Value, std::convert::Infallible> {
    Ok(serde_json::json!({
        "uri": ctx.uri().to_string(),
        "trace": ctx.headers().get("x-trace").and_then(|v| v.to_str().ok()),
        "original": ctx.original_uri().to_string(),
        "original_extension": ctx.extensions().get::<axum::extract::OriginalUri>().map(|u| u.0.to_string()),
    }))
}

fn request_seen_route() -> axum::routing::MethodRouter {
    Endpoint::new(request_seen)
        .into_route()
        .expect("valid endpoint options")
}

/// The connection keeps its own copies of the request's URI and headers (not slices of
/// hyper's read buffer, which would stay allocated for the connection's life); every message
/// sees the same values. Not nested, the URI as sent is the URI, and axum's `OriginalUri` is
/// not kept twice.
#[tokio::test]
async fn uri_and_headers_stay_readable_for_the_whole_connection() {
    let router = axum::Router::new().route("/ws/{room}", request_seen_route());
    let server = TestServer::router(router).await;
    let mut client = server
        .client("/ws/hall?x=1")
        .header("x-trace", "abc-123")
        .connect()
        .await;
    for _ in 0..2 {
        client.send_text("?").await;
        let seen: serde_json::Value = client.recv_json().await;
        assert_eq!(
            seen,
            serde_json::json!({
                "uri": "/ws/hall?x=1", "trace": "abc-123", "original": "/ws/hall?x=1",
                "original_extension": null,
            })
        );
    }
}

/// Under a nested router the URI loses the outer prefix; the URI as sent keeps it, as axum's
/// `OriginalUri` does, and that extension stays for code that reads it.
#[tokio::test]
async fn a_nested_route_sees_the_uri_as_sent() {
    let inner = axum::Router::new().route("/ws/{room}", request_seen_route());
    let server = TestServer::router(axum::Router::new().nest("/api", inner)).await;
    let mut client = server.client("/api/ws/hall?x=1").connect().await;
    client.send_text("?").await;
    let seen: serde_json::Value = client.recv_json().await;
    assert_eq!(
        seen,
        serde_json::json!({
            "uri": "/ws/hall?x=1", "trace": null, "original": "/api/ws/hall?x=1",
            "original_extension": "/api/ws/hall?x=1",
        })
    );
}
