//! Limits on what a service may send.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    Bytes, Message as WireMessage,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};
use ws_client_pool::{Message, Reconnect, ServiceOptions, ServiceState, WsClientPool};

use ws_test::eventually_within;

use crate::support::WAIT;

/// A service that sends, on each connection, one message of exactly 16 MiB (allowed), then
/// a 17 MiB one: on the first connection in 1 MiB frames (over the message limit), on later
/// ones as one frame (over the frame limit). Reports the close code each connection gets.
async fn oversized_sender() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<u16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (codes, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((tcp, _)) = listener.accept().await {
            let codes = codes.clone();
            let fragmented = std::mem::take(&mut first);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let sender = tokio::spawn(async move {
                    sink.send(WireMessage::binary(vec![1u8; 16 << 20])).await?;
                    if fragmented {
                        for i in 0..17 {
                            let opcode = if i == 0 { Data::Binary } else { Data::Continue };
                            let frame = Frame::message(
                                Bytes::from(vec![2u8; 1 << 20]),
                                OpCode::Data(opcode),
                                i == 16,
                            );
                            sink.send(WireMessage::Frame(frame)).await?;
                        }
                        Ok(())
                    } else {
                        sink.send(WireMessage::binary(vec![3u8; 17 << 20])).await
                    }
                });
                while let Some(Ok(frame)) = stream.next().await {
                    if let WireMessage::Close(frame) = frame {
                        let _ = codes.send(frame.map_or(1005, |f| f.code.into()));
                        break;
                    }
                }
                sender.abort();
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn a_service_sending_more_than_the_limits_is_closed_with_1009_and_reconnected() {
    let (addr, mut codes) = oversized_sender().await;
    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(format!("ws://{addr}/ws"))
        .reconnect(Reconnect::fixed(Duration::from_millis(20)))
        .build()
        .expect("valid options");
    pool.add_ws_service_with("svc", options).await.unwrap();
    let mut messages = pool.messages("svc").unwrap();
    let next_code = async |codes: &mut mpsc::UnboundedReceiver<u16>| {
        tokio::time::timeout(WAIT, codes.recv())
            .await
            .expect("a close frame in time")
            .expect("the service is up")
    };
    // Over the message limit (17 frames of 1 MiB), then over the frame limit (one frame).
    assert_eq!(next_code(&mut codes).await, 1009);
    assert_eq!(next_code(&mut codes).await, 1009);
    eventually_within(WAIT, "the pool reconnected", || {
        pool.status("svc").unwrap().reconnects >= 1
    })
    .await;
    let status = pool.status("svc").unwrap();
    let (_, error) = status.last_error.clone().unwrap();
    assert!(
        error.contains("too long") || error.contains("size"),
        "{error}"
    );
    assert_ne!(status.state, ServiceState::Closed);
    // The 16 MiB messages were within the limit and delivered.
    let first = tokio::time::timeout(WAIT, messages.recv()).await.unwrap();
    assert!(
        matches!(&first, Some(Message::Binary(data)) if data.len() == 16 << 20),
        "{:?}",
        first.map(|m| m.len())
    );
}
