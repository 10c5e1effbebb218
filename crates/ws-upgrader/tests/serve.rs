//! `ws_upgrader::serve` as a drop-in for `axum::serve`: connect info and graceful shutdown.

use std::net::SocketAddr;

use axum::{Router, extract::ConnectInfo, routing::get};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use crate::support::{spawn_echo, spawn_echo_in_memory};
use test_support::{WAIT, client_frame, closed_within, read_frame, upgrade_request};

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

mod limits {
    //! The time and size limits `serve` puts on HTTP connections by default.

    use std::{
        net::SocketAddr,
        time::{Duration, Instant},
    };

    use axum::{
        Router,
        body::Body,
        routing::{get, post},
    };
    use tokio::{net::TcpListener, sync::oneshot};

    use test_support::{WAIT, closed_within, half_requests, raw_request};

    const SHORT: Duration = Duration::from_millis(300);

    /// Reads the body; a stalled one answers 408 with the error.
    async fn read_body(body: Body) -> (http::StatusCode, String) {
        match axum::body::to_bytes(body, 1 << 20).await {
            Ok(bytes) => (http::StatusCode::OK, format!("{} bytes", bytes.len())),
            Err(error) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
                while let Some(current) = cause {
                    if current.is::<ws_upgrader::BodyTimeout>() {
                        return (http::StatusCode::REQUEST_TIMEOUT, current.to_string());
                    }
                    cause = current.source();
                }
                (http::StatusCode::BAD_REQUEST, error.to_string())
            }
        }
    }

    fn router() -> Router {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route("/upload", post(read_body))
    }

    /// Serves `router()` with `configure` applied until the returned sender fires.
    async fn spawn(
        configure: impl FnOnce(ws_upgrader::Serve) -> ws_upgrader::Serve,
    ) -> (
        SocketAddr,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            configure(ws_upgrader::serve(listener, router())).with_graceful_shutdown(async move {
                let _ = stopped.await;
            }),
        );
        (addr, stop, server)
    }

    #[test]
    fn the_handshake_is_bounded_by_default() {
        assert_eq!(
            ws_upgrader::WsUpgrader::new().handshake_timeout(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            ws_upgrader::DEFAULT_HANDSHAKE_TIMEOUT,
            Duration::from_secs(10)
        );
    }

    #[tokio::test]
    async fn a_half_sent_body_is_answered_408_at_the_body_read_timeout() {
        let (addr, _stop, _server) = spawn(|s| s.body_read_timeout(Some(SHORT))).await;
        let started = Instant::now();
        let (mut stream, status, _) = raw_request(
            addr,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten..",
        )
        .await;
        let elapsed = started.elapsed();
        assert_eq!(status, 408);
        assert!(elapsed >= SHORT && elapsed < SHORT + WAIT, "{elapsed:?}");
        // The rest of the body never comes: the connection is not kept for another request.
        assert!(closed_within(&mut stream, WAIT).await);
    }

    #[tokio::test]
    async fn a_body_in_time_is_read_whole() {
        let (addr, _stop, _server) = spawn(|s| s.body_read_timeout(Some(SHORT))).await;
        let (_stream, status, _) = raw_request(
            addr,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
        let (addr, _stop, _server) = spawn(|s| s.idle_timeout(Some(SHORT))).await;
        let (mut stream, status, _) = raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
        let started = Instant::now();
        assert!(closed_within(&mut stream, SHORT + WAIT).await);
        let elapsed = started.elapsed();
        // Well before the 10 s handshake timeout, which also runs while idle.
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }

    #[tokio::test]
    async fn an_oversize_request_head_gets_431() {
        let (addr, _stop, _server) = spawn(|s| s).await;
        let big = "a".repeat(70 * 1024);
        let (_stream, status, _) = raw_request(
            addr,
            &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 431);
        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        let (_stream, status, _) =
            raw_request(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await;
        assert_eq!(status, 431);
        // Within the limits, served.
        let (_stream, status, _) = raw_request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn shutdown_drops_requests_that_never_finish_at_the_shutdown_timeout() {
        // No head or body timeout: only the shutdown timeout bounds the shutdown.
        let (addr, stop, server) = spawn(|s| {
            s.handshake_timeout(None)
                .body_read_timeout(None)
                .shutdown_timeout(SHORT)
        })
        .await;
        let [mut half_head, mut half_body] = half_requests(addr, "/", "/upload").await;
        // Let the server read both.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(SHORT + WAIT, server)
            .await
            .expect("serve returns after the shutdown timeout")
            .unwrap()
            .unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed < SHORT + Duration::from_secs(1), "{elapsed:?}");
        assert!(closed_within(&mut half_head, WAIT).await);
        assert!(closed_within(&mut half_body, WAIT).await);
    }
}
