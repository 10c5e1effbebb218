//! permessage-deflate on and off, against ws-upgrader's compression.

use ws_context::{BindError, Context, Endpoint, Message};
use ws_test::TestServer;
use ws_upgrader::WsUpgrader;

async fn echo(ctx: Context) -> Result<Message, BindError> {
    Ok(ctx.message().clone())
}

async fn server(compression: bool) -> TestServer {
    let mut upgrader = WsUpgrader::builder();
    if compression {
        upgrader = upgrader.compression();
    }
    let endpoint = Endpoint::new(echo).upgrader(upgrader.build().expect("valid options"));
    TestServer::endpoint("/echo", endpoint).await
}

#[tokio::test]
async fn compressed_messages_go_both_ways() {
    let server = server(true).await;
    let mut client = server.client("/echo").deflate(true).connect().await;
    assert!(client.deflate(), "{:?}", client.extensions());
    let text = "all work and no play makes Jack a dull boy. ".repeat(2000);
    for _ in 0..3 {
        client.send_text(text.clone()).await;
        assert_eq!(client.recv_text().await, text);
    }
    client.send_binary(vec![7u8; 100_000]).await;
    assert_eq!(&client.recv_binary().await[..], &vec![7u8; 100_000][..]);
    client.send_text("").await;
    assert_eq!(client.recv_text().await, "");
    client.close(1000, "done").await;
}

#[tokio::test]
async fn deflate_off_or_refused_is_plain() {
    let server_with = server(true).await;
    let mut plain = server_with.client("/echo").deflate(false).connect().await;
    assert!(!plain.deflate());
    assert_eq!(plain.extensions(), None);
    plain.send_text("x").await;
    assert_eq!(plain.recv_text().await, "x");

    let server_without = server(false).await;
    let mut offered = server_without.client("/echo").deflate(true).connect().await;
    assert!(!offered.deflate());
    offered.send_text("y").await;
    assert_eq!(offered.recv_text().await, "y");
}
