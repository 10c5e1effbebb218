//! A server on 127.0.0.1:0 that upgrades with a given `WsUpgrader`, and raw-socket helpers for
//! the tests that need to see bytes (frames, HTTP heads, timings).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::Request, response::Response, routing::any};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use ws_upgrader::{Message, WebSocket, WsUpgrader};

/// Upper bound for anything a test waits for.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Serves, with `upgrader` and `ws_upgrader::serve` (its handshake timeout applied):
/// `/ws` echoes every data message; `/protocol` first sends `protocol=<selected or none>`,
/// then echoes. A protocol error is answered with its close code through `WebSocket::fail`.
pub(crate) async fn spawn_echo(upgrader: WsUpgrader) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeout = upgrader.handshake_timeout();
    let for_protocol = upgrader.clone();
    let router = Router::new()
        .route(
            "/ws",
            any(move |request: Request| upgrade(upgrader.clone(), request, false)),
        )
        .route(
            "/protocol",
            any(move |request: Request| upgrade(for_protocol.clone(), request, true)),
        );
    tokio::spawn(
        ws_upgrader::serve(listener, router)
            .handshake_timeout(timeout)
            .into_future(),
    );
    addr
}

/// Frames the server of [`spawn_burst`] queues before its flush.
pub(crate) const BURST_FRAMES: usize = 20;

/// Serves `/ws` with `upgrader`: each connection queues [`BURST_FRAMES`] text frames of 100
/// bytes without flushing (and without reading), waits for `release`,
/// then flushes and echoes.
pub(crate) async fn spawn_burst(upgrader: WsUpgrader, release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| {
            let (upgrader, release) = (upgrader.clone(), release.clone());
            async move {
                let (mut parts, _body) = request.into_parts();
                match upgrader.upgrade(&mut parts) {
                    Ok(pending) => pending.on_upgrade(|mut socket| async move {
                        for i in 0..BURST_FRAMES {
                            let frame = Message::text(format!("{i:0>100}"));
                            if socket.feed(frame).await.is_err() {
                                return;
                            }
                        }
                        release.notified().await;
                        if socket.flush().await.is_ok() {
                            echo(socket).await;
                        }
                    }),
                    Err(refusal) => refusal,
                }
            }
        }),
    );
    tokio::spawn(ws_upgrader::serve(listener, router).into_future());
    addr
}

/// Serves `/ws`: each connection feeds one text frame `queued` without flushing, reads one
/// message, signals `read`, waits for `release`, then flushes and echoes.
pub(crate) async fn spawn_feed_then_read(read: Arc<Notify>, release: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upgrader = WsUpgrader::new();
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| {
            let (upgrader, read, release) = (upgrader.clone(), read.clone(), release.clone());
            async move {
                let (mut parts, _body) = request.into_parts();
                match upgrader.upgrade(&mut parts) {
                    Ok(pending) => pending.on_upgrade(|mut socket| async move {
                        if socket.feed(Message::text("queued")).await.is_err() {
                            return;
                        }
                        if !matches!(socket.recv().await, Some(Ok(_))) {
                            return;
                        }
                        read.notify_one();
                        release.notified().await;
                        if socket.flush().await.is_ok() {
                            echo(socket).await;
                        }
                    }),
                    Err(refusal) => refusal,
                }
            }
        }),
    );
    tokio::spawn(ws_upgrader::serve(listener, router).into_future());
    addr
}

/// Serves the echo of [`spawn_echo`] over one in-memory connection, so that hyper hands the
/// upgrade back as its type-erased `Upgraded`, not as a TCP stream. Returns the client's end.
pub(crate) fn spawn_echo_in_memory(upgrader: WsUpgrader) -> tokio::io::DuplexStream {
    use tower::ServiceExt as _;
    let (client, server) = tokio::io::duplex(64 << 10);
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| upgrade(upgrader.clone(), request, false)),
    );
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .with_upgrades(),
    );
    client
}

async fn upgrade(upgrader: WsUpgrader, request: Request, tell_protocol: bool) -> Response {
    let (mut parts, _body) = request.into_parts();
    match upgrader.upgrade(&mut parts) {
        Ok(pending) => pending.on_upgrade(move |mut socket| async move {
            if tell_protocol {
                let text = format!("protocol={}", socket.protocol().unwrap_or("none"));
                if socket.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            echo(socket).await;
        }),
        Err(refusal) => refusal,
    }
}

async fn echo(mut socket: WebSocket) {
    loop {
        match socket.recv().await {
            Some(Ok(message)) if message.is_data() => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                let _ = tokio::time::timeout(WAIT, socket.fail(&error)).await;
                return;
            }
            None => return,
        }
    }
}

/// A client key and the upgrade headers, ending with `extra` header lines (each ending
/// in `\r\n`) and the blank line.
pub(crate) fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Sends `request` on a new connection and reads the response head (up to the blank line).
/// Returns the stream, the status and the head's lines, lower-cased names.
pub(crate) async fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, u16, Vec<String>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(WAIT, read_head(&mut stream))
        .await
        .expect("response head in time");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{}", name.to_ascii_lowercase(), value),
            None => l.to_owned(),
        })
        .collect();
    (stream, status, headers)
}

/// Reads byte by byte up to and including `\r\n\r\n`, so nothing after the head is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 << 10, "response head too long");
        head.push(stream.read_u8().await.expect("response head"));
    }
    String::from_utf8(head).unwrap()
}

/// The value of header `name` (lower case) in `headers` from [`raw_request`].
pub(crate) fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|line| {
        line.split_once(':')
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.trim())
    })
}

/// A frame as it was on the wire.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) fin: bool,
    pub(crate) rsv1: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

/// Writes one masked client frame.
pub(crate) async fn write_frame(
    stream: &mut TcpStream,
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: &[u8],
) {
    let bytes = client_frame(fin, rsv1, opcode, payload);
    stream.write_all(&bytes).await.unwrap();
}

/// One masked client frame as bytes.
pub(crate) fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + 14);
    bytes.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode);
    match payload.len() {
        n if n < 126 => bytes.push(0x80 | n as u8),
        n if n <= 0xffff => {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    bytes
}

/// Reads one (unmasked, server) frame, within [`WAIT`].
pub(crate) async fn read_frame(stream: &mut TcpStream) -> Frame {
    tokio::time::timeout(WAIT, async {
        let first = stream.read_u8().await.expect("frame header");
        let second = stream.read_u8().await.expect("frame length");
        assert_eq!(second & 0x80, 0, "server frames are not masked");
        let len = match second & 0x7f {
            126 => u64::from(stream.read_u16().await.unwrap()),
            127 => stream.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len).unwrap()];
        stream.read_exact(&mut payload).await.unwrap();
        Frame {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            payload,
        }
    })
    .await
    .expect("a frame in time")
}

/// Reads frames until a close frame and returns its code.
pub(crate) async fn read_close_code(stream: &mut TcpStream) -> u16 {
    for _ in 0..100 {
        let frame = read_frame(stream).await;
        if frame.opcode == 0x8 {
            return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
        }
    }
    panic!("no close frame in 100 frames");
}

/// How the connection ended, waited for within `limit`: `true` when the peer closed it
/// (EOF or reset), `false` if it was still open when `limit` passed.
pub(crate) async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}
