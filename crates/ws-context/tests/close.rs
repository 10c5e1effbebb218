//! DESIGN.md point 5 and the hub's close: every close ends the connection cleanly.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    self,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use ws_context::{ConnectionHub, Context, Endpoint, Message};
use ws_test::{DEFAULT_TIMEOUT as WAIT, TestServer, eventually};

async fn echo(ctx: Context) -> Result<String, ws_context::BindError> {
    ctx.bind()
}

async fn echo_server(hub: &ConnectionHub) -> TestServer {
    let route = Endpoint::new(echo)
        .hub(hub.clone())
        .into_route()
        .expect("valid endpoint options");
    TestServer::router(axum::Router::new().route("/ws", route)).await
}

#[tokio::test]
async fn peer_close_with_any_code_completes_the_handshake_and_ends_the_task() {
    let hub = ConnectionHub::new();
    let server = echo_server(&hub).await;
    // tokio-tungstenite's own client: this test is about the closing handshake on the wire
    // (a close without a code, the stream's end), which the kit's client does for us.
    for code in [Some(1000), Some(1001), None, Some(4000)] {
        let (mut client, _) = tokio_tungstenite::connect_async(server.ws_url("/ws"))
            .await
            .unwrap();
        client.send(tungstenite::Message::text("x")).await.unwrap();
        let echo = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        assert_eq!(echo.unwrap().unwrap(), tungstenite::Message::text("x"));
        eventually("connection registered", || hub.len() == 1).await;

        let frame = code.map(|code| CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        });
        client.close(frame).await.unwrap();
        // The server answers our close; the stream then ends.
        let echoed = match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(tungstenite::Message::Close(frame))) => frame.map_or(1005, |f| f.code.into()),
            other => panic!("expected the server's close, got {other:?}"),
        };
        assert_eq!(
            echoed,
            code.unwrap_or(1005)
                .min(if code.is_none() { 1005 } else { u16::MAX })
        );
        let end = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
        eventually("connection task ended", || hub.is_empty()).await;
    }
}

#[tokio::test]
async fn a_dropped_tcp_connection_ends_the_task() {
    let hub = ConnectionHub::new();
    let server = echo_server(&hub).await;
    let client = server.connect("/ws").await;
    eventually("connection registered", || hub.len() == 1).await;
    drop(client);
    eventually("connection task ended", || hub.is_empty()).await;
}

#[tokio::test]
async fn hub_closes_one_connection_with_code_and_reason() {
    let hub = ConnectionHub::new();
    let server = echo_server(&hub).await;
    let mut keep = server.connect("/ws").await;
    eventually("first registered", || hub.len() == 1).await;
    let first = hub.list()[0].id.clone();
    let mut kicked = server.connect("/ws").await;
    eventually("second registered", || hub.len() == 2).await;
    let second = hub.list().into_iter().find(|c| c.id != first).unwrap().id;

    assert!(hub.close(
        &second,
        ws_context::CloseFrame::new(4001, "kicked").unwrap()
    ));
    assert_eq!(kicked.expect_close(4001).await, "kicked");
    keep.send_text("still open").await;
    assert_eq!(keep.recv_text().await, "still open");
    eventually("kicked one removed", || hub.len() == 1).await;
}

#[tokio::test]
async fn close_all_sends_1001_to_everyone() {
    let hub = ConnectionHub::new();
    let server = echo_server(&hub).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.connect("/ws").await);
    }
    eventually("all registered", || hub.len() == 10).await;
    assert_eq!(
        hub.close_all(ws_context::CloseFrame::going_away("server shutting down")),
        10
    );
    for client in &mut clients {
        client.expect_close(1001).await;
    }
    tokio::time::timeout(WAIT, hub.wait_empty()).await.unwrap();
}

/// Fills its own queue, then asks the hub to close its connection: the queue being full, the
/// close skips it (the urgent close), and is noticed after the handler's turn.
async fn fill_then_close(ctx: Context) -> Result<(), ws_context::BindError> {
    let socket = ctx.socket();
    let mut queued = 0;
    while socket
        .try_send(ws_context::Message::text(format!("q{queued}")))
        .is_ok()
    {
        queued += 1;
    }
    assert_eq!(queued, 4, "the queue holds its capacity");
    assert!(
        ctx.hub()
            .close(ctx.id(), ws_context::CloseFrame::new(4000, "full").unwrap())
    );
    Ok(())
}

#[tokio::test]
async fn a_close_that_skips_a_full_queue_is_sent_after_the_handler_returns() {
    let hub = ConnectionHub::new();
    let server = TestServer::endpoint(
        "/ws",
        Endpoint::new(fill_then_close)
            .hub(hub.clone())
            .queue_capacity(4),
    )
    .await;
    let mut client = server.connect("/ws").await;
    client.send_text("go").await;
    // What the handler queued before the close may or may not go out; the close must.
    let close = client.recv_until_close().await;
    assert_eq!(close.map(|frame| frame.code()), Some(4000));
    eventually("connection gone", || hub.is_empty()).await;
}

/// Issue 12: no close code a peer may not receive reaches the wire through the hub, and
/// reasons fit a control frame.
#[tokio::test]
async fn hub_close_sends_no_local_only_code_and_cuts_long_reasons() {
    let hub = ConnectionHub::new();
    let server = echo_server(&hub).await;

    // A frame that only reports (1006) goes out as a close without a code: the peer sees
    // 1005, and the handshake completes instead of failing with 1002.
    let mut client = server.connect("/ws").await;
    eventually("registered", || hub.len() == 1).await;
    let id = hub.list()[0].id.clone();
    assert!(hub.close(&id, ws_context::CloseFrame::abnormal("dropped")));
    assert_eq!(client.recv().await, Message::Close(None));
    eventually("connection gone", || hub.is_empty()).await;

    // A long reason is cut at a character boundary to 123 bytes.
    let mut client = server.connect("/ws").await;
    eventually("registered", || hub.len() == 1).await;
    let id = hub.list()[0].id.clone();
    let frame = ws_context::CloseFrame::new(4000, "é".repeat(100)).unwrap();
    assert!(hub.close(&id, frame));
    assert_eq!(client.expect_close(4000).await, "é".repeat(61));
    eventually("connection gone", || hub.is_empty()).await;

    // Codes a peer may not receive cannot be made into a frame at all.
    for code in [1004, 1005, 1006, 1015, 2000, 5000] {
        assert!(ws_context::CloseFrame::new(code, "x").is_err(), "{code}");
    }
}
