//! DESIGN.md point 5 and the hub's close: every close ends the connection cleanly.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use ws_context::{ConnectionHub, Context, Endpoint};

use crate::support::{WAIT, close_code, closed_with, connect, eventually, next_data, serve};

async fn echo(ctx: Context) -> Result<String, ws_context::BindError> {
    ctx.bind()
}

async fn echo_server(hub: &ConnectionHub) -> std::net::SocketAddr {
    let route = Endpoint::new(echo)
        .hub(hub.clone())
        .into_route()
        .expect("valid endpoint options");
    serve(axum::Router::new().route("/ws", route)).await
}

#[tokio::test]
async fn peer_close_with_any_code_completes_the_handshake_and_ends_the_task() {
    let hub = ConnectionHub::new();
    let addr = echo_server(&hub).await;
    for code in [Some(1000), Some(1001), None, Some(4000)] {
        let mut client = connect(addr, "/ws").await;
        client.send(Message::text("x")).await.unwrap();
        assert_eq!(next_data(&mut client).await, Message::text("x"));
        eventually("connection registered", || hub.len() == 1).await;

        let frame = code.map(|code| CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        });
        client.close(frame).await.unwrap();
        // The server answers our close; the stream then ends.
        let echoed = close_code(&mut client).await;
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
    let addr = echo_server(&hub).await;
    let client = connect(addr, "/ws").await;
    eventually("connection registered", || hub.len() == 1).await;
    drop(client);
    eventually("connection task ended", || hub.is_empty()).await;
}

#[tokio::test]
async fn hub_closes_one_connection_with_code_and_reason() {
    let hub = ConnectionHub::new();
    let addr = echo_server(&hub).await;
    let mut keep = connect(addr, "/ws").await;
    eventually("first registered", || hub.len() == 1).await;
    let first = hub.list()[0].id.clone();
    let mut kicked = connect(addr, "/ws").await;
    eventually("second registered", || hub.len() == 2).await;
    let second = hub.list().into_iter().find(|c| c.id != first).unwrap().id;

    assert!(hub.close(
        &second,
        ws_context::CloseFrame::new(4001, "kicked").unwrap()
    ));
    match tokio::time::timeout(WAIT, kicked.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "kicked");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, kicked.next()).await.unwrap() {}
    keep.send(Message::text("still open")).await.unwrap();
    assert_eq!(next_data(&mut keep).await, Message::text("still open"));
    eventually("kicked one removed", || hub.len() == 1).await;
}

#[tokio::test]
async fn close_all_sends_1001_to_everyone() {
    let hub = ConnectionHub::new();
    let addr = echo_server(&hub).await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(addr, "/ws").await);
    }
    eventually("all registered", || hub.len() == 10).await;
    assert_eq!(
        hub.close_all(ws_context::CloseFrame::going_away("server shutting down")),
        10
    );
    for client in &mut clients {
        assert_eq!(closed_with(client).await, 1001);
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
    let route = Endpoint::new(fill_then_close)
        .hub(hub.clone())
        .queue_capacity(4)
        .into_route()
        .expect("valid endpoint options");
    let addr = serve(axum::Router::new().route("/ws", route)).await;
    let mut client = connect(addr, "/ws").await;
    client.send(Message::text("go")).await.unwrap();
    // What the handler queued before the close may or may not go out; the close must.
    assert_eq!(closed_with(&mut client).await, 4000);
    eventually("connection gone", || hub.is_empty()).await;
}

/// Issue 12: no close code a peer may not receive reaches the wire through the hub, and
/// reasons fit a control frame.
#[tokio::test]
async fn hub_close_sends_no_local_only_code_and_cuts_long_reasons() {
    let hub = ConnectionHub::new();
    let addr = echo_server(&hub).await;

    // A frame that only reports (1006) goes out as a close without a code: the peer sees
    // 1005, and the handshake completes instead of failing with 1002.
    let mut client = connect(addr, "/ws").await;
    eventually("registered", || hub.len() == 1).await;
    let id = hub.list()[0].id.clone();
    assert!(hub.close(&id, ws_context::CloseFrame::abnormal("dropped")));
    assert_eq!(closed_with(&mut client).await, 1005);
    eventually("connection gone", || hub.is_empty()).await;

    // A long reason is cut at a character boundary to 123 bytes.
    let mut client = connect(addr, "/ws").await;
    eventually("registered", || hub.len() == 1).await;
    let id = hub.list()[0].id.clone();
    let frame = ws_context::CloseFrame::new(4000, "é".repeat(100)).unwrap();
    assert!(hub.close(&id, frame));
    match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), "é".repeat(61));
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, client.next()).await.unwrap() {}
    eventually("connection gone", || hub.is_empty()).await;

    // Codes a peer may not receive cannot be made into a frame at all.
    for code in [1004, 1005, 1006, 1015, 2000, 5000] {
        assert!(ws_context::CloseFrame::new(code, "x").is_err(), "{code}");
    }
}
