//! `examples/chat`'s recovery contract: `"pos"` on every room line, `?since=POS` after a
//! drop delivers what was missed first, once, in order; `"recovered": false` when it cannot.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio_tungstenite::{MaybeTlsStream, tungstenite::Message};

use crate::{Client, Running, chat_line, chatter};

/// Cuts the connection with a TCP reset, as a network drop would: no close frame.
fn reset(client: Client) {
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        #[allow(deprecated, reason = "set_linger is what sends an RST on drop")]
        stream.set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(client);
}

async fn said(client: &mut Client) -> (String, String) {
    let line = chat_line(client).await;
    (
        line["text"].as_str().unwrap().to_owned(),
        line["pos"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn chat_a_client_cut_off_comes_back_with_its_last_pos_and_misses_nothing() {
    let server = Running::start("chat");
    let mut ann = chatter(&server, "rec", "ann").await;
    let mut bob = chatter(&server, "rec", "bob").await;
    // Bob's greeting also reached Ann.
    assert_eq!(said(&mut ann).await.0, "hello from bob");

    ann.send(Message::text("m0")).await.unwrap();
    assert_eq!(said(&mut ann).await.0, "m0");
    let (text, last_pos) = said(&mut bob).await;
    assert_eq!(text, "m0");
    assert!(!last_pos.is_empty(), "every room line has a pos");
    reset(bob);

    for i in 1..10 {
        ann.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(said(&mut ann).await.0, format!("m{i}"));
    }
    let url = format!("ws://{}/ws/rec?name=bob&since={last_pos}", server.addr);
    let (mut bob, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ann.send(Message::text("live")).await.unwrap();
    let mut previous = last_pos;
    for expected in (1..10).map(|i| format!("m{i}")).chain(["live".to_owned()]) {
        let (text, pos) = said(&mut bob).await;
        assert_eq!(text, expected);
        assert_ne!(pos, previous);
        previous = pos;
    }

    // A position the server never gave: told so first, then a member as usual.
    let url = format!("ws://{}/ws/rec?name=cy&since=12.abc", server.addr);
    let (mut cy, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let notice = chat_line(&mut cy).await;
    assert_eq!(notice["from"], "server", "{notice}");
    assert_eq!(notice["recovered"], false, "{notice}");
    ann.send(Message::text("after")).await.unwrap();
    assert_eq!(said(&mut cy).await.0, "after");
}
