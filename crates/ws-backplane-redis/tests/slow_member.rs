//! One member that never reads does not hold up the others' cross-instance deliveries.

use std::time::Duration;

use futures_util::StreamExt as _;
use test_support::RedisServer;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use ws_backplane_redis::Settings;
use ws_test::{WsClient, eventually, eventually_within};

use crate::support::Instance;

const MESSAGES: usize = 20_000;
/// Large enough that the non-reader's socket buffers fill long before the end.
const SIZE: usize = 1024;
const SEND_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a reader may wait for its next message while 20,000 go through Redis.
const READ_WAIT: Duration = Duration::from_secs(30);

/// Reads `MESSAGES` text messages and checks they are 0, 1, 2, ... in order.
async fn read_all(mut client: WsClient) -> usize {
    for expected in 0..MESSAGES {
        let text = client.recv_text().await;
        let n: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(n, expected, "out of order");
    }
    MESSAGES
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

    let reader = |instance: &Instance| instance.server.client("/ws/r").timeout(READ_WAIT).connect();
    let readers_on_a = [reader(&a).await, reader(&a).await];
    let reader_on_b = reader(&b).await;
    // The non-reader: a small receive buffer, and it never reads.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(a.server.addr()).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(a.server.ws_url("/ws/r"), stream)
        .await
        .unwrap();
    eventually("all joined", || {
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
    eventually("the readers left", || a.hub.room_members("r").len() == 1).await;
    let stuck_id = a.hub.room_members("r").remove(0);
    eventually_within(SEND_TIMEOUT * 4, "the non-reader was closed", || {
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
