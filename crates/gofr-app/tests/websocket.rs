//! WebSocket routes of the app: the override upgrader, the hub and the shutdown handle.

use futures_util::{SinkExt as _, StreamExt as _};
use gofr_app::{App, Context, Error, HttpContext, Message, WsUpgrader};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};

use crate::support::{WAIT, config, http, serve};

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
    let served = serve(app).await;

    let mut request = format!("ws://{}/ws", served.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "binary, chat".parse().unwrap());
    let (mut client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    // The server's preference wins over the client's order.
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");

    client
        .send(tungstenite::Message::text("who?"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
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

    let (status, body) = http(served.addr, "POST", "/announce", "maintenance at noon").await;
    assert_eq!((status, body.as_str()), (201, r#"{"data":1}"#));
    let pushed = tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pushed, tungstenite::Message::text("maintenance at noon"));

    served.shutdown.shutdown();
    match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
        Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001)
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, client.next()).await {}
    tokio::time::timeout(WAIT, served.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// An upgrade request still on its way through the app (here an auth-like middleware that
/// takes 500 ms) when the shutdown starts is refused with 503 and `Retry-After`, so its client
/// tries again, elsewhere in a rolling deploy; not answered with a 101 that the closing HTTP
/// connection marks `Connection: close`, which clients refuse.
#[tokio::test]
async fn an_upgrade_under_way_when_the_shutdown_starts_gets_503() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
    let served = serve(app).await;
    // An open socket keeps the server in its grace period.
    let (mut open, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", served.addr))
        .await
        .unwrap();
    let mut late = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         X-Slow: 1\r\n\r\n",
        served.addr
    );
    late.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    served.shutdown.shutdown();
    let going_away = tokio::time::timeout(WAIT, open.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let tungstenite::Message::Close(Some(frame)) = going_away else {
        panic!("expected a close frame, got {going_away:?}");
    };
    assert_eq!(u16::from(frame.code), 1001);

    let mut response = Vec::new();
    tokio::time::timeout(WAIT, late.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(
        response.starts_with("http/1.1 503"),
        "an upgrade under way at shutdown got:\n{response}"
    );
    assert!(response.contains("retry-after:"), "{response}");
    assert!(response.contains("shutting down"), "{response}");
    assert_eq!(hub.len(), 1, "the refused upgrade became a connection");
    drop(open);
    tokio::time::timeout(WAIT, served.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
