//! What a failing test says: each helper's panic names what it awaited and what came.

use std::time::Duration;

use ws_context::{BindError, CloseFrame, ConnectionHub, Context, Endpoint};
use ws_test::{TestServer, eventually_within};

async fn echo(ctx: Context) -> Result<String, BindError> {
    ctx.bind()
}

/// Closes every connection at its first message with 4002.
async fn kick(ctx: Context) -> Result<(), BindError> {
    let frame = CloseFrame::new(4002, "no").expect("an application code");
    ctx.hub().close(ctx.id(), frame);
    Ok(())
}

async fn server() -> TestServer {
    let hub = ConnectionHub::new();
    let router = axum::Router::new()
        .route("/echo", crate::route(Endpoint::new(echo).hub(hub.clone())))
        .route("/kick", crate::route(Endpoint::new(kick).hub(hub.clone())));
    TestServer::router_with_hub(router, hub).await
}

#[tokio::test]
#[should_panic(expected = "awaited a text message on ws://")]
async fn recv_text_names_the_timeout() {
    let server = server().await;
    let mut client = server
        .client("/echo")
        .timeout(Duration::from_millis(50))
        .connect()
        .await;
    client.recv_text().await;
}

#[tokio::test]
#[should_panic(expected = "awaited a close frame with code 1000 on")]
async fn expect_close_shows_the_other_code() {
    let server = server().await;
    let mut client = server.connect("/kick").await;
    client.send_text("hi").await;
    client.expect_close(1000).await;
}

#[tokio::test]
#[should_panic(expected = "got text \"hi\"")]
async fn expect_nothing_shows_what_came() {
    let server = server().await;
    let mut client = server.connect("/echo").await;
    client.send_text("hi").await;
    client.expect_nothing_for(Duration::from_secs(2)).await;
}

#[tokio::test]
#[should_panic(expected = "failures.rs")]
async fn a_failure_starts_with_the_test_line() {
    let server = server().await;
    let mut client = server.connect("/kick").await;
    client.send_text("hi").await;
    client.recv_text().await;
}

#[tokio::test]
#[should_panic(expected = "cannot connect: ws://127.0.0.1")]
async fn a_missing_route_fails_the_connect() {
    let server = server().await;
    server.connect("/nowhere").await;
}

#[tokio::test]
#[should_panic(expected = "for 2 open connections on the hub, there are 1")]
async fn expect_connections_gives_the_last_count() {
    let server = server().await;
    let _client = server.connect("/echo").await;
    server.expect_connections(2).await;
}

#[tokio::test]
#[should_panic(expected = "waited 20ms for the sky to fall")]
async fn eventually_names_what_it_awaited() {
    eventually_within(Duration::from_millis(20), "the sky to fall", || false).await;
}

#[tokio::test]
#[should_panic(expected = "has no hub")]
async fn a_router_without_a_hub_says_so() {
    let router = axum::Router::new().route("/echo", crate::route(Endpoint::new(echo)));
    let server = TestServer::router(router).await;
    server.expect_connections(0).await;
}

#[tokio::test]
#[should_panic(expected = "awaited the pong to our ping on ws://")]
async fn ping_fails_when_a_message_comes_before_its_pong() {
    let server = server().await;
    let mut client = server.connect("/echo").await;
    client.send_text("first").await;
    client.ping(b"p").await;
}

#[tokio::test]
#[should_panic(expected = "awaited a refusal with 401 from ws://")]
async fn expect_refused_says_when_the_upgrade_succeeded() {
    let server = server().await;
    server.client("/echo").expect_refused(401).await;
}
