//! The least a compressed broadcast costs on this machine, for S8: a server with nothing but
//! the protocol core (`ws_protocol`), one thread, blocking std sockets, no runtime, no tasks,
//! no queues. Receivers connect to any path; the trigger connection connects to `/broadcast`
//! or `/broadcast-each`, as on `gofr-bench-server`, and each message it sends goes to every
//! connection (the trigger included) at once from the read loop:
//!
//! - `/broadcast`: prepared once (`PreparedMessage`, compressed once), then one `writev` per
//!   connection of the shared frame;
//! - `/broadcast-each`: compressed by each connection (`Connection::send`), then one `writev`.
//!
//! So its server CPU per broadcast is the kernel's cost of the deliveries plus the least user
//! space can add, and the ratio of the two routes is the most any server could show on this
//! machine (bench/README.md, "S8 breakdown"). Connections must all be open before the trigger
//! connects (as `loadgen broadcast` does): from then on only the trigger is read, until it
//! closes; then every connection is dropped and the next run connects anew.
//!
//! Run with `cargo run --release -p bench --bin broadcast-floor`; it prints its address.

use std::{
    io::{self, IoSlice, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use bytes::Buf as _;
use sha1::{Digest as _, Sha1};
use ws_protocol::{
    Config, Connection, Message, PreparedMessage,
    deflate::{DeflatePolicy, negotiate},
};

/// The longest opening handshake read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a handshake may take, and a write may wait for a peer that reads nothing: a stuck
/// client ends its run with an error rather than hanging the program.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// One open connection.
struct Peer {
    tcp: TcpStream,
    ws: Connection,
}

/// How the trigger's messages are fanned out.
#[derive(Clone, Copy)]
enum Route {
    /// Compressed once, the frame shared.
    Once,
    /// Compressed by each connection.
    Each,
}

fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    bench::announce(listener.local_addr()?);
    // The defaults of gofr-bench-server's `Compression::default()`: level 1, no context
    // takeover, 32-byte threshold, window 15.
    let policy = DeflatePolicy::default();
    loop {
        let mut peers = Vec::new();
        let (mut trigger, route, leftover) = loop {
            let (tcp, _) = listener.accept()?;
            let (peer, path, leftover) = match accept(tcp, &policy) {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("broadcast-floor: handshake failed: {error:#}");
                    continue;
                }
            };
            match path.as_str() {
                "/broadcast" => break (peer, Route::Once, leftover),
                "/broadcast-each" => break (peer, Route::Each, leftover),
                _ => peers.push(peer),
            }
        };
        if let Err(error) = serve_trigger(&mut trigger, &mut peers, route, leftover) {
            eprintln!("broadcast-floor: {error:#}");
        }
        // The run is over: its connections are dropped, and the next run connects anew.
    }
}

/// Reads the trigger's messages and broadcasts each, until the trigger closes.
fn serve_trigger(
    trigger: &mut Peer,
    peers: &mut [Peer],
    route: Route,
    mut input: Vec<u8>,
) -> anyhow::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let mut rest = &input[..];
        while !rest.is_empty() {
            match trigger.ws.receive(&mut rest)? {
                Some(message) if message.is_data() => broadcast(trigger, peers, route, message)?,
                // Pings are answered and a close echoed by the core: write that out.
                Some(Message::Close(_)) => return write_out(trigger).map_err(Into::into),
                Some(_) => write_out(trigger)?,
                None => {}
            }
        }
        let read = trigger.tcp.read(&mut buf)?;
        if read == 0 {
            return Ok(());
        }
        input.clear();
        input.extend_from_slice(&buf[..read]);
    }
}

/// Sends `message` to every receiver and to the trigger, one write each.
fn broadcast(
    trigger: &mut Peer,
    peers: &mut [Peer],
    route: Route,
    message: Message,
) -> anyhow::Result<()> {
    let prepared = PreparedMessage::new(message);
    for peer in peers.iter_mut().chain(std::iter::once(trigger)) {
        match route {
            Route::Once => peer.ws.send_prepared(&prepared)?,
            Route::Each => peer.ws.send(prepared.message().clone())?,
        }
        write_out(peer)?;
    }
    Ok(())
}

/// Writes what the core queued, `writev` at a time (one when the socket has room).
fn write_out(peer: &mut Peer) -> io::Result<()> {
    let output = peer.ws.output();
    while !output.is_empty() {
        let mut slices = [IoSlice::new(&[]); 8];
        let count = output.chunks_vectored(&mut slices);
        let written = peer.tcp.write_vectored(&slices[..count])?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        output.advance(written);
    }
    Ok(())
}

/// The server's opening handshake (RFC 6455 §4.2), permessage-deflate negotiated with
/// `policy`; gives the connection, the request's path and the bytes read past the request.
fn accept(mut tcp: TcpStream, policy: &DeflatePolicy) -> anyhow::Result<(Peer, String, Vec<u8>)> {
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(PEER_TIMEOUT))?;
    tcp.set_write_timeout(Some(PEER_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0; 1024];
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        let read = tcp.read(&mut buf)?;
        if read == 0 {
            bail!("closed during the handshake");
        }
        head.extend_from_slice(&buf[..read]);
    };
    let leftover = head.split_off(end);
    let head = std::str::from_utf8(&head).context("request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next())
        .context("not a GET request")?
        .to_owned();
    let (mut key, mut offers) = (None, Vec::new());
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            offers.push(value.trim());
        }
    }
    let key = key.context("no Sec-WebSocket-Key")?;
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    let mut config = Config::server();
    if let Some((params, answer)) = negotiate(offers, policy) {
        config.deflate = Some(params);
        response.push_str(&format!("Sec-WebSocket-Extensions: {answer}\r\n"));
    }
    response.push_str("\r\n");
    tcp.write_all(response.as_bytes())?;
    // The trigger waits between rounds as long as the load generator likes.
    tcp.set_read_timeout(None)?;
    let ws = Connection::new(config);
    Ok((Peer { tcp, ws }, path, leftover))
}
