//! `WebSocket::drained`: the hint that ends a burst of reads without one more poll of the
//! transport (S1 in bench/README.md). It must never claim a message that is already there.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};
use ws_upgrader::{Message, WsUpgrader};

use crate::support::spawn_holding;
use test_support::{WAIT, client_frame, raw_websocket};

const TEXT: u8 = 0x1;
const PING: u8 = 0x9;

#[tokio::test]
async fn drained_only_once_every_message_read_was_given_out() {
    let (report, mut reports) = mpsc::unbounded_channel();
    let upgrader = WsUpgrader::builder().build().unwrap();
    let addr = spawn_holding(upgrader, move |mut socket| {
        let report = report.clone();
        async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    let _ = report.send((text.as_str().to_owned(), socket.drained()));
                }
            }
        }
    })
    .await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let mut next = async || {
        tokio::time::timeout(WAIT, reports.recv())
            .await
            .expect("a report in time")
            .expect("the server is running")
    };

    // Three messages in one write: read at once, given one by one.
    let three = [b"one", b"two", b"six"].map(|text| client_frame(true, false, TEXT, text));
    stream.write_all(&three.concat()).await.unwrap();
    assert_eq!(
        next().await,
        ("one".to_owned(), false),
        "two more were read"
    );
    assert_eq!(next().await, ("two".to_owned(), false), "one more was read");
    assert_eq!(next().await, ("six".to_owned(), true), "nothing more came");

    // A message with a ping behind it in the same read: the ping is still to be parsed.
    let pinged = [
        client_frame(true, false, TEXT, b"ten"),
        client_frame(true, false, PING, b"p"),
    ];
    stream.write_all(&pinged.concat()).await.unwrap();
    assert_eq!(
        next().await,
        ("ten".to_owned(), false),
        "a ping is behind it"
    );

    // Later messages are still read: the hint never stops the reading itself.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = client_frame(true, false, TEXT, b"end");
    stream.write_all(&last).await.unwrap();
    assert_eq!(next().await, ("end".to_owned(), true));
}
