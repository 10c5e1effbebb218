//! DESIGN.md points 1-4: one call per message, bind, replies, errors and panics.

use futures_util::SinkExt as _;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use ws_context::{Bytes, ConnectionHub, Context, Endpoint};

use crate::support::{closed_with, connect, next_data, serve};

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
    let addr = serve(
        axum::Router::new().route(
            "/ws",
            Endpoint::new(double)
                .into_route()
                .expect("valid endpoint options"),
        ),
    )
    .await;
    let mut client = connect(addr, "/ws").await;

    client
        .send(Message::text(r#"{"item":"tea","qty":2}"#))
        .await
        .unwrap();
    let reply: Order =
        serde_json::from_str(next_data(&mut client).await.to_text().unwrap()).unwrap();
    assert_eq!(
        reply,
        Order {
            item: "tea".into(),
            qty: 4
        }
    );

    client
        .send(Message::text(r#"{"item":"tea","qty":"two"}"#))
        .await
        .unwrap();
    let error = next_data(&mut client).await;
    let error: serde_json::Value = serde_json::from_str(error.to_text().unwrap()).unwrap();
    let text = error["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("invalid type") && text.contains("u32"),
        "{text}"
    );

    // The same connection serves the next valid message normally.
    client
        .send(Message::text(r#"{"item":"ice","qty":5}"#))
        .await
        .unwrap();
    let reply: Order =
        serde_json::from_str(next_data(&mut client).await.to_text().unwrap()).unwrap();
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
    let addr = serve(router).await;

    let mut client = connect(addr, "/text").await;
    client
        .send(Message::text(r#""quoted" {json}"#))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut client).await,
        Message::text(r#""quoted" {json}"#)
    );

    let mut client = connect(addr, "/bytes").await;
    let payload = vec![0u8, 255, 7, 128];
    client.send(Message::binary(payload.clone())).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::binary(payload));
}

async fn silent(_ctx: Context) -> Result<(), std::convert::Infallible> {
    Ok(())
}

#[tokio::test]
async fn unit_writes_nothing() {
    let addr = serve(
        axum::Router::new().route(
            "/ws",
            Endpoint::new(silent)
                .into_route()
                .expect("valid endpoint options"),
        ),
    )
    .await;
    let mut client = connect(addr, "/ws").await;
    client.send(Message::text("one")).await.unwrap();
    client
        .send(Message::Ping(Bytes::from_static(b"probe")))
        .await
        .unwrap();
    // The pong to our ping is the first frame back: the handler wrote nothing (GoFr: "null").
    let first = tokio::time::timeout(
        crate::support::WAIT,
        futures_util::StreamExt::next(&mut client),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(first, Message::Pong(Bytes::from_static(b"probe")));
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
    let route = Endpoint::new(panics_on_boom)
        .hub(hub.clone())
        .into_route()
        .expect("valid endpoint options");
    let addr = serve(axum::Router::new().route("/ws", route)).await;
    let mut victim = connect(addr, "/ws").await;
    let mut bystander = connect(addr, "/ws").await;

    victim.send(Message::text("boom")).await.unwrap();
    assert_eq!(closed_with(&mut victim).await, 1011);

    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, Message::text("still here"));
    crate::support::eventually("victim removed from hub", || hub.len() == 1).await;
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
    let route = Endpoint::new(panics_before_its_future)
        .hub(hub.clone())
        .into_route()
        .expect("valid endpoint options");
    let addr = serve(axum::Router::new().route("/ws", route)).await;
    let mut victim = connect(addr, "/ws").await;
    let mut bystander = connect(addr, "/ws").await;

    victim.send(Message::text("fine")).await.unwrap();
    assert_eq!(next_data(&mut victim).await, Message::text("fine"));
    victim.send(Message::text("boom")).await.unwrap();
    assert_eq!(closed_with(&mut victim).await, 1011);

    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, Message::text("still here"));
    crate::support::eventually("victim removed from hub", || hub.len() == 1).await;
}

async fn counts_calls(ctx: Context) -> Result<(), ws_context::WriteError> {
    // A handler that never binds is called once per message, not in a loop (GoFr floods).
    ctx.write_message_to_socket("called").await
}

#[tokio::test]
async fn a_handler_that_never_binds_is_called_once_per_message() {
    let addr = serve(
        axum::Router::new().route(
            "/ws",
            Endpoint::new(counts_calls)
                .into_route()
                .expect("valid endpoint options"),
        ),
    )
    .await;
    let mut client = connect(addr, "/ws").await;
    client.send(Message::text("a")).await.unwrap();
    client.send(Message::text("b")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("called"));
    assert_eq!(next_data(&mut client).await, Message::text("called"));
    client.send(Message::Ping(Bytes::new())).await.unwrap();
    assert_eq!(
        tokio::time::timeout(
            crate::support::WAIT,
            futures_util::StreamExt::next(&mut client)
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap(),
        Message::Pong(Bytes::new()),
        "no third call"
    );
}
