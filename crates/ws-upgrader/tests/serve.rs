//! `ws_upgrader::serve` as a drop-in for `axum::serve`: connect info and graceful shutdown.

use std::net::SocketAddr;

use axum::{Router, extract::ConnectInfo, routing::get};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use crate::support::{WAIT, closed_within};

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
