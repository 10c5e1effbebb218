//! `ws_upgrader::serve` as a drop-in for `axum::serve`: connect info and graceful shutdown.

use std::net::SocketAddr;

use axum::{Router, extract::ConnectInfo, routing::get};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use crate::support::{
    WAIT, client_frame, closed_within, read_frame, spawn_echo, spawn_echo_in_memory,
    upgrade_request,
};

#[tokio::test]
async fn requests_carry_the_peer_address_and_shutdown_is_graceful() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(ws_upgrader::serve(listener, router).with_graceful_shutdown(
        async move {
            let _ = stopped.await;
        },
    ));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap().to_string();
    stream
        .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 1024];
    let mut read = 0;
    while !String::from_utf8_lossy(&response[..read]).ends_with(&local) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut response[read..]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the body");
        read += n;
    }

    // The kept-alive idle connection is closed and the server returns; no new connections.
    stop.send(()).unwrap();
    assert!(closed_within(&mut stream, WAIT).await);
    tokio::time::timeout(WAIT, server)
        .await
        .expect("serve returns after the signal")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn frames_sent_with_the_request_are_served_after_the_upgrade() {
    // A client may send its first frames without waiting for the 101: they arrive in the same
    // read as the request, and the server must take them from what it already read.
    let addr = spawn_echo(ws_upgrader::WsUpgrader::new()).await;
    let mut bytes = upgrade_request(addr, "/ws", "").into_bytes();
    bytes.extend(client_frame(true, false, 0x1, b"first"));
    bytes.extend(client_frame(true, false, 0x1, b"second"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 4096, "response head too long");
        head.push(
            tokio::time::timeout(WAIT, stream.read_u8())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for expected in [&b"first"[..], b"second"] {
        let frame = read_frame(&mut stream).await;
        assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, expected));
    }
}

#[tokio::test]
async fn a_transport_other_than_tcp_is_served_through_hyper_s_upgraded() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let io = spawn_echo_in_memory(ws_upgrader::WsUpgrader::new());
    let (mut client, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://in-memory/ws", io),
    )
    .await
    .unwrap()
    .unwrap();
    for text in ["one", "two"] {
        client.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::text(text));
    }
}
