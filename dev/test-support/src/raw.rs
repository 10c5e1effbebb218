//! Raw-socket helpers for the tests that need to see bytes: hand-written upgrade requests,
//! response heads read byte by byte, frames built and parsed by hand, timings of a close.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::WAIT;

/// A client key and the upgrade headers, ending with `extra` header lines (each ending
/// in `\r\n`) and the blank line.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Sends `request` on a new connection and reads the response head (up to the blank line).
/// Returns the stream, the status and the head's lines, lower-cased names.
///
/// # Panics
///
/// When the connection fails or no complete head comes within [`WAIT`].
pub async fn raw_request(addr: SocketAddr, request: &str) -> (TcpStream, u16, Vec<String>) {
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

/// Sends `request`, a whole hand-written HTTP request (with `Connection: close`), on a new
/// connection and returns the whole answer, read until the server closes it, as text.
///
/// # Panics
///
/// When the connection fails or the answer does not end within [`WAIT`].
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the whole answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Two requests that never end: the head of a `GET get` cut short, and a `POST post` whose
/// body stops after 10 of its 1000 bytes. Both sockets, to keep them open (a server's
/// shutdown or read timeouts must give up on them).
///
/// # Panics
///
/// When a connection fails.
pub async fn half_requests(addr: SocketAddr, get: &str, post: &str) -> [TcpStream; 2] {
    let mut half_head = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {get} HTTP/1.1\r\nHost: x\r\n");
    half_head.write_all(head.as_bytes()).await.unwrap();
    let mut half_body = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST {post} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    half_body
        .write_all(format!("{head}ten bytes.").as_bytes())
        .await
        .unwrap();
    [half_head, half_body]
}

/// Upgrades `path` with a hand-written request (no extensions, no subprotocol) and returns
/// the socket right after the `101` head, for frames written and read by hand.
///
/// # Panics
///
/// When the answer is not `101` within [`WAIT`].
pub async fn raw_websocket(addr: SocketAddr, path: &str) -> TcpStream {
    let (stream, status, head) = raw_request(addr, &upgrade_request(addr, path, "")).await;
    assert_eq!(status, 101, "upgrade of {path} refused: {head:?}");
    stream
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
pub fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|line| {
        line.split_once(':')
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.trim())
    })
}

/// A frame as it was on the wire.
#[derive(Debug)]
pub struct Frame {
    /// The FIN bit: the last frame of a message.
    pub fin: bool,
    /// The RSV1 bit: a compressed message (permessage-deflate).
    pub rsv1: bool,
    /// The opcode (1 text, 2 binary, 8 close, ...).
    pub opcode: u8,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

/// Writes one masked client frame.
pub async fn write_frame(
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
pub fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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
pub async fn read_frame(stream: &mut TcpStream) -> Frame {
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
pub async fn read_close_code(stream: &mut TcpStream) -> u16 {
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
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
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
