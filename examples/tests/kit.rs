//! The `chat` and `using-web-socket` examples tested with the ws-test kit only: processes on
//! ports the OS picks (`AppProcess`), a client whose waits are bounded, and, for what the
//! examples do not have (authentication), GoFr's handler in an in-process `App` behind an
//! auth layer (`TestServer::app`).

use std::time::Duration;

use ws_test::{AppProcess, TestServer, WsClient, http_get};

use crate::chat::{chat_json, chatter};

mod chat;

/// A chat line as the `chat` example writes it.
#[derive(serde::Deserialize, Debug)]
struct Line {
    from: String,
    text: String,
    at: u64,
}

/// The next chat line, presence lines skipped.
async fn chat_line(client: &mut WsClient) -> Line {
    let line = chat_json(client).await;
    serde_json::from_value(line.clone()).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[tokio::test]
async fn using_web_socket_greets_then_echoes_with_and_without_compression() {
    let server = AppProcess::example("using-web-socket", &[]);
    for deflate in [false, true] {
        let mut client = server.client("/ws").deflate(deflate).connect().await;
        assert_eq!(client.deflate(), deflate);
        client.send_text("hi").await;
        assert_eq!(client.recv_text().await, "Hello! GoFr");
        assert_eq!(client.recv_text().await, "hi");
        client.close(1000, "done").await;
    }
}

#[tokio::test]
async fn using_web_socket_chooses_the_subprotocol_and_checks_the_origin_header() {
    let server = AppProcess::example("using-web-socket", &[]);
    let client = server
        .client("/ws")
        .subprotocol("binary")
        .subprotocol("chat")
        .connect()
        .await;
    // The server's order wins.
    assert_eq!(client.protocol(), Some("chat"));

    // Same-origin by default: a page from elsewhere is refused before any socket exists.
    server
        .client("/ws")
        .header("Origin", "http://evil.example")
        .expect_refused(403)
        .await;
    let same = format!("http://{}", server.addr());
    let mut allowed = server.client("/ws").header("Origin", same).connect().await;
    allowed.send_text("ok").await;
    assert_eq!(allowed.recv_text().await, "Hello! GoFr");
}

#[tokio::test]
async fn chat_keeps_rooms_apart_and_answers_bad_input_with_a_json_error() {
    let server = AppProcess::example("chat", &[]);
    let page = http_get(&server.http_url("/")).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<script>") && page.body.contains("new WebSocket"),
        "{page}"
    );

    let mut carol = chatter(&server, "blue", "carol").await;
    let mut alice = chatter(&server, "red", "alice").await;
    let mut bob = chatter(&server, "red", "bob").await;
    let line = chat_line(&mut alice).await;
    assert_eq!(line.text, "hello from bob");

    alice.send_text("hi red").await;
    for client in [&mut alice, &mut bob] {
        let line = chat_line(client).await;
        assert_eq!(
            (line.from.as_str(), line.text.as_str()),
            ("alice", "hi red")
        );
        assert!(line.at > 1_600_000_000_000, "{line:?}");
    }
    carol.expect_nothing_for(Duration::from_millis(200)).await;

    // A message the handler's bind refuses: GoFr's error envelope, to the sender only.
    bob.send_text("   ").await;
    let error = chat_json(&mut bob).await;
    assert!(error["error"]["message"].is_string(), "{error}");
    alice.expect_nothing_for(Duration::from_millis(100)).await;

    let metrics = server.metrics_url().expect("chat logs its metrics address");
    let text = http_get(&metrics).await.body;
    assert!(
        text.lines()
            .any(|l| l == r#"ws_connections_open{route="/ws/{room}"} 3"#),
        "{text}"
    );
}

#[tokio::test]
async fn chat_kicks_with_4000_and_the_others_stay() {
    let server = AppProcess::example("chat", &[]);
    let mut alice = chatter(&server, "red", "alice").await;
    let mut bob = chatter(&server, "red", "bob").await;
    assert_eq!(chat_line(&mut alice).await.text, "hello from bob");

    bob.send_text("/me").await;
    let me = chat_json(&mut bob).await;
    let bob_id = me["text"].as_str().expect("an id").to_owned();

    alice.send_text(format!("/kick {bob_id}")).await;
    assert_eq!(bob.expect_close(4000).await, "removed by alice");
    // Alice is still served.
    alice.send_text("still here").await;
    let line = chat_line(&mut alice).await;
    assert_eq!(line.text, "still here");
    // An unknown id is answered with an error, not a close.
    alice.send_text("/kick nobody").await;
    let error = chat_json(&mut alice).await;
    assert!(error["error"]["message"].is_string(), "{error}");
}

#[tokio::test]
async fn sigterm_closes_the_chat_with_1001() {
    let mut server = AppProcess::example("chat", &[("SHUTDOWN_GRACE_PERIOD", "1s")]);
    let mut alice = chatter(&server, "red", "alice").await;
    server.terminate();
    alice.expect_close(1001).await;
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

/// GoFr's handler of `using-web-socket`, served in-process behind an authentication layer,
/// since neither example authenticates.
mod auth {
    use axum::{extract::Request, http::StatusCode, middleware::Next, response::Response};
    use gofr_app::{App, Context, Error};
    use ws_test::TestServer;

    async fn ws_handler(ctx: Context) -> Result<String, Error> {
        let message: String = ctx.bind()?;
        ctx.write_message_to_socket("Hello! GoFr").await?;
        Ok(message)
    }

    async fn bearer(request: Request, next: Next) -> Result<Response, StatusCode> {
        match request.headers().get("authorization") {
            Some(token) if token == "Bearer open-sesame" => Ok(next.run(request).await),
            _ => Err(StatusCode::UNAUTHORIZED),
        }
    }

    pub(super) async fn server() -> TestServer {
        let mut app = App::new();
        app.websocket("/ws", ws_handler);
        app.layer(axum::middleware::from_fn(bearer));
        TestServer::app(app).await
    }
}

#[tokio::test]
async fn an_auth_header_is_needed_before_the_upgrade() {
    let server: TestServer = auth::server().await;
    // No token, then a wrong one.
    server.client("/ws").expect_refused(401).await;
    server
        .client("/ws")
        .bearer("guess")
        .expect_refused(401)
        .await;
    server.expect_connections(0).await;

    let mut client = server.client("/ws").bearer("open-sesame").connect().await;
    server.expect_connections(1).await;
    client.send_text("hi").await;
    assert_eq!(client.recv_text().await, "Hello! GoFr");
    assert_eq!(client.recv_text().await, "hi");
}
