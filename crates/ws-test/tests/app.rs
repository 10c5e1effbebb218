//! `TestServer::app`: a gofr-app `App` with its layers, hub, metrics and shutdown.

use axum::{extract::Request, middleware::Next, response::Response};
use gofr_app::{App, Context, Error, HttpContext};
use ws_test::{ConnectErrorKind, TestServer, http_get};

#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct Order {
    item: String,
    quantity: u32,
}

async fn double(ctx: Context) -> Result<Order, Error> {
    let mut order: Order = ctx.bind()?;
    order.quantity *= 2;
    ctx.write_message_to_socket("received").await?;
    Ok(order)
}

async fn hello(_ctx: HttpContext) -> Result<&'static str, Error> {
    Ok("Hello World!")
}

/// Refuses a request without `Authorization: Bearer let-me-in` with 401.
async fn auth(request: Request, next: Next) -> Result<Response, axum::http::StatusCode> {
    match request.headers().get("authorization") {
        Some(value) if value == "Bearer let-me-in" => Ok(next.run(request).await),
        _ => Err(axum::http::StatusCode::UNAUTHORIZED),
    }
}

fn app() -> App {
    let mut app = App::new();
    app.get("/hello", hello);
    app.websocket("/ws", double);
    app.layer(axum::middleware::from_fn(auth));
    app
}

#[tokio::test]
async fn an_app_binds_json_writes_and_answers() {
    let server = TestServer::app(app()).await;
    let mut client = server.client("/ws").bearer("let-me-in").connect().await;
    client
        .send_json(&Order {
            item: "tea".into(),
            quantity: 2,
        })
        .await;
    assert_eq!(client.recv_text().await, "received");
    let order: Order = client.recv_json().await;
    assert_eq!(
        order,
        Order {
            item: "tea".into(),
            quantity: 4
        }
    );
    // A bad bind is answered with GoFr's error envelope; the connection stays open.
    client.send_text("not json").await;
    let error: serde_json::Value = client.recv_json().await;
    assert!(error["error"]["message"].is_string(), "{error}");
    server.expect_connections(1).await;
}

#[tokio::test]
async fn an_auth_layer_refuses_before_the_upgrade() {
    let server = TestServer::app(app()).await;
    let refused = server
        .client("/ws")
        .bearer("wrong")
        .try_connect()
        .await
        .expect_err("the layer refuses");
    assert_eq!(refused.status(), Some(401));
    assert!(matches!(refused.kind(), ConnectErrorKind::Refused { .. }));
    server.expect_connections(0).await;
}

#[tokio::test]
async fn http_routes_and_metrics_are_reachable() {
    let server = TestServer::app(app()).await;
    let answer = http_get(&server.http_url("/.well-known/alive")).await;
    assert_eq!(answer.status, 200, "{answer}");
    let metrics = server.metrics_url().expect("an app serves metrics");
    assert_eq!(http_get(&metrics).await.status, 200);
    let unauthorised = http_get(&server.http_url("/hello")).await;
    assert_eq!(unauthorised.status, 401);
}

#[tokio::test]
async fn an_app_shuts_down_with_1001() {
    let server = TestServer::app(app()).await;
    let mut client = server.client("/ws").bearer("let-me-in").connect().await;
    server.expect_connections(1).await;
    let stopping = tokio::spawn(server.shutdown());
    client.expect_close(1001).await;
    stopping.await.expect("the app stopped");
}
