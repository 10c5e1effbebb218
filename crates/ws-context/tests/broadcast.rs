//! Broadcasts to compressed connections (issue 13): a hand-made client offers
//! permessage-deflate and inflates the server's frames with flate2; every receiver, compressed
//! or not, gets the message.

use std::net::SocketAddr;

use flate2::{Decompress, FlushDecompress};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message as ClientMessage;
use ws_context::{
    Backplane, BackplaneError, ConnectionHub, Context, Endpoint, Envelope, Inbound, Message,
    Target, WsUpgrader,
};

use crate::support::{WAIT, connect, eventually, next_data, serve};

/// RFC 7692 §7.2.1: the tail every flushed message ends with, stripped on the wire.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

async fn ignore(_ctx: Context) -> Result<(), ws_context::BindError> {
    Ok(())
}

/// Opens a WebSocket offering permessage-deflate; fails unless the server accepts it.
async fn open_compressed(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    stream
}

/// Reads one unmasked server frame: its first byte (FIN, RSV1, opcode) and its payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let first = stream.read_u8().await.unwrap();
        let len = match stream.read_u8().await.unwrap() & 0x7f {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            len => u64::from(len),
        };
        let mut payload = vec![0; usize::try_from(len).unwrap()];
        stream.read_exact(&mut payload).await.unwrap();
        (first, payload)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no frame in time")
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
    let addr = serve(axum::Router::new().route(
        "/ws",
        endpoint.into_route().expect("valid endpoint options"),
    ))
    .await;
    let mut compressed = Vec::new();
    for _ in 0..3 {
        compressed.push(open_compressed(addr).await);
    }
    let mut plain = connect(addr, "/ws").await;
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
            let (first, payload) = read_frame(stream).await;
            assert_eq!(first, 0x80 | 0x40 | 0x1, "one compressed text frame");
            assert!(payload.len() * 4 < expected.len(), "compressed well");
            assert_eq!(inflate(&payload), expected.as_bytes());
        }
        assert_eq!(
            next_data(&mut plain).await,
            ClientMessage::text(expected.as_str())
        );
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
    let addr = serve(axum::Router::new().route(
        "/ws",
        endpoint.into_route().expect("valid endpoint options"),
    ))
    .await;
    let mut compressed = vec![open_compressed(addr).await, open_compressed(addr).await];
    let mut plain = connect(addr, "/ws").await;
    eventually("three connections", || hub.len() == 3).await;

    let inbound = backplane.0.lock().unwrap().clone().expect("attached");
    let text = json(8 * 1024);
    let envelope = Envelope::new("another-node/1", Target::All, Message::text(text.clone()));
    assert_eq!(inbound.deliver_now(envelope), 3);
    for stream in &mut compressed {
        let (first, payload) = read_frame(stream).await;
        assert_eq!(first, 0xc1, "one compressed text frame");
        assert_eq!(inflate(&payload), text.as_bytes());
    }
    assert_eq!(next_data(&mut plain).await, ClientMessage::text(text));
}
