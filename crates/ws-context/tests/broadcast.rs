//! Broadcasts to compressed connections (issue 13): a hand-made client offers
//! permessage-deflate and inflates the server's frames with flate2; every receiver, compressed
//! or not, gets the message.

use flate2::{Decompress, FlushDecompress};
use test_support::{Frame, header, raw_request, read_frame, upgrade_request};
use tokio::net::TcpStream;
use ws_context::{
    Backplane, BackplaneError, ConnectionHub, Context, Endpoint, Envelope, Inbound, Message,
    Target, WsUpgrader,
};
use ws_test::{TestServer, eventually};

/// RFC 7692 §7.2.1: the tail every flushed message ends with, stripped on the wire.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

async fn ignore(_ctx: Context) -> Result<(), ws_context::BindError> {
    Ok(())
}

/// Opens a WebSocket offering permessage-deflate; fails unless the server accepts it.
async fn open_compressed(server: &TestServer) -> TcpStream {
    let addr = server.addr();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let (stream, status, headers) = raw_request(addr, &upgrade_request(addr, "/ws", offer)).await;
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(
        header(&headers, "sec-websocket-extensions").map(|e| e.starts_with("permessage-deflate")),
        Some(true),
        "{headers:?}"
    );
    stream
}

/// One compressed text frame (FIN, RSV1, text) of `expected`.
async fn expect_compressed(stream: &mut TcpStream, expected: &str) -> Frame {
    let frame = read_frame(stream).await;
    assert_eq!(
        (frame.fin, frame.rsv1, frame.opcode),
        (true, true, 0x1),
        "one compressed text frame"
    );
    assert_eq!(inflate(&frame.payload), expected.as_bytes());
    frame
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("the server's deflate stream decodes");
    out
}

/// A JSON array of at least `min_len` bytes: compresses well, as chat traffic does.
fn json(min_len: usize) -> String {
    let mut items = Vec::new();
    let mut len = 0;
    for i in 0u64.. {
        if len >= min_len {
            break;
        }
        let item = format!(r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com"}}"#);
        len += item.len() + 1;
        items.push(item);
    }
    format!("[{}]", items.join(","))
}

/// Three compressed receivers and one plain receiver of a broadcast, then of a room message:
/// each compressed one gets a compressed frame (RSV1) that inflates to the message, the plain
/// one the message as it is.
#[tokio::test]
async fn broadcast_and_room_messages_reach_compressed_and_plain_receivers() {
    let hub = ConnectionHub::new();
    let upgrader = WsUpgrader::builder().compression().build().unwrap();
    let endpoint = Endpoint::new(ignore).hub(hub.clone()).upgrader(upgrader);
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut compressed = Vec::new();
    for _ in 0..3 {
        compressed.push(open_compressed(&server).await);
    }
    let mut plain = server.connect("/ws").await;
    eventually("four connections", || hub.len() == 4).await;
    for info in hub.list() {
        assert!(hub.join(&info.id, "lobby").await);
    }

    let text = json(16 * 1024);
    assert_eq!(hub.broadcast(Message::text(text.clone())).await, 4);
    let room = json(4 * 1024);
    assert_eq!(
        hub.send_to_room("lobby", Message::text(room.clone()))
            .await
            .delivered,
        4
    );
    for expected in [&text, &room] {
        for stream in &mut compressed {
            let frame = expect_compressed(stream, expected).await;
            assert!(frame.payload.len() * 4 < expected.len(), "compressed well");
        }
        assert_eq!(plain.recv_text().await, *expected);
    }
}

/// A backplane that only keeps the hub's `Inbound`, to deliver as if from another instance.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Option<Inbound>>>);

impl Backplane for Capture {
    fn publish(&self, _envelope: Envelope) -> Result<(), BackplaneError> {
        Ok(())
    }

    fn attach(&self, inbound: Inbound) {
        *self.0.lock().unwrap() = Some(inbound);
    }
}

/// A delivery from another instance to all goes the same way: compressed receivers get it
/// compressed, the plain one as it is.
#[tokio::test]
async fn a_broadcast_from_another_instance_reaches_compressed_and_plain_receivers() {
    let backplane = Capture::default();
    let hub = ConnectionHub::with_backplane(backplane.clone());
    let upgrader = WsUpgrader::builder().compression().build().unwrap();
    let endpoint = Endpoint::new(ignore).hub(hub.clone()).upgrader(upgrader);
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut compressed = vec![
        open_compressed(&server).await,
        open_compressed(&server).await,
    ];
    let mut plain = server.connect("/ws").await;
    eventually("three connections", || hub.len() == 3).await;

    let inbound = backplane.0.lock().unwrap().clone().expect("attached");
    let text = json(8 * 1024);
    let envelope = Envelope::new("another-node/1", Target::All, Message::text(text.clone()));
    assert_eq!(inbound.deliver_now(envelope), 3);
    for stream in &mut compressed {
        expect_compressed(stream, &text).await;
    }
    assert_eq!(plain.recv_text().await, text);
}

/// Broadcasts are written straight into idle connections' sockets by the broadcasting task
/// (`SocketWriter::try_send_prepared`); a message its sender queued before must still arrive
/// first, whichever way each goes. Eight connections, each sent a queued message then a
/// broadcast, 300 times, from another thread than the connections' tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcast_never_overtakes_what_its_sender_queued_before() {
    const ROUNDS: usize = 300;
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore).hub(hub.clone());
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.connect("/ws").await);
    }
    eventually("eight connections", || hub.len() == 8).await;
    let sender = tokio::spawn({
        let hub = hub.clone();
        async move {
            let writers: Vec<_> = hub.list().iter().filter_map(|i| hub.get(&i.id)).collect();
            for round in 0..ROUNDS {
                for writer in &writers {
                    writer
                        .send(Message::text(format!("q{round}")))
                        .await
                        .unwrap();
                }
                assert_eq!(hub.broadcast(Message::text(format!("b{round}"))).await, 8);
            }
        }
    });
    let readers = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                assert_eq!(client.recv_text().await, format!("q{round}"));
                assert_eq!(client.recv_text().await, format!("b{round}"));
            }
        })
    });
    for reader in readers {
        reader.await.unwrap();
    }
    sender.await.unwrap();
}

/// A peer that stops reading while large messages are broadcast: its socket fills, a frame is
/// taken in part and finished by the connection's task, the rest wait in its queue. Once it
/// reads again, every message arrives whole and in order.
#[tokio::test]
async fn broadcasts_to_a_peer_that_stops_reading_arrive_whole_and_in_order() {
    const MESSAGES: u8 = 60;
    const SIZE: usize = 128 << 10;
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore)
        .hub(hub.clone())
        .send_timeout(std::time::Duration::from_secs(20));
    let server = TestServer::endpoint("/ws", endpoint).await;
    let addr = server.addr();
    let (mut stream, status, _) = raw_request(addr, &upgrade_request(addr, "/ws", "")).await;
    assert_eq!(status, 101);
    eventually("one connection", || hub.len() == 1).await;
    let sender = tokio::spawn({
        let hub = hub.clone();
        async move {
            for i in 0..MESSAGES {
                assert_eq!(hub.broadcast(Message::binary(vec![i; SIZE])).await, 1);
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 0..MESSAGES {
        let frame = read_frame(&mut stream).await;
        assert_eq!((frame.fin, frame.opcode), (true, 0x2));
        assert_eq!(frame.payload.len(), SIZE);
        assert!(frame.payload.iter().all(|&byte| byte == i), "message {i}");
    }
    sender.await.unwrap();
}

/// Three tasks broadcast at once while a fourth queues messages on each connection, a fifth of
/// them large, to clients that start reading late: writers meet the connections' tasks and
/// each other at every step of the socket's hand-over. Every message arrives whole, and each sender's in the
/// order it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_broadcasts_and_queued_sends_arrive_whole_and_in_each_senders_order() {
    const CLIENTS: usize = 6;
    const EACH: usize = 150;
    // Every fifth message is large: 24 KiB of a letter of its index.
    fn body(sender: &str, index: usize) -> String {
        let head = format!("{sender}-{index}-");
        if index % 5 == 4 {
            let fill = char::from(b'a' + (index % 26) as u8);
            format!("{head}{}", fill.to_string().repeat(24 << 10))
        } else {
            head
        }
    }
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore).hub(hub.clone());
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(server.connect("/ws").await);
    }
    eventually("every connection", || hub.len() == CLIENTS).await;
    let mut senders = Vec::new();
    for sender in ["b0", "b1", "b2"] {
        let hub = hub.clone();
        senders.push(tokio::spawn(async move {
            for index in 0..EACH {
                let sent = hub.broadcast(Message::text(body(sender, index))).await;
                assert_eq!(sent, CLIENTS);
            }
        }));
    }
    let writers: Vec<_> = hub.list().iter().filter_map(|i| hub.get(&i.id)).collect();
    senders.push(tokio::spawn(async move {
        for index in 0..EACH {
            for writer in &writers {
                writer.send(Message::text(body("q", index))).await.unwrap();
            }
        }
    }));
    // The clients start reading late: by then their sockets are full, and frames are taken in
    // part and wait in queues.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let readers = clients.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let mut next = std::collections::HashMap::new();
            for _ in 0..4 * EACH {
                let text = client.recv_text().await;
                let mut parts = text.splitn(3, '-');
                let (sender, index) = (parts.next().unwrap().to_owned(), parts.next().unwrap());
                let index: usize = index.parse().unwrap();
                let expected = next.entry(sender.clone()).or_insert(0);
                assert_eq!(index, *expected, "{sender}'s messages in order");
                assert_eq!(text, body(&sender, index), "{sender}-{index} whole");
                *expected += 1;
            }
        })
    });
    for reader in readers {
        reader.await.unwrap();
    }
    for sender in senders {
        sender.await.unwrap();
    }
}
