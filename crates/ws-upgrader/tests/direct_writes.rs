//! `DirectWriter`: other tasks write prepared messages straight into a connection's socket
//! while its own task has nothing to write, and never put a frame inside or before one the
//! task took to write.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Notify, sync::mpsc};
use ws_upgrader::{DirectSend, DirectWriter, Message, PreparedMessage, WsUpgrader};

use crate::support::spawn_holding;
use test_support::{WAIT, client_frame, raw_websocket, read_frame};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;

/// A server whose connection hands its direct writer to the test, answers "reply" with
/// "reply" (written by its own task), and is polled again whenever `poke` is notified (a
/// direct writer that left the rest of a frame wakes the task so).
async fn serve(poke: Arc<Notify>) -> (TcpStream, DirectWriter) {
    let (give, mut writers) = mpsc::unbounded_channel();
    let upgrader = WsUpgrader::builder().build().unwrap();
    let addr = spawn_holding(upgrader, move |mut socket| {
        let (give, poke) = (give.clone(), poke.clone());
        async move {
            let _ = give.send(socket.direct_writer().expect("a TCP socket"));
            loop {
                tokio::select! {
                    message = socket.next() => match message {
                        Some(Ok(Message::Text(text))) if text.as_str() == "reply" => {
                            if socket.send(Message::text("reply")).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    () = poke.notified() => {}
                }
            }
        }
    })
    .await;
    let stream = raw_websocket(addr, "/ws").await;
    let writer = tokio::time::timeout(WAIT, writers.recv())
        .await
        .expect("the connection is up in time")
        .expect("the server is running");
    (stream, writer)
}

async fn expect_text(stream: &mut TcpStream, expected: &str) {
    let frame = tokio::time::timeout(WAIT, read_frame(stream))
        .await
        .expect("a frame in time");
    assert_eq!((frame.fin, frame.opcode), (true, TEXT));
    assert_eq!(frame.payload, expected.as_bytes());
}

#[tokio::test]
async fn a_direct_write_goes_out_while_the_task_waits_and_keeps_its_place() {
    let (mut stream, writer) = serve(Arc::new(Notify::new())).await;
    let hello = PreparedMessage::new(Message::text("direct"));
    assert_eq!(writer.try_send(&hello, || true), DirectSend::Written);
    expect_text(&mut stream, "direct").await;

    // The task writes in between; the writes are free again after its flush.
    stream
        .write_all(&client_frame(true, false, TEXT, b"reply"))
        .await
        .unwrap();
    expect_text(&mut stream, "reply").await;
    assert_eq!(writer.try_send(&hello, || true), DirectSend::Written);
    expect_text(&mut stream, "direct").await;

    // Refused by the caller's check, and never for control frames.
    assert_eq!(writer.try_send(&hello, || false), DirectSend::NotWritten);
    let ping = PreparedMessage::new(Message::Ping(Default::default()));
    assert_eq!(writer.try_send(&ping, || true), DirectSend::NotWritten);
    let last = PreparedMessage::new(Message::text("last"));
    assert_eq!(writer.try_send(&last, || true), DirectSend::Written);
    expect_text(&mut stream, "last").await;

    // Once the connection is gone, nothing is written and the socket is not kept open.
    drop(stream);
    let deadline = tokio::time::Instant::now() + WAIT;
    while writer.try_send(&hello, || true) != DirectSend::NotWritten {
        assert!(tokio::time::Instant::now() < deadline, "still writing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A peer that stops reading: direct writes fill its socket until one is taken in part. The
/// connection's task, once woken, writes the rest of that frame with nothing of its own to
/// write; every frame arrives whole and in order, and the writes are free again after.
#[tokio::test]
async fn a_frame_taken_in_part_is_finished_by_the_woken_task() {
    let poke = Arc::new(Notify::new());
    let (mut stream, writer) = serve(poke.clone()).await;
    const SIZE: usize = 256 << 10;
    let mut sent = 0u8;
    let partial = loop {
        assert!(sent < 200, "the socket never filled");
        let message = PreparedMessage::new(Message::binary(vec![sent; SIZE]));
        match writer.try_send(&message, || true) {
            DirectSend::Written => sent += 1,
            DirectSend::Partial => break true,
            DirectSend::NotWritten => break false,
        }
    };
    if partial {
        sent += 1;
        // While the rest waits, the writes are the task's: no other direct write gets in.
        let other = PreparedMessage::new(Message::text("late"));
        assert_eq!(writer.try_send(&other, || true), DirectSend::NotWritten);
        poke.notify_one();
    }
    for expected in 0..sent {
        let frame = tokio::time::timeout(WAIT, read_frame(&mut stream))
            .await
            .expect("a frame in time");
        assert_eq!((frame.fin, frame.opcode), (true, BINARY));
        assert_eq!(frame.payload.len(), SIZE);
        assert!(
            frame.payload.iter().all(|&byte| byte == expected),
            "frame {expected}"
        );
    }
    // The writes are free again once the rest is out: the task's reply, then a direct write.
    stream
        .write_all(&client_frame(true, false, TEXT, b"reply"))
        .await
        .unwrap();
    expect_text(&mut stream, "reply").await;
    let after = PreparedMessage::new(Message::text("after"));
    assert_eq!(writer.try_send(&after, || true), DirectSend::Written);
    expect_text(&mut stream, "after").await;
}
