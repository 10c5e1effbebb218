//! The handshake timeout on the wire: slow or stalled clients are disconnected when it passes,
//! clients in time are served, and open WebSockets are not affected by it.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_tungstenite::tungstenite;
use ws_upgrader::WsUpgrader;

use crate::support::spawn_echo;
use test_support::{
    WAIT, closed_within, raw_request, read_close_code, read_frame, upgrade_request,
};

const TIMEOUT: Duration = Duration::from_millis(400);

async fn server() -> std::net::SocketAddr {
    spawn_echo(
        WsUpgrader::builder()
            .handshake_timeout(TIMEOUT)
            .build()
            .unwrap(),
    )
    .await
}

/// Connects, sends `bytes`, and returns how long until the server closed the connection.
async fn time_to_disconnect(addr: std::net::SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    assert!(
        closed_within(&mut stream, TIMEOUT + WAIT).await,
        "the server kept a stalled handshake open"
    );
    started.elapsed()
}

fn assert_cut_at_timeout(elapsed: Duration) {
    assert!(elapsed >= TIMEOUT, "closed before the timeout: {elapsed:?}");
    assert!(
        elapsed < TIMEOUT + Duration::from_secs(3),
        "closed long after the timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_disconnected() {
    let addr = server().await;
    assert_cut_at_timeout(time_to_disconnect(addr, b"").await);
}

#[tokio::test]
async fn half_a_request_line_is_disconnected() {
    let addr = server().await;
    assert_cut_at_timeout(time_to_disconnect(addr, b"GET /ws HT").await);
}

#[tokio::test]
async fn headers_without_the_final_blank_line_are_disconnected() {
    let addr = server().await;
    let request = upgrade_request(addr, "/ws", "");
    let without_blank_line = request.strip_suffix("\r\n").unwrap();
    assert_cut_at_timeout(time_to_disconnect(addr, without_blank_line.as_bytes()).await);
}

#[tokio::test]
async fn a_client_that_stalls_after_its_request_is_closed_by_liveness() {
    // A complete request is answered at once, so the stall is on an open WebSocket: the
    // server's ping goes unanswered and the connection is closed with 1001.
    let addr = spawn_echo(
        WsUpgrader::builder()
            .handshake_timeout(TIMEOUT)
            .ping_interval(Some(Duration::from_secs(1)))
            .pong_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .await;
    let started = Instant::now();
    let (mut stream, status, _) = raw_request(addr, &upgrade_request(addr, "/ws", "")).await;
    assert_eq!(status, 101);
    let ping = read_frame(&mut stream).await;
    assert_eq!(ping.opcode, 0x9, "the server pings a quiet peer");
    assert_eq!(read_close_code(&mut stream).await, 1001);
    assert!(closed_within(&mut stream, WAIT).await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_slow_client_within_the_timeout_is_upgraded() {
    let addr = server().await;
    let request = upgrade_request(addr, "/ws", "");
    let (first, rest) = request.split_at(20);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    tokio::time::sleep(TIMEOUT / 4).await;
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt as _;
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
    })
    .await
    .unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

#[tokio::test]
async fn an_open_websocket_outlives_the_handshake_timeout() {
    let addr = server().await;
    let (mut client, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    // The timeout is about the handshake: the socket must still work well after it.
    tokio::time::sleep(TIMEOUT * 3).await;
    client
        .send(tungstenite::Message::text("still here"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(
        echoed.unwrap().unwrap(),
        tungstenite::Message::text("still here")
    );
}

#[tokio::test]
async fn a_keep_alive_connection_gets_the_timeout_for_each_request() {
    // A refused upgrade leaves a plain HTTP/1.1 connection: the next request head is
    // bounded by the same timeout.
    let addr = server().await;
    let (mut stream, status, _) = raw_request(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 426);
    let started = Instant::now();
    assert!(closed_within(&mut stream, TIMEOUT + WAIT).await);
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(3));
}
