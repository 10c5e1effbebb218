//! WebSocket routes of the app: the override upgrader, the hub and the shutdown handle.

use gofr_app::{App, Context, Error, HttpContext, Message, WsUpgrader};
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
