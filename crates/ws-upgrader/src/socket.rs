use std::{
    fmt,
    num::NonZeroUsize,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
};

use futures_util::{Sink, SinkExt, Stream, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sockudo_ws::{
    CompressedWebSocketStream, Role, WebSocketStream, deflate::DeflateConfig, error::CloseReason,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
};
use ws_message::{Bytes, CloseFrame, Message, Utf8Bytes, close_code};

use crate::options::Options;

/// The connection under the engine. hyper hands back the TCP stream itself when the server
/// gave it `TokioIo<TcpStream>`, as `ws_upgrader::serve` and `axum::serve` do: the engine then
/// reads and writes the stream directly, not through hyper's type-erased `Upgraded` (two
/// layers of dynamic dispatch and a rewind buffer on every read and write).
enum Io {
    Tcp(TcpStream),
    Upgraded(TokioIo<Upgraded>),
}

impl Io {
    /// The transport, and hyper's read buffer: what it holds past the request are the
    /// client's first frames.
    fn from_upgraded(upgraded: Upgraded) -> (Io, Bytes) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Io::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Io::Upgraded(TokioIo::new(upgraded)), Bytes::new()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            Io::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Io::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// A transport whose reads take at most `read_limit` bytes (`read_buffer_size`), when it is
/// below the engine's own receive window; the engine's window itself is fixed.
struct Capped<T> {
    inner: T,
    read_limit: Option<NonZeroUsize>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Capped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.read_limit.map(NonZeroUsize::get) {
            Some(limit) if buf.remaining() > limit => {
                let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
                let read = limited.filled().len();
                buf.advance(read);
                Poll::Ready(Ok(()))
            }
            _ => Pin::new(&mut this.inner).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Capped<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type Transport = Capped<Io>;

/// The transport shared between the compressed engine and [`WebSocket::fail`]: the engine
/// stops writing after a protocol error, and the close frame that tells the peer why must still
/// go out on the same transport. The plain engine lends its transport (`get_mut`) and needs no
/// sharing; the compressed one does not. The lock is never contended while the engine runs.
#[derive(Clone)]
struct SharedIo(Arc<Mutex<Transport>>);

impl SharedIo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Transport> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

/// Why a socket operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The connection is closed (or closing) and takes no more messages.
    #[error("the WebSocket connection is closed")]
    Closed,
    /// The peer sent a message or frame over the configured limit (closed with 1009).
    #[error("message over the size limit")]
    TooBig,
    /// The peer sent text that is not UTF-8 (closed with 1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// The peer broke the protocol (closed with 1002).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer did not answer a ping in time (closed with 1001).
    #[error("peer did not answer ping in time")]
    PingTimeout,
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl WsError {
    /// The close code this error closes the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Closed => close_code::NORMAL,
            WsError::TooBig => close_code::TOO_BIG,
            WsError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            WsError::Protocol(_) => close_code::PROTOCOL_ERROR,
            WsError::PingTimeout => close_code::GOING_AWAY,
            WsError::Io(_) => close_code::ABNORMAL,
        }
    }
}

impl From<sockudo_ws::Error> for WsError {
    fn from(error: sockudo_ws::Error) -> Self {
        use sockudo_ws::Error as E;
        match error {
            E::Io(io) => WsError::Io(io),
            E::ConnectionClosed | E::Closed(_) | E::ConnectionReset => WsError::Closed,
            E::MessageTooLarge | E::FrameTooLarge | E::Capacity(_) => WsError::TooBig,
            E::InvalidUtf8 => WsError::InvalidUtf8,
            E::HeartbeatTimeout | E::IdleTimeout => WsError::PingTimeout,
            other => WsError::Protocol(other.to_string()),
        }
    }
}

enum Engine {
    Plain(Box<WebSocketStream<Transport>>),
    Deflate(Box<CompressedWebSocketStream<SharedIo>>, SharedIo),
}

/// An upgraded WebSocket connection: a [`Stream`] of [`Message`]s and a [`Sink`] for them.
///
/// Pings are answered and close frames echoed by the socket itself; they are still yielded so
/// callers can watch them. Writes are buffered: [`feed`](WebSocket::feed) several messages,
/// then [`flush`](WebSocket::flush) once, to put many frames in one system call.
pub struct WebSocket {
    engine: Engine,
    // Every field is kept for the connection's life, often in more than one place of the
    // task's future: boxed and niche-packed, the socket is 48 bytes, not 64.
    protocol: Option<Box<str>>,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("protocol", &self.protocol)
            .field("compression", &self.compression())
            .finish_non_exhaustive()
    }
}

impl WebSocket {
    pub(crate) fn new(
        upgraded: Upgraded,
        options: &Options,
        deflate: Option<DeflateConfig>,
        protocol: Option<String>,
    ) -> Self {
        // hyper's read buffer is let go only once the engine has its buffers: freed before,
        // its pages (touched while the request was read) would be reused inside the engine's
        // 64 KiB receive window, where they stay resident and unused: 3.4 KiB more per idle
        // connection (`cargo xtask bench`, S5).
        let (io, hyper_buffer) = Io::from_upgraded(upgraded);
        let leftover = Some(hyper_buffer.clone()).filter(|bytes| !bytes.is_empty());
        let config = engine_config(options);
        let io = Capped {
            inner: io,
            read_limit: NonZeroUsize::new(options.read_buffer_size)
                .filter(|limit| limit.get() < sockudo_ws::RECV_BUFFER_SIZE),
        };
        let engine = match deflate {
            Some(deflate) => {
                let shared = SharedIo(Arc::new(Mutex::new(io)));
                let ws = CompressedWebSocketStream::server_with_leftover(
                    shared.clone(),
                    config,
                    deflate,
                    leftover,
                );
                Engine::Deflate(Box::new(ws), shared)
            }
            None => {
                let mut ws =
                    WebSocketStream::from_raw_with_leftover(io, Role::Server, config, leftover);
                // The compressed stream has no such setting: there `max_backpressure` alone
                // lowers the engine's 64 KiB mark.
                ws.set_high_water_mark(options.write_buffer_size);
                Engine::Plain(Box::new(ws))
            }
        };
        drop(hyper_buffer);
        WebSocket {
            engine,
            protocol: protocol.map(String::into_boxed_str),
        }
    }

    /// The subprotocol selected during the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether permessage-deflate is on for this connection.
    pub fn compression(&self) -> bool {
        matches!(self.engine, Engine::Deflate(..))
    }

    /// The next message; `None` once the connection is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped, so it can sit in a
    /// `tokio::select!` loop.
    pub async fn recv(&mut self) -> Option<Result<Message, WsError>> {
        self.next().await
    }

    /// Queues a message without waiting for it to reach the network. It goes out at the next
    /// [`flush`](WebSocket::flush), or earlier when the write buffer fills.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future may leave the message unsent.
    pub async fn feed(&mut self, message: Message) -> Result<(), WsError> {
        SinkExt::feed(self, message).await
    }

    /// Writes everything queued to the network.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in that nothing is lost: the rest goes out at the next flush.
    pub async fn flush(&mut self) -> Result<(), WsError> {
        SinkExt::flush(self).await
    }

    /// Writes a message and flushes.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`feed`](WebSocket::feed).
    pub async fn send(&mut self, message: Message) -> Result<(), WsError> {
        SinkExt::send(self, message).await
    }

    /// Starts the closing handshake with a code and reason and flushes. Keep calling
    /// [`recv`](WebSocket::recv) until it gives `None` to complete the handshake.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        let frame = CloseFrame::new(code, reason).map_err(|e| WsError::Protocol(e.to_string()))?;
        self.send(Message::Close(Some(frame))).await
    }
}

impl WebSocket {
    /// After [`recv`](WebSocket::recv) gave an error, tells the peer why with the matching close
    /// frame (1002, 1007, 1009, ...) and shuts the connection down. Errors of the transport
    /// itself, where no frame can get through, only shut down.
    ///
    /// The engine stops at such an error without a close frame; RFC 6455 §7.1.7 lets an
    /// endpoint drop the connection, but a peer that is told the reason can fix its side.
    pub async fn fail(&mut self, error: &WsError) -> std::io::Result<()> {
        let close = (!matches!(error, WsError::Io(_) | WsError::Closed)).then(|| {
            let (code, reason) = (error.close_code(), error.to_string());
            let frame = CloseFrame::new(code, reason).unwrap_or_else(CloseFrame::from);
            let mut bytes = Vec::with_capacity(4 + frame.reason().len());
            // FIN + close opcode; servers never mask; the reason fits the 125-byte control limit.
            bytes.push(0x88);
            bytes.push(u8::try_from(2 + frame.reason().len()).unwrap_or(125));
            bytes.extend_from_slice(&frame.code().to_be_bytes());
            bytes.extend_from_slice(frame.reason().as_bytes());
            bytes
        });
        match &mut self.engine {
            Engine::Plain(ws) => close_transport(ws.get_mut(), close).await,
            Engine::Deflate(_, shared) => close_transport(&mut shared.clone(), close).await,
        }
    }
}

/// Writes `close` (a close frame's bytes) if there is one, then shuts the transport down.
async fn close_transport(
    io: &mut (impl AsyncWrite + Unpin),
    close: Option<Vec<u8>>,
) -> std::io::Result<()> {
    if let Some(bytes) = close {
        io.write_all(&bytes).await?;
        io.flush().await?;
    }
    io.shutdown().await
}

/// The capacity the engine's write buffer starts with. It grows as frames are queued, so this
/// costs no throughput; it is what an idle connection keeps (measured with `cargo xtask
/// bench`, S5: a 16 KiB buffer cost about 4 KiB of RSS per idle connection, the page its
/// first frame touched plus the one its end shares with the next allocation).
const INITIAL_WRITE_BUFFER: usize = 512;

fn engine_config(options: &Options) -> sockudo_ws::Config {
    let mut config = sockudo_ws::Config {
        max_message_size: options.max_message_size,
        max_frame_size: options.max_frame_size,
        // The engine's `write_buffer_size` is only the buffer's first capacity; what bounds
        // coalescing is the pending-bytes mark at which it writes before taking another
        // frame, the smaller of its high-water mark and `max_backpressure`.
        write_buffer_size: options.write_buffer_size.min(INITIAL_WRITE_BUFFER),
        max_backpressure: options.write_buffer_size,
        // Liveness is ping/pong; an absolute idle deadline would close quiet but healthy peers.
        idle_timeout: 0,
        ..sockudo_ws::Config::default()
    };
    match options.ping_interval {
        Some(interval) => {
            config.auto_ping = true;
            config.ping_interval = whole_seconds(interval);
            config.pong_timeout = whole_seconds(options.pong_timeout);
        }
        None => {
            config.auto_ping = false;
            config.ping_interval = 0;
        }
    }
    config
}

/// The engine counts in whole seconds; round up so a short setting never turns the timer off.
fn whole_seconds(duration: std::time::Duration) -> u32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

fn from_engine(message: sockudo_ws::Message) -> Result<Message, WsError> {
    use sockudo_ws::Message as M;
    Ok(match message {
        M::Text(bytes) => {
            Message::Text(Utf8Bytes::try_from_bytes(bytes).map_err(|_| WsError::InvalidUtf8)?)
        }
        M::Binary(bytes) => Message::Binary(bytes),
        M::Ping(bytes) => Message::Ping(bytes),
        M::Pong(bytes) => Message::Pong(bytes),
        M::Close(reason) => {
            Message::Close(reason.and_then(|r| CloseFrame::new(r.code, r.reason).ok()))
        }
    })
}

fn to_engine(message: Message) -> sockudo_ws::Message {
    use sockudo_ws::Message as M;
    match message {
        Message::Text(text) => M::Text(text.into_bytes()),
        Message::Binary(bytes) => M::Binary(bytes),
        Message::Ping(bytes) => M::Ping(bytes),
        Message::Pong(bytes) => M::Pong(bytes),
        Message::Close(frame) => M::Close(
            frame
                .and_then(CloseFrame::into_wire)
                .map(|(code, reason)| CloseReason::new(code, reason)),
        ),
    }
}

impl Stream for WebSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = match &mut self.engine {
            Engine::Plain(ws) => ready!(ws.poll_next_unpin(cx)),
            Engine::Deflate(ws, _) => ready!(ws.poll_next_unpin(cx)),
        };
        Poll::Ready(next.map(|item| item.map_err(WsError::from).and_then(from_engine)))
    }
}

impl Sink<Message> for WebSocket {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.engine {
            Engine::Plain(ws) => ws.poll_ready_unpin(cx),
            Engine::Deflate(ws, _) => ws.poll_ready_unpin(cx),
        }
        .map_err(WsError::from)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let message = to_engine(message);
        match &mut self.engine {
            Engine::Plain(ws) => ws.start_send_unpin(message),
            Engine::Deflate(ws, _) => ws.start_send_unpin(message),
        }
        .map_err(WsError::from)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.engine {
            Engine::Plain(ws) => ws.poll_flush_unpin(cx),
            Engine::Deflate(ws, _) => ws.poll_flush_unpin(cx),
        }
        .map_err(WsError::from)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        match &mut self.engine {
            Engine::Plain(ws) => ws.poll_close_unpin(cx),
            Engine::Deflate(ws, _) => ws.poll_close_unpin(cx),
        }
        .map_err(WsError::from)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn read_buffer_size_caps_each_read() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        peer.write_all(&[7; 10_000]).await.unwrap();
        let mut capped = Capped {
            inner: ours,
            read_limit: NonZeroUsize::new(2048),
        };
        // The engine offers its whole 64 KiB window; one read takes at most the limit.
        let mut window = vec![0u8; 64 << 10];
        assert_eq!(capped.read(&mut window).await.unwrap(), 2048);
        assert_eq!(capped.read(&mut window).await.unwrap(), 2048);
        capped.read_limit = None;
        assert_eq!(capped.read(&mut window).await.unwrap(), 10_000 - 4096);
    }
}
