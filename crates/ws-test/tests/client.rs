//! The client's options: headers, subprotocols, pings, its own close.

use std::time::Duration;

use ws_context::{BindError, Context, Endpoint, Message};
use ws_test::{TestServer, WsClient};
use ws_upgrader::WsUpgrader;

/// Answers with the request's `x-token` header and the chosen subprotocol.
async fn who(ctx: Context) -> Result<serde_json::Value, BindError> {
    let token = ctx
        .headers()
        .get("x-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(serde_json::json!({ "token": token, "protocol": ctx.protocol() }))
}

async fn server() -> TestServer {
    let upgrader = WsUpgrader::builder()
        .subprotocols(["chat", "binary"])
        .build()
        .expect("valid options");
    let endpoint = Endpoint::new(who).upgrader(upgrader);
    TestServer::endpoint("/who", endpoint).await
}

#[tokio::test]
async fn headers_and_subprotocols_reach_the_server() {
    let server = server().await;
    let mut client = server
        .client("/who")
        .header("x-token", "abc")
        .subprotocol("binary")
        .subprotocol("chat")
        .connect()
        .await;
    // The server's order wins.
    assert_eq!(client.protocol(), Some("chat"));
    assert_eq!(
        client.response_header("Sec-WebSocket-Protocol"),
        Some("chat")
    );
    client.send_text("?").await;
    let answer: serde_json::Value = client.recv_json().await;
    assert_eq!(
        answer,
        serde_json::json!({"token": "abc", "protocol": "chat"})
    );
}

#[tokio::test]
async fn pings_are_answered_and_skipped() {
    let server = server().await;
    let mut client = WsClient::connect(server.ws_url("/who")).await;
    client.send(Message::Ping("p".into())).await;
    client.send_text("?").await;
    // The pong is skipped; the handler's answer is the next message.
    let answer: serde_json::Value = client.recv_json().await;
    assert_eq!(answer["protocol"], serde_json::Value::Null);
    assert_eq!(client.recv_within(Duration::from_millis(50)).await, None);
}

#[tokio::test]
async fn the_client_closes_with_a_handshake() {
    let server = server().await;
    let mut client = server.connect("/who").await;
    client.close(4001, "done").await;
}

#[tokio::test]
async fn a_ping_round_trip_passes_when_nothing_came_first() {
    let server = server().await;
    let mut client = server.connect("/who").await;
    client.send_text("?").await;
    let _: serde_json::Value = client.recv_json().await;
    client.ping(b"nothing else").await;
    client.ping(b"").await;
}
