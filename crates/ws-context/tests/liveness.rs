//! DESIGN.md point 9: the server pings, and closes a peer that stops answering.

use std::time::{Duration, Instant};

use test_support::raw_websocket;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use ws_context::{ConnectionHub, Context, Endpoint, WsUpgrader};
use ws_test::{DEFAULT_TIMEOUT as WAIT, TestServer, eventually};

async fn ignore(_ctx: Context) -> Result<(), ws_context::BindError> {
    Ok(())
}

/// A raw client: completes the handshake, then never writes again (so never answers a
/// ping); the bytes it has read past the handshake (none yet).
async fn silent_client(server: &TestServer) -> (TcpStream, Vec<u8>) {
    (raw_websocket(server.addr(), "/ws").await, Vec::new())
}

/// A tokio-tungstenite client: it answers each ping while it reads and, unlike the kit's
/// client, returns the pings, which these tests count.
async fn ping_counting_client(
    server: &TestServer,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (client, _) = tokio_tungstenite::connect_async(server.ws_url("/ws"))
        .await
        .unwrap();
    client
}

/// Reads (never writes) until the server ends the connection, appending to `received`.
async fn read_until_closed(stream: &mut TcpStream, received: &mut Vec<u8>) {
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("server did not end the connection")
            .unwrap_or(0);
        if n == 0 {
            return;
        }
        received.extend_from_slice(&buf[..n]);
    }
}

/// What a silent peer read before the server ended its connection: a ping first, then
/// exactly one close frame, with 1001.
fn pinged_then_closed_1001(received: &[u8]) {
    let frames = frames(received);
    assert_eq!(
        frames.first().map(|f| f.0),
        Some(0x9),
        "a ping first: {frames:?}"
    );
    let closes: Vec<_> = frames.iter().filter(|f| f.0 == 0x8).collect();
    assert_eq!(closes.len(), 1, "exactly one close frame: {frames:?}");
    assert_eq!(u16::from_be_bytes([closes[0].1[0], closes[0].1[1]]), 1001);
}

/// Unmasked server frames as (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let len = usize::from(bytes[1] & 0x7f);
        assert!(len < 126, "control frames only");
        frames.push((opcode, bytes[2..2 + len].to_vec()));
        bytes = &bytes[2 + len..];
    }
    frames
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_within_interval_plus_timeout() {
    let interval = Duration::from_secs(1);
    let timeout = Duration::from_secs(1);
    let upgrader = WsUpgrader::builder()
        .ping_interval(Some(interval))
        .pong_timeout(timeout)
        .build()
        .unwrap();
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore).upgrader(upgrader).hub(hub.clone());
    let server = TestServer::endpoint("/ws", endpoint).await;

    let (mut stream, mut received) = silent_client(&server).await;
    let connected = Instant::now();
    eventually("the connection is registered", || hub.len() == 1).await;

    // Read (never write) until the server ends the connection.
    read_until_closed(&mut stream, &mut received).await;
    let elapsed = connected.elapsed();
    // Scheduling slack only (the machine is shared): the deadline itself is interval + timeout.
    assert!(
        elapsed <= interval + timeout + Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
    assert!(
        elapsed >= interval + timeout - Duration::from_millis(100),
        "closed after {elapsed:?}"
    );

    pinged_then_closed_1001(&received);
    eventually("the hub forgot the connection", || hub.is_empty()).await;
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays_open() {
    use futures_util::StreamExt as _;
    let upgrader = WsUpgrader::builder()
        .ping_interval(Some(Duration::from_secs(1)))
        .pong_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore).upgrader(upgrader).hub(hub.clone());
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut client = ping_counting_client(&server).await;
    // tungstenite answers pings while it reads; three pings, and the connection is still up.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            other => panic!("expected pings, got {other:?}"),
        }
    }
    assert_eq!(hub.len(), 1);
}

/// A handler that takes longer than the pong deadline, so that the next message is read ahead
/// while it runs.
async fn slow_echo(ctx: Context) -> Result<String, ws_context::BindError> {
    let text: String = ctx.bind()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(text)
}

fn liveness_endpoint(hub: &ConnectionHub) -> axum::Router {
    let upgrader = WsUpgrader::builder()
        .ping_interval(Some(Duration::from_millis(300)))
        .pong_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let endpoint = Endpoint::new(slow_echo).upgrader(upgrader).hub(hub.clone());
    axum::Router::new().route(
        "/ws",
        endpoint.into_route().expect("valid endpoint options"),
    )
}

#[tokio::test]
async fn pings_go_on_while_a_handler_runs_longer_than_the_pong_deadline() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Tm;
    let hub = ConnectionHub::new();
    let server = TestServer::router(liveness_endpoint(&hub)).await;
    let mut client = ping_counting_client(&server).await;
    // The second message is read ahead while the first one's handler sleeps.
    client.send(Tm::text("one")).await.unwrap();
    client.send(Tm::text("two")).await.unwrap();
    let mut replies = Vec::new();
    let mut pings = 0;
    while replies.len() < 2 {
        // tungstenite answers each ping while it reads.
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(Tm::Ping(_))) => pings += 1,
            Some(Ok(Tm::Text(text))) => replies.push(text.to_string()),
            other => panic!("expected pings and replies, got {other:?}"),
        }
    }
    assert_eq!(replies, ["one", "two"]);
    assert!(pings >= 4, "pings went on while the handlers ran: {pings}");
    assert_eq!(hub.len(), 1);
}

#[tokio::test]
async fn a_silent_peer_is_closed_on_time_even_while_a_handler_runs() {
    let hub = ConnectionHub::new();
    let server = TestServer::router(liveness_endpoint(&hub)).await;
    let (mut stream, mut received) = silent_client(&server).await;
    // Two masked text frames (an all-zero mask leaves the payload as is), then silence.
    stream
        .write_all(b"\x81\x83\0\0\0\0one\x81\x83\0\0\0\0two")
        .await
        .unwrap();
    let sent = Instant::now();
    read_until_closed(&mut stream, &mut received).await;
    let elapsed = sent.elapsed();
    // Interval + timeout is 600 ms; the handler alone would take 4 s.
    assert!(
        elapsed < Duration::from_millis(1500),
        "closed after {elapsed:?}"
    );
    pinged_then_closed_1001(&received);
}

/// Many messages in one read while a handler is busy: one is read ahead by the task, one held
/// by the socket, and the rest wait in the socket's unparsed bytes; every one is handled, in
/// order (a held message was once overwritten by the next one parsed).
#[tokio::test]
async fn messages_read_together_while_a_handler_runs_are_all_handled_in_order() {
    async fn slow_echo(ctx: Context) -> Result<String, ws_context::BindError> {
        let text: String = ctx.bind()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(text)
    }
    let endpoint = Endpoint::new(slow_echo);
    let server = TestServer::endpoint("/ws", endpoint).await;
    let (mut stream, _) = silent_client(&server).await;
    let mut burst = Vec::new();
    for n in 0..20u8 {
        // Masked text frames (an all-zero mask), all written at once.
        burst.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'm', b'a' + n]);
    }
    stream.write_all(&burst).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while received.len() < 20 * 4 {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("every echo in time")
            .unwrap();
        assert!(n > 0, "closed after {} echoes", received.len() / 4);
        received.extend_from_slice(&buf[..n]);
    }
    let echoes: Vec<String> = frames(&received)
        .into_iter()
        .filter(|(opcode, _)| *opcode == 0x1)
        .map(|(_, payload)| String::from_utf8(payload).unwrap())
        .collect();
    let sent: Vec<String> = (0..20u8)
        .map(|n| format!("m{}", char::from(b'a' + n)))
        .collect();
    assert_eq!(echoes, sent);
}
