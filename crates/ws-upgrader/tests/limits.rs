//! Limits and protocol errors close with their code, and the server keeps serving the others.

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use ws_upgrader::WsUpgrader;

use crate::support::{spawn_echo, spawn_echo_limited, spawn_echo_with_budget};
use test_support::{WAIT, client_frame, raw_websocket, read_close_code, read_frame, write_frame};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;

async fn limited_server() -> std::net::SocketAddr {
    spawn_echo(
        WsUpgrader::builder()
            .max_message_size(1000)
            .max_frame_size(100)
            .build()
            .unwrap(),
    )
    .await
}

async fn assert_echoes(stream: &mut TcpStream, payload: &[u8]) {
    write_frame(stream, true, false, BINARY, payload).await;
    let frame = read_frame(stream).await;
    assert_eq!((frame.opcode, frame.payload.as_slice()), (BINARY, payload));
}

#[tokio::test]
async fn a_frame_over_max_frame_size_closes_1009() {
    let addr = limited_server().await;
    let mut stream = raw_websocket(addr, "/ws").await;
    assert_echoes(&mut stream, &[7; 100]).await;
    write_frame(&mut stream, true, false, BINARY, &[7; 101]).await;
    assert_eq!(read_close_code(&mut stream).await, 1009);
}

#[tokio::test]
async fn fragments_within_both_limits_are_one_message() {
    let addr = limited_server().await;
    let mut stream = raw_websocket(addr, "/ws").await;
    write_frame(&mut stream, false, false, BINARY, &[1; 100]).await;
    for _ in 0..8 {
        write_frame(&mut stream, false, false, CONTINUATION, &[1; 100]).await;
    }
    write_frame(&mut stream, true, false, CONTINUATION, &[1; 100]).await;
    let frame = read_frame(&mut stream).await;
    assert!(frame.fin);
    assert_eq!(frame.payload, vec![1; 1000]);
}

#[tokio::test]
async fn a_message_over_max_message_size_closes_1009_even_in_small_frames() {
    let addr = limited_server().await;
    let mut stream = raw_websocket(addr, "/ws").await;
    write_frame(&mut stream, false, false, BINARY, &[1; 100]).await;
    for _ in 0..10 {
        write_frame(&mut stream, false, false, CONTINUATION, &[1; 100]).await;
    }
    assert_eq!(read_close_code(&mut stream).await, 1009);
}

#[tokio::test]
async fn an_oversized_message_from_a_real_client_gets_1009() {
    let addr = spawn_echo_limited(64 << 10).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    client
        .send(tungstenite::Message::binary(vec![0u8; (64 << 10) + 1]))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
        Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1009)
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let addr = spawn_echo(WsUpgrader::new()).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    write_frame(&mut stream, true, false, TEXT, b"valid, then \xff\xfe").await;
    assert_eq!(read_close_code(&mut stream).await, 1007);
}

/// A message and the start of the next one in one write: the start goes into the protocol
/// core straight from the read (no copy kept); the next message still completes.
#[tokio::test]
async fn a_message_and_the_start_of_the_next_in_one_read_are_both_echoed() {
    use tokio::io::AsyncWriteExt as _;
    let addr = spawn_echo(WsUpgrader::new()).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let first: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let second: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let second_frame = client_frame(true, false, BINARY, &second);
    let mut bytes = client_frame(true, false, BINARY, &first);
    bytes.extend_from_slice(&second_frame[..1000]);
    stream.write_all(&bytes).await.unwrap();
    let frame = read_frame(&mut stream).await;
    assert_eq!((frame.opcode, frame.payload), (BINARY, first));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stream.write_all(&second_frame[1000..]).await.unwrap();
    let frame = read_frame(&mut stream).await;
    assert_eq!((frame.opcode, frame.payload), (BINARY, second));
}

/// The start of a text frame that is not UTF-8, read with the message before it: that message
/// is echoed first, then the connection closes with 1007.
#[tokio::test]
async fn invalid_utf8_read_with_the_message_before_it_closes_1007_after_that_message() {
    use tokio::io::AsyncWriteExt as _;
    let addr = spawn_echo(WsUpgrader::new()).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let mut bytes = client_frame(true, false, TEXT, b"first");
    // Header (2 bytes), mask (4), then 3 of the 10 payload bytes: already not UTF-8.
    bytes.extend_from_slice(&client_frame(true, false, TEXT, b"\xff\xfe\xfdabcdefg")[..9]);
    stream.write_all(&bytes).await.unwrap();
    let frame = read_frame(&mut stream).await;
    assert_eq!(
        (frame.opcode, frame.payload.as_slice()),
        (TEXT, &b"first"[..])
    );
    assert_eq!(read_close_code(&mut stream).await, 1007);
}

#[tokio::test]
async fn an_unknown_opcode_closes_1002() {
    let addr = spawn_echo(WsUpgrader::new()).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    write_frame(&mut stream, true, false, 0x3, b"reserved opcode").await;
    assert_eq!(read_close_code(&mut stream).await, 1002);
}

#[tokio::test]
async fn the_server_keeps_serving_others_after_each_failure() {
    let addr = limited_server().await;
    let mut bystander = raw_websocket(addr, "/ws").await;
    assert_echoes(&mut bystander, b"before").await;
    let bad_inputs: [(u8, &[u8], u16); 3] = [
        (TEXT, b"\xc3\x28", 1007),
        (0xb, b"reserved control opcode", 1002),
        (BINARY, &[0; 101], 1009),
    ];
    for (opcode, payload, code) in bad_inputs {
        let mut offender = raw_websocket(addr, "/ws").await;
        write_frame(&mut offender, true, false, opcode, payload).await;
        assert_eq!(read_close_code(&mut offender).await, code);
        // The one already connected and a new one are both served.
        assert_echoes(&mut bystander, b"during").await;
        let mut newcomer = raw_websocket(addr, "/ws").await;
        assert_echoes(&mut newcomer, b"new").await;
    }
}

const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A connection to an echo server whose messages must be finished within `timeout`.
async fn open_with_message_timeout(timeout: std::time::Duration) -> TcpStream {
    let upgrader = WsUpgrader::builder()
        .message_timeout(timeout)
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    raw_websocket(addr, "/ws").await
}

#[tokio::test]
async fn an_unfinished_message_is_closed_1008_after_the_message_timeout_pings_answered_meanwhile() {
    let timeout = std::time::Duration::from_millis(600);
    let mut stream = open_with_message_timeout(timeout).await;
    let started = std::time::Instant::now();
    write_frame(&mut stream, false, false, TEXT, b"never fin").await;
    // Pings are answered, and do not count as progress on the message.
    for n in 0..3u8 {
        tokio::time::sleep(timeout / 4).await;
        write_frame(&mut stream, true, false, PING, &[n]).await;
        let pong = read_frame(&mut stream).await;
        assert_eq!((pong.opcode, pong.payload), (PONG, vec![n]));
    }
    assert_eq!(read_close_code(&mut stream).await, 1008);
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "closed after {elapsed:?}");
}

#[tokio::test]
async fn a_message_that_keeps_growing_is_not_timed_out() {
    let timeout = std::time::Duration::from_millis(400);
    let mut stream = open_with_message_timeout(timeout).await;
    write_frame(&mut stream, false, false, BINARY, &[1; 10]).await;
    for _ in 0..4 {
        tokio::time::sleep(timeout / 2).await;
        write_frame(&mut stream, false, false, CONTINUATION, &[1; 10]).await;
    }
    write_frame(&mut stream, true, false, CONTINUATION, &[1; 10]).await;
    let frame = read_frame(&mut stream).await;
    assert_eq!((frame.opcode, frame.payload), (BINARY, vec![1; 60]));
}

#[tokio::test]
async fn unfinished_messages_past_the_inbound_budget_close_1013_and_give_it_back() {
    let budget = ws_upgrader::InboundBudget::new(64 << 10);
    let addr = spawn_echo_with_budget(&budget).await;
    // The first peer holds 40 KiB of an unfinished message; the second one's 40 KiB would pass
    // the 64 KiB budget.
    let mut first = raw_websocket(addr, "/ws").await;
    write_frame(&mut first, false, false, BINARY, &[1; 40 << 10]).await;
    let mut second = raw_websocket(addr, "/ws").await;
    write_frame(&mut second, false, false, BINARY, &[2; 40 << 10]).await;
    assert_eq!(read_close_code(&mut second).await, 1013);
    // Small complete messages never touch the budget.
    let mut third = raw_websocket(addr, "/ws").await;
    assert_echoes(&mut third, &[3; 100]).await;
    // The first finishes its message; the budget is all given back.
    write_frame(&mut first, true, false, CONTINUATION, &[1; 10]).await;
    let frame = read_frame(&mut first).await;
    assert_eq!(frame.payload.len(), (40 << 10) + 10);
    // Released as the message completed, before its echo was written; the refused peer's
    // reservation went with its error, before its close frame.
    assert_eq!(budget.in_use(), 0);
}

/// A server whose sockets only read, recording the largest output a socket held after any
/// message it gave, and how the last connection ended.
struct FloodedServer {
    addr: std::net::SocketAddr,
    most_output: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ended: std::sync::Arc<tokio::sync::Notify>,
    ended_with: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

async fn flooded_server(upgrader: WsUpgrader) -> FloodedServer {
    use std::sync::{Arc, atomic::Ordering};

    use axum::{Router, extract::Request, routing::any};

    let most_output = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ended = Arc::new(tokio::sync::Notify::new());
    let ended_with = Arc::new(std::sync::Mutex::new(None));
    let (most, end, with) = (most_output.clone(), ended.clone(), ended_with.clone());
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| {
            let upgrader = upgrader.clone();
            let (most, end, with) = (most.clone(), end.clone(), with.clone());
            async move {
                let (mut parts, _body) = request.into_parts();
                match upgrader.upgrade(&mut parts) {
                    Ok(pending) => pending.on_upgrade(move |mut socket| async move {
                        let last = loop {
                            match socket.recv().await {
                                Some(Ok(_)) => {
                                    most.fetch_max(socket.buffered_output(), Ordering::Relaxed);
                                }
                                Some(Err(error)) => break format!("{error:?}"),
                                None => break "end".to_owned(),
                            }
                        };
                        *with.lock().unwrap() = Some(last);
                        end.notify_one();
                    }),
                    Err(refusal) => refusal,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ws_upgrader::serve(listener, router).into_future());
    FloodedServer {
        addr,
        most_output,
        ended,
        ended_with,
    }
}

/// Opens a connection and writes 100,000 pings of 125 bytes (13 MB) to it from a task,
/// reading nothing: each ping asks for a 127-byte pong.
async fn flood(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncWriteExt as _;

    let (unread, mut write) = raw_websocket(addr, "/ws").await.into_split();
    let pings = test_support::client_frame(true, false, 0x9, &[b'p'; 125]).repeat(100_000);
    tokio::spawn(async move {
        // Kept open, unread, until the test ends the task.
        let _unread = unread;
        let _ = write.write_all(&pings).await;
        std::future::pending::<()>().await;
    })
}

/// A peer that floods pings and reads nothing: every ping queues a pong, so the server's
/// output would grow without bound. Past the write buffer size the socket stops reading until
/// the output drains: the output stays bounded, the flood stalls in the kernel's buffers, and
/// the server goes on serving other clients.
#[tokio::test]
async fn a_ping_flood_from_a_peer_that_never_reads_keeps_the_output_bounded() {
    use std::sync::atomic::Ordering;

    const WRITE_LIMIT: usize = 16 << 10;
    let server = flooded_server(
        WsUpgrader::builder()
            .write_buffer_size(WRITE_LIMIT)
            .build()
            .unwrap(),
    )
    .await;
    let flooding = flood(server.addr).await;
    // Until the kernel's buffers are full and the output reaches the write buffer size.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.most_output.load(Ordering::Relaxed) < WRITE_LIMIT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the output never filled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Unbounded, the output would grow by megabytes in this time (the server parses pings
    // far faster: 8 MB were seen); bounded, it stays at the write buffer size plus one pong.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let held = server.most_output.load(Ordering::Relaxed);
    assert!(
        held <= WRITE_LIMIT + 132,
        "the output of a socket whose peer reads nothing grew to {held} bytes"
    );
    assert!(server.ended_with.lock().unwrap().is_none(), "still open");

    // Other clients are served meanwhile.
    let (mut other, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)),
    )
    .await
    .unwrap()
    .unwrap();
    other
        .send(tungstenite::Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, other.next()).await.unwrap();
    assert!(
        matches!(answer, Some(Ok(tungstenite::Message::Pong(ref payload))) if &payload[..] == b"still there?"),
        "{answer:?}"
    );
    flooding.abort();
}

/// While its reads are held back by a full output, a flooding peer's deadlines still run: it
/// answers no ping (the pong cannot even reach it), so it is closed after the ping interval
/// plus the pong timeout.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_closed_by_the_ping_deadline() {
    let interval = std::time::Duration::from_millis(300);
    let server = flooded_server(
        WsUpgrader::builder()
            .ping_interval(Some(interval))
            .pong_timeout(interval)
            .build()
            .unwrap(),
    )
    .await;
    let flooding = flood(server.addr).await;
    tokio::time::timeout(WAIT, server.ended.notified())
        .await
        .expect("the flooding peer was closed in time");
    assert_eq!(
        server.ended_with.lock().unwrap().as_deref(),
        Some("PingTimeout")
    );
    flooding.abort();
}
