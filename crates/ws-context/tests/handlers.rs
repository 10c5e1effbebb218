//! DESIGN.md points 1-4: one call per message, bind, replies, errors and panics.

use serde::{Deserialize, Serialize};
use ws_context::{Bytes, ConnectionHub, Context, Endpoint, Message};
use ws_test::{TestServer, eventually};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Order {
    item: String,
    qty: u32,
}

async fn double(ctx: Context) -> Result<Order, ws_context::BindError> {
    let mut order: Order = ctx.bind()?;
    order.qty *= 2;
    Ok(order)
}

#[tokio::test]
async fn json_struct_round_trip_and_bad_json_gets_one_error_frame() {
    let server = TestServer::endpoint("/ws", Endpoint::new(double)).await;
    let mut client = server.connect("/ws").await;

    client.send_text(r#"{"item":"tea","qty":2}"#).await;
    let reply: Order = client.recv_json().await;
    assert_eq!(
        reply,
        Order {
            item: "tea".into(),
            qty: 4
        }
    );

    client.send_text(r#"{"item":"tea","qty":"two"}"#).await;
    let error: serde_json::Value = client.recv_json().await;
    let text = error["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("invalid type") && text.contains("u32"),
        "{text}"
    );

    // The same connection serves the next valid message normally.
    client.send_text(r#"{"item":"ice","qty":5}"#).await;
    let reply: Order = client.recv_json().await;
    assert_eq!(reply.qty, 10);
}

async fn raw_text(ctx: Context) -> Result<String, ws_context::BindError> {
    ctx.bind::<String>()
}

async fn raw_bytes(ctx: Context) -> Result<Bytes, ws_context::BindError> {
    ctx.bind::<Bytes>()
}

#[tokio::test]
async fn string_binds_raw_text_and_bytes_stay_binary() {
    let router = axum::Router::new()
        .route(
            "/text",
            Endpoint::new(raw_text)
                .into_route()
                .expect("valid endpoint options"),
        )
        .route(
            "/bytes",
            Endpoint::new(raw_bytes)
                .into_route()
                .expect("valid endpoint options"),
        );
    let server = TestServer::router(router).await;

    let mut client = server.connect("/text").await;
    client.send_text(r#""quoted" {json}"#).await;
    assert_eq!(client.recv_text().await, r#""quoted" {json}"#);

    let mut client = server.connect("/bytes").await;
    let payload = vec![0u8, 255, 7, 128];
    client.send_binary(payload.clone()).await;
    assert_eq!(client.recv_binary().await, payload);
}

async fn silent(_ctx: Context) -> Result<(), std::convert::Infallible> {
    Ok(())
}

#[tokio::test]
async fn unit_writes_nothing() {
    let server = TestServer::endpoint("/ws", Endpoint::new(silent)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("one").await;
    // The pong to our ping is the first frame back: the handler wrote nothing (GoFr: "null").
    client.ping(b"probe").await;
}

async fn panics_on_boom(ctx: Context) -> Result<String, ws_context::BindError> {
    let text: String = ctx.bind()?;
    if text == "boom" {
        panic!("handler exploded");
    }
    Ok(text)
}

#[tokio::test]
async fn a_panic_closes_only_its_connection_with_1011() {
    let hub = ConnectionHub::new();
    let server = TestServer::endpoint("/ws", Endpoint::new(panics_on_boom).hub(hub.clone())).await;
    let mut victim = server.connect("/ws").await;
    let mut bystander = server.connect("/ws").await;

    victim.send_text("boom").await;
    victim.expect_close(1011).await;

    bystander.send_text("still here").await;
    assert_eq!(bystander.recv_text().await, "still here");
    eventually("victim removed from hub", || hub.len() == 1).await;
}

/// Panics before making its future, in the closure's synchronous part.
fn panics_before_its_future(
    ctx: Context,
) -> impl Future<Output = Result<String, ws_context::BindError>> {
    let text: Result<String, _> = ctx.bind();
    if text.as_deref().is_ok_and(|text| text == "boom") {
        panic!("handler exploded before its future");
    }
    async move { text }
}

#[tokio::test]
async fn a_panic_in_the_synchronous_part_of_a_handler_closes_with_1011() {
    let hub = ConnectionHub::new();
    let server = TestServer::endpoint(
        "/ws",
        Endpoint::new(panics_before_its_future).hub(hub.clone()),
    )
    .await;
    let mut victim = server.connect("/ws").await;
    let mut bystander = server.connect("/ws").await;

    victim.send_text("fine").await;
    assert_eq!(victim.recv_text().await, "fine");
    victim.send_text("boom").await;
    victim.expect_close(1011).await;

    bystander.send_text("still here").await;
    assert_eq!(bystander.recv_text().await, "still here");
    eventually("victim removed from hub", || hub.len() == 1).await;
}

async fn counts_calls(ctx: Context) -> Result<(), ws_context::WriteError> {
    // A handler that never binds is called once per message, not in a loop (GoFr floods).
    ctx.write_message_to_socket("called").await
}

#[tokio::test]
async fn a_handler_that_never_binds_is_called_once_per_message() {
    let server = TestServer::endpoint("/ws", Endpoint::new(counts_calls)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("a").await;
    client.send_text("b").await;
    assert_eq!(client.recv_text().await, "called");
    assert_eq!(client.recv_text().await, "called");
    // No third call: the pong comes first.
    client.ping(b"").await;
}

/// Answers whether the call got a payload of its own (`true`) or a slice of a block shared
/// with other small messages (`false`); a payload starting with `s` makes the call slow.
async fn owns_its_payload(ctx: Context) -> Result<String, ws_context::BindError> {
    let Message::Binary(data) = ctx.message() else {
        return Ok("not binary".to_owned());
    };
    let owned = data.is_unique();
    if data.first() == Some(&b's') {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    Ok(owned.to_string())
}

#[tokio::test]
async fn after_a_slow_call_the_next_message_keeps_no_shared_block() {
    let server = TestServer::endpoint("/ws", Endpoint::new(owns_its_payload)).await;
    let mut client = server.connect("/ws").await;
    // Each message is sent after the last reply, so no call runs when it comes (a message read
    // ahead while a call runs is copied anyway).
    for (payload, owned) in [
        // Fast calls take their payload from the block: no copy.
        ("fast", "false"),
        // The first slow call cannot be known in advance.
        ("slow", "false"),
        // After it, the next message is copied out, so a slow call would not keep the block.
        ("fast", "true"),
        // A call that finished at once: back to the block.
        ("fast", "false"),
    ] {
        client.send_binary(payload.as_bytes().to_vec()).await;
        assert_eq!(client.recv_text().await, owned, "for {payload}");
    }
}
