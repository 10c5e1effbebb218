//! One member that never reads does not hold up the others' cross-instance deliveries.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use ws_backplane_redis::Settings;

use crate::{
    redis_server::RedisServer,
    support::{Client, Instance, WAIT, eventually},
};

const MESSAGES: usize = 20_000;
/// Large enough that the non-reader's socket buffers fill long before the end.
const SIZE: usize = 1024;
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads `MESSAGES` data frames and checks they are 0, 1, 2, ... in order.
async fn read_all(mut client: Client) -> usize {
    let mut next = 0;
    while next < MESSAGES {
        let frame = tokio::time::timeout(Duration::from_secs(30), client.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("read failed");
        match frame {
            Message::Text(text) => {
                let n: usize = text.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(n, next, "out of order");
                next += 1;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected data, got {other:?}"),
        }
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_closed_and_everyone_else_gets_every_message() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A's reader has the default buffer (16,384 messages, fewer than are sent): had it
    // waited for the non-reader for its send timeout, it would have overflowed. B's publish
    // queue is large enough for the whole burst.
    let heartbeat = Duration::from_millis(200);
    let a = Instance::start_custom(
        &redis.url(),
        Settings::builder().heartbeat(heartbeat),
        |endpoint| endpoint.send_timeout(SEND_TIMEOUT),
    )
    .await;
    let b = Instance::start_with(
        &redis.url(),
        Settings::builder()
            .heartbeat(heartbeat)
            .queue_capacity(65_536),
    )
    .await;

    let readers_on_a = [a.connect("r").await, a.connect("r").await];
    let reader_on_b = b.connect("r").await;
    // The non-reader: a small receive buffer, and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(a.addr).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(format!("ws://{}/ws/r", a.addr), stream)
        .await
        .unwrap();
    eventually("all joined", WAIT, || {
        a.hub.room_members("r").len() == 3 && b.hub.room_members("r").len() == 1
    })
    .await;
    let readers: Vec<_> = readers_on_a
        .into_iter()
        .chain([reader_on_b])
        .map(|client| tokio::spawn(read_all(client)))
        .collect();
    let padding = "x".repeat(SIZE);
    for n in 0..MESSAGES {
        b.hub
            .send_to_room("r", ws_context::Message::text(format!("{n} {padding}")))
            .await;
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), MESSAGES);
    }
    let stats = a.backplane.stats();
    assert_eq!(stats.overflow, 0, "{stats:?}");
    assert_eq!(stats.received, MESSAGES as u64, "{stats:?}");
    assert_eq!(b.backplane.stats().publish_errors, 0);

    // The readers are gone; the non-reader was given up on after its send timeout, without
    // it reading anything: closed with 1008.
    eventually("the readers left", WAIT, || {
        a.hub.room_members("r").len() == 1
    })
    .await;
    let stuck_id = a.hub.room_members("r").remove(0);
    eventually("the non-reader was closed", SEND_TIMEOUT * 4, || {
        a.hub.get(&stuck_id).is_none_or(|writer| writer.is_closed())
    })
    .await;
    let mut frames = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(30), stuck.next())
            .await
            .unwrap_or_else(|_| panic!("nothing from the server after {frames} frames"))
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => frames += 1,
            other => panic!("expected a close frame after {frames} frames, got {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
}
