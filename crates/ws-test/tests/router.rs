//! `TestServer::router` / `router_with_hub` with ws-context endpoints, no gofr-app.

use std::time::Duration;

use ws_context::{BindError, CloseFrame, Connection, ConnectionHub, Context, Endpoint, Message};
use ws_test::{TestServer, eventually};

/// Writes back what came, text as text and binary as binary.
async fn echo(ctx: Context) -> Result<Message, BindError> {
    Ok(ctx.message().clone())
}

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    conn.hub().join(conn.id(), &room).await;
    Ok(())
}

async fn to_room(ctx: Context) -> Result<(), BindError> {
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub().send_to_room(room, ctx.message().clone()).await;
    Ok(())
}

fn rooms(hub: &ConnectionHub) -> axum::Router {
    let endpoint = Endpoint::new(to_room)
        .on_connect(join_room)
        .hub(hub.clone());
    axum::Router::new()
        .route("/echo", crate::route(Endpoint::new(echo).hub(hub.clone())))
        .route("/ws/{room}", crate::route(endpoint))
}

#[tokio::test]
async fn a_router_echoes_text_and_binary() {
    let server = TestServer::router(rooms(&ConnectionHub::new())).await;
    let mut client = server.connect("/echo").await;
    client.send_text("héllo").await;
    assert_eq!(client.recv_text().await, "héllo");
    client.send_binary(vec![0u8, 200, 3]).await;
    assert_eq!(&client.recv_binary().await[..], &[0, 200, 3]);
    assert!(server.ws_url("/echo").starts_with("ws://127.0.0.1:"));
    assert!(server.http_url("/").starts_with("http://127.0.0.1:"));
    assert_eq!(server.metrics_url(), None);
}

#[tokio::test]
async fn rooms_members_and_connections_are_seen_through_the_hub() {
    let hub = ConnectionHub::new();
    let server = TestServer::router_with_hub(rooms(&hub), hub).await;
    let mut red1 = server.connect("/ws/red").await;
    let mut red2 = server.connect("/ws/red").await;
    let mut blue = server.connect("/ws/blue").await;
    server.expect_connections(3).await;
    server.expect_room_size("red", 2).await;
    server.expect_member("red", &red1, true).await;
    server.expect_member("blue", &red1, false).await;
    let id = server.connection_id(&blue).await;
    assert_eq!(server.hub().room_members("blue"), vec![id]);

    red1.send_text("to red").await;
    assert_eq!(red1.recv_text().await, "to red");
    assert_eq!(red2.recv_text().await, "to red");
    blue.expect_nothing_for(Duration::from_millis(100)).await;

    red2.close(1000, "bye").await;
    server.expect_room_size("red", 1).await;
    server.expect_connections(2).await;
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001_and_waits() {
    let hub = ConnectionHub::new();
    let server = TestServer::router_with_hub(rooms(&hub), hub.clone()).await;
    let mut a = server.connect("/echo").await;
    let mut b = server.connect("/ws/x").await;
    server.expect_connections(2).await;
    let stop = server.stop_handle();
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(a.expect_close(1001).await, "test server stopped");
    b.expect_close(1001).await;
    stopping.await.expect("shutdown finished");
    drop(stop);
    eventually("the hub to be empty", || hub.is_empty()).await;
}

#[tokio::test]
async fn a_server_close_code_is_read_with_its_reason() {
    let hub = ConnectionHub::new();
    let server = TestServer::router_with_hub(rooms(&hub), hub).await;
    let mut client = server.connect("/ws/lobby").await;
    let id = server.connection_id(&client).await;
    let kicked = CloseFrame::new(4000, "kicked").expect("an application code");
    assert!(server.hub().close(&id, kicked));
    assert_eq!(client.expect_close(4000).await, "kicked");
}

#[tokio::test]
async fn recv_until_close_drops_what_came_before_the_close() {
    let hub = ConnectionHub::new();
    let server = TestServer::router_with_hub(rooms(&hub), hub).await;
    let mut client = server.connect("/ws/lobby").await;
    server.expect_room_size("lobby", 1).await;
    client.send_text("before").await;
    client.send_text("the close").await;
    let id = server.connection_id(&client).await;
    let kicked = CloseFrame::new(4000, "kicked").expect("an application code");
    assert!(server.hub().close(&id, kicked));
    let close = client.recv_until_close().await;
    assert_eq!(
        close.as_ref().map(|frame| (frame.code(), frame.reason())),
        Some((4000, "kicked"))
    );
}

#[tokio::test]
async fn a_reset_client_leaves_the_hub_without_a_close_frame() {
    let hub = ConnectionHub::new();
    let server = TestServer::router_with_hub(rooms(&hub), hub).await;
    let client = server.connect("/ws/lobby").await;
    let mut other = server.connect("/ws/lobby").await;
    server.expect_room_size("lobby", 2).await;
    client.reset();
    server.expect_room_size("lobby", 1).await;
    server.expect_connections(1).await;
    other.send_text("still here").await;
    assert_eq!(other.recv_text().await, "still here");
}
