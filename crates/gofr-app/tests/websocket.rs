//! WebSocket routes of the app: the override upgrader, the hub and the shutdown handle.

use gofr_app::{App, Context, Error, HttpContext, Message, WsUpgrader};
use test_support::{header, raw_request, upgrade_request};
use ws_test::{HttpResponse, TestServer, http_post_text};

use crate::support::config;

async fn whoami(ctx: Context) -> Result<serde_json::Value, Error> {
    Ok(serde_json::json!({ "id": ctx.id().as_str(), "protocol": ctx.protocol() }))
}

async fn announce(ctx: HttpContext) -> Result<usize, Error> {
    let text: String = ctx.bind()?;
    Ok(ctx.hub().broadcast(Message::text(text)).await)
}

#[tokio::test]
async fn override_upgrader_hub_broadcast_and_graceful_shutdown() {
    let mut app = App::with_config(config());
    // Registered before the override: the override still applies (as in GoFr).
    app.websocket("/ws", whoami);
    app.override_websocket_upgrader(
        WsUpgrader::builder()
            .subprotocols(["chat", "binary"])
            .build()
            .unwrap(),
    );
    app.post("/announce", announce);
    let hub = app.hub();
    let server = TestServer::app(app).await;

    let mut client = server
        .client("/ws")
        .subprotocols(["binary", "chat"])
        .connect()
        .await;
    // The server's preference wins over the client's order.
    assert_eq!(client.protocol(), Some("chat"));

    client.send_text("who?").await;
    let reply: serde_json::Value = client.recv_json().await;
    assert_eq!(reply["protocol"], "chat");
    assert!(
        reply["id"]
            .as_str()
            .unwrap()
            .starts_with(gofr_app::context::node_id())
    );

    // The app's hub lists the connection with its route, peer and subprotocol.
    let listed = hub.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id.as_str(), reply["id"].as_str().unwrap());
    assert_eq!(
        (&*listed[0].route, listed[0].protocol.as_deref()),
        ("/ws", Some("chat"))
    );
    assert!(listed[0].remote_addr.is_some_and(|a| a.ip().is_loopback()));

    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/announce"), "maintenance at noon").await;
    assert_eq!((status, body.as_str()), (201, r#"{"data":1}"#));
    assert_eq!(client.recv_text().await, "maintenance at noon");

    server.stop_handle().shutdown();
    client.expect_close(1001).await;
    server.shutdown().await;
}

/// An upgrade request still on its way through the app (here an auth-like middleware that
/// takes 500 ms) when the shutdown starts is refused with 503 and `Retry-After`, so its client
/// tries again, elsewhere in a rolling deploy; not answered with a 101 that the closing HTTP
/// connection marks `Connection: upgrade, close`, only to be closed with 1001.
#[tokio::test]
async fn an_upgrade_under_way_when_the_shutdown_starts_gets_503() {
    async fn slow_auth(
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        if request.headers().contains_key("x-slow") {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        next.run(request).await
    }

    let mut app = App::with_config(config());
    app.websocket("/ws", whoami);
    app.layer(axum::middleware::from_fn(slow_auth));
    let hub = app.hub();
    let server = TestServer::app(app).await;
    // An open socket keeps the server in its grace period.
    let mut open = server.connect("/ws").await;
    let addr = server.addr();
    let late = tokio::spawn(async move {
        raw_request(addr, &upgrade_request(addr, "/ws", "X-Slow: 1\r\n")).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    server.stop_handle().shutdown();
    open.expect_close(1001).await;
    let (_, status, headers) = late.await.unwrap();
    assert_eq!(
        status, 503,
        "an upgrade under way at shutdown got: {headers:?}"
    );
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    assert_eq!(hub.len(), 0, "the refused upgrade became a connection");
    server.shutdown().await;
}
