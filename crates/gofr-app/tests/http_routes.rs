//! GoFr's JSON envelope on HTTP routes, and the health endpoints.

use gofr_app::{App, Error, HttpContext};
use serde::{Deserialize, Serialize};

use ws_test::{HttpResponse, TestServer, http_get, http_post_text};

use crate::support::config;

#[derive(Serialize, Deserialize)]
struct Order {
    item: String,
}

async fn hello(ctx: HttpContext) -> Result<String, Error> {
    let name = ctx.query_param("name").unwrap_or_else(|| "World".into());
    Ok(format!("Hello {name}!"))
}

async fn create(ctx: HttpContext) -> Result<Order, Error> {
    ctx.bind()
}

async fn find(ctx: HttpContext) -> Result<Order, Error> {
    match ctx.path_param("id") {
        Some("1") => Ok(Order { item: "tea".into() }),
        other => Err(Error::not_found(format!(
            "no order {}",
            other.unwrap_or("?")
        ))),
    }
}

async fn broken(_ctx: HttpContext) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("disk on fire"))
}

#[tokio::test]
async fn envelope_statuses_and_errors() {
    let mut app = App::with_config(config());
    app.get("/hello", hello)
        .post("/orders", create)
        .get("/orders/{id}", find)
        .get("/broken", broken);
    let server = TestServer::app(app).await;

    let HttpResponse { status, body, .. } = http_get(&server.http_url("/hello?name=Ada")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"data":"Hello Ada!"}"#));

    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/orders"), r#"{"item":"cake"}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (201, r#"{"data":{"item":"cake"}}"#)
    );

    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/orders"), r#"{"item":1}"#).await;
    assert_eq!(status, 400);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid type")
    );

    let HttpResponse { status, body, .. } = http_get(&server.http_url("/orders/1")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"data":{"item":"tea"}}"#));
    let HttpResponse { status, body, .. } = http_get(&server.http_url("/orders/9")).await;
    assert_eq!(
        (status, body.as_str()),
        (404, r#"{"error":{"message":"no order 9"}}"#)
    );
    let HttpResponse { status, body, .. } = http_get(&server.http_url("/broken")).await;
    assert_eq!(
        (status, body.as_str()),
        (500, r#"{"error":{"message":"disk on fire"}}"#)
    );

    let HttpResponse { status, body, .. } = http_get(&server.http_url("/.well-known/alive")).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"data":{"status":"UP"}}"#)
    );
    let HttpResponse { status, body, .. } = http_get(&server.http_url("/.well-known/health")).await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["data"]["websocket"]["connections"], 0);

    server.shutdown().await;
}
