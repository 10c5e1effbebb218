//! The upgraded connection: the protocol core of `ws-protocol` driven over tokio I/O.
//!
//! What a connection keeps is what makes idle connections cheap. Reads go into a buffer of the
//! worker thread (`SCRATCH`), not of the connection; the protocol core keeps only the bytes of a
//! frame or message that is not complete yet, and bytes read past the message returned are kept
//! (`pending`) only until they are parsed. Large messages skip the scratch buffer: they are read
//! into a buffer of their own, which the core returns them in (see `poll_read`). The core's
//! output buffer holds frames only until they are written. An idle connection is its socket,
//! the core's small state and one timer.
//!
//! One timer (`Timers`) serves every deadline of the connection: the next ping on a quiet
//! connection, the pong that must follow it, an unfinished message that stopped making progress,
//! and the peer's answer to our close frame. It is re-armed lazily: traffic moves a deadline
//! later without touching the timer, which may then fire early and is set again.

use std::{
    cell::RefCell,
    fmt,
    future::poll_fn,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
};

use bytes::Buf as _;
use futures_util::{Sink, SinkExt, Stream, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, tcp::OwnedReadHalf},
    time::{Instant, Sleep},
};
use ws_message::{Bytes, CloseFrame, Message, close_code};
use ws_protocol::{
    CloseState, Config, Connection, MAX_HEADER, PreparedMessage, ProtocolError, Role, SendError,
};

use crate::{
    direct::{DirectWriter, Transport},
    options::Options,
};

/// The connection under the protocol. hyper hands back the TCP stream itself when the server
/// gave it `TokioIo<TcpStream>`, as `ws_upgrader::serve` and `axum::serve` do: it is then read
/// and written directly, not through hyper's type-erased `Upgraded` (two layers of dynamic
/// dispatch and a rewind buffer on every read and write).
///
/// A TCP stream is split: its read half is the task's alone (read as before, through tokio's
/// `AsyncRead`), its write half is shared with the connection's [`DirectWriter`]s
/// (`direct.rs`).
enum Io {
    Tcp {
        read: OwnedReadHalf,
        write: Arc<Transport>,
        /// The writes are this task's (taken with [`WebSocket::claim_writes`] and not yet given
        /// back by a flush): taking them again is not even a load.
        held: bool,
    },
    Upgraded(TokioIo<Upgraded>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Io::poll_read(self.get_mut(), cx, buf)
    }
}

impl Io {
    /// The transport, and hyper's read buffer: what it holds past the request are the
    /// client's first frames.
    fn from_upgraded(upgraded: Upgraded) -> (Io, Bytes) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (read, write) = parts.io.into_inner().into_split();
                let io = Io::Tcp {
                    read,
                    write: Transport::new(write),
                    held: false,
                };
                (io, parts.read_buf)
            }
            Err(upgraded) => (Io::Upgraded(TokioIo::new(upgraded)), Bytes::new()),
        }
    }

    /// A direct writer left the rest of a frame for the task to write.
    fn has_rest(&self) -> bool {
        matches!(self, Io::Tcp { write, .. } if write.has_rest())
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp { read, .. } => Pin::new(read).poll_read(cx, buf),
            Io::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }

    /// One chunk is written with `send`, more with `writev`: on a socket `writev` costs
    /// ~230 ns more per call (bench/README.md "send, not writev"), and most writes are one
    /// chunk (a reply, or a burst of small frames).
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp { write, .. } => write.poll_write(cx, bufs),
            Io::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp { .. } => Poll::Ready(Ok(())),
            Io::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp { write, .. } => Poll::Ready(write.shutdown()),
            Io::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

thread_local! {
    /// Every connection served by this thread reads into this buffer, so no connection owns a
    /// receive buffer while it waits. It grows to the largest `read_buffer_size` in use.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `read` on the thread's scratch buffer cut to `len` bytes.
fn with_scratch<R>(len: usize, read: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            read(&mut scratch[..len])
        }
        // Only if a read ever ran inside another on this thread: a buffer of its own then.
        Err(_) => read(&mut vec![0; len]),
    })
}

/// Chunks of the output given to one `writev`. The array is filled on every write, so it is
/// kept short: a burst of small frames is one chunk, a large or shared frame one or two, and 16
/// chunks hold at least 8 frames of 8 KiB or more (64 cost ~150 more instructions per write to
/// set up, per receiver of a broadcast: S8 in bench/README.md).
const WRITE_SLICES: usize = 16;

/// The payload still to come of a data frame from which reads go straight into the message's
/// buffer rather than the scratch buffer (a copy saved). Such a read ends at the frame's end,
/// where a read into the scratch buffer could have taken the next frames too: below about this
/// size, a copy costs less than the extra system call it may take.
const DIRECT_READ_MIN: usize = 16 << 10;

/// Reads one poll of a socket may make without completing a message (1 MiB at the default
/// read size) before it lets other tasks run.
const READS_PER_POLL: usize = 16;

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
    /// The peer sent a payload that cannot be read: compressed data that does not inflate, a
    /// close reason that is not UTF-8 (closed with 1007).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// The peer broke the protocol (closed with 1002).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The bytes held in unfinished messages across the process reached the inbound budget
    /// (closed with 1013, try again later).
    #[error("the server's budget for unfinished messages is exhausted; try again later")]
    TryAgainLater,
    /// A message stayed unfinished, with no new bytes of it, for the message timeout
    /// (closed with 1008).
    #[error("message unfinished for longer than the message timeout")]
    MessageTimeout,
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
            WsError::InvalidUtf8 | WsError::InvalidPayload(_) => close_code::INVALID_PAYLOAD,
            WsError::Protocol(_) => close_code::PROTOCOL_ERROR,
            WsError::TryAgainLater => close_code::TRY_AGAIN_LATER,
            WsError::MessageTimeout => close_code::POLICY,
            WsError::PingTimeout => close_code::GOING_AWAY,
            WsError::Io(_) => close_code::ABNORMAL,
        }
    }

    fn from_protocol(error: &ProtocolError) -> WsError {
        match error.close_code() {
            close_code::TOO_BIG => WsError::TooBig,
            close_code::TRY_AGAIN_LATER => WsError::TryAgainLater,
            close_code::INVALID_PAYLOAD => match error {
                ProtocolError::InvalidUtf8 => WsError::InvalidUtf8,
                other => WsError::InvalidPayload(other.to_string()),
            },
            _ => WsError::Protocol(error.to_string()),
        }
    }
}

fn send_error(error: SendError) -> WsError {
    match error {
        SendError::Closed => WsError::Closed,
        other => WsError::Protocol(other.to_string()),
    }
}

/// What a read gave.
enum Read {
    /// The peer closed the transport.
    Eof,
    /// Bytes were read and parsed: a message, or nothing complete yet.
    Parsed(Result<Option<Message>, ProtocolError>),
}

/// The deadlines of a connection, behind one timer.
struct Timers {
    sleep: Pin<Box<Sleep>>,
    /// What the sleep is set to; never later than the earliest deadline.
    armed_for: Instant,
    /// The upgrader's options, shared: its durations are read from there rather than copied
    /// into every connection (whose memory this is).
    options: Arc<Options>,
    /// The waker the sleep was last polled with since it was set: the timer wakes it when the
    /// sleep ends, so while nothing made a deadline earlier, [`poll_timers`] with the same
    /// waker returns at once (it runs before every read, two or three times a message; the
    /// full check costs ~95 instructions). Cleared by whatever may make a deadline earlier:
    /// our close going out, a ping sent, the sleep set again; a message that starts is
    /// `WebSocket::timer_covers_message`.
    ///
    /// [`poll_timers`]: WebSocket::poll_timers
    registered: Option<Waker>,
    /// When bytes last came from the peer.
    last_heard: Instant,
    /// When our unanswered ping went out.
    ping_sent: Option<Instant>,
    /// Bytes received of the unfinished message at its last progress, and when that was.
    progress: (usize, Instant),
    /// When our close frame was queued; the peer then has `close_timeout` to answer it.
    close_sent: Option<Instant>,
}

/// A deadline that passed.
enum Due {
    /// The peer stopped answering.
    PingTimeout,
    /// The unfinished message made no progress.
    MessageTimeout,
    /// The peer never answered our close frame.
    CloseTimeout,
    /// A ping is due on a quiet connection.
    Ping,
}

impl Timers {
    fn new(options: Arc<Options>, now: Instant) -> Self {
        Timers {
            sleep: Box::pin(tokio::time::sleep_until(now)),
            armed_for: now,
            options,
            registered: None,
            last_heard: now,
            ping_sent: None,
            progress: (0, now),
            close_sent: None,
        }
    }

    /// The earliest deadline, if any.
    fn next_deadline(&self, in_message: bool) -> Option<Instant> {
        let liveness = match (self.ping_sent, self.options.ping_interval) {
            (Some(sent), _) => Some(sent + self.options.pong_timeout),
            (None, Some(interval)) if self.close_sent.is_none() => Some(self.last_heard + interval),
            (None, _) => None,
        };
        let progress = in_message.then(|| self.progress.1 + self.options.message_timeout);
        let close = self
            .close_sent
            .map(|sent| sent + self.options.close_timeout);
        [liveness, progress, close].into_iter().flatten().min()
    }

    /// What is due now, if anything; `suspended` while the caller holds reads back (the peer
    /// cannot be blamed for answers we did not read).
    fn due(&mut self, now: Instant, in_message: bool, suspended: bool) -> Option<Due> {
        if let Some(sent) = self.close_sent {
            return (now >= sent + self.options.close_timeout).then_some(Due::CloseTimeout);
        }
        if suspended {
            self.last_heard = now;
            self.ping_sent = None;
            self.progress.1 = now;
            return None;
        }
        if let Some(sent) = self.ping_sent
            && now >= sent + self.options.pong_timeout
        {
            return Some(Due::PingTimeout);
        }
        if in_message && now >= self.progress.1 + self.options.message_timeout {
            return Some(Due::MessageTimeout);
        }
        match self.options.ping_interval {
            Some(interval) if self.ping_sent.is_none() && now >= self.last_heard + interval => {
                self.ping_sent = Some(now);
                Some(Due::Ping)
            }
            _ => None,
        }
    }

    /// Whether the timer will wake the task of `waker` and has not ended yet.
    #[inline]
    fn armed(&self, waker: &Waker) -> bool {
        self.registered
            .as_ref()
            .is_some_and(|registered| registered.will_wake(waker))
            && !self.sleep.is_elapsed()
    }

    /// Bytes came from the peer: it is alive, and an unfinished message may have grown.
    fn heard(&mut self, now: Instant, received: usize) {
        self.last_heard = now;
        self.ping_sent = None;
        // Between messages (0) the clock restarts, so the next message is timed from its start.
        if received == 0 || received != self.progress.0 {
            self.progress = (received, now);
        }
    }
}

/// An upgraded WebSocket connection: a [`Stream`] of [`Message`]s and a [`Sink`] for them.
///
/// Pings are answered and close frames echoed by the socket itself; they are still yielded so
/// callers can watch them. The socket pings a quiet peer and ends with
/// [`WsError::PingTimeout`] when it stops answering (the upgrader's `ping_interval` and
/// `pong_timeout`), and ends an unfinished message that makes no progress
/// ([`WsError::MessageTimeout`]). Writes are buffered: [`feed`](WebSocket::feed) several
/// messages, then [`flush`](WebSocket::flush) once, to put many frames in one system call.
pub struct WebSocket {
    io: Io,
    conn: Connection,
    /// Bytes read past the last message returned, not parsed yet; `None` once they are.
    pending: Option<Bytes>,
    /// A data message read while the caller asked for control frames only
    /// ([`recv_control`](WebSocket::recv_control)); the next [`recv`](WebSocket::recv) gives it.
    held: Option<Message>,
    timers: Timers,
    /// The error `recv` gave, for [`fail`](WebSocket::fail) to tell the peer; or, with
    /// `failure_unreported`, one met in the bytes after the message returned, for the next
    /// `recv` to give.
    failure: Option<ProtocolError>,
    failure_unreported: bool,
    /// What the read side is known to be at, the end included.
    input: Input,
    /// The core queued an answer of its own (a pong, the echo of a close) that must go out
    /// without waiting for the caller's flush.
    answer_queued: bool,
    /// Whether the timer's deadline took an unfinished message into account; when a message
    /// starts after the timer was set, its timeout may be earlier (kept here, not in
    /// [`Timers`], where it would not fit in padding).
    timer_covers_message: bool,
    /// The length of the last message when it was large (0 otherwise): large messages are
    /// arriving. The next one is then read into a buffer of about that size, which becomes
    /// its message's (`Connection::receive_owned`); the rest of a large frame is read straight
    /// into its message's buffer; a read into the scratch buffer stops at the next header.
    large_message: u32,
    protocol: Option<Box<str>>,
}

/// What a [`WebSocket`]'s read side is known to be at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    /// Nothing in particular: the last read filled what it asked for, or none was made yet.
    Open,
    /// The last read into the scratch buffer took less than it asked for: nothing more had
    /// arrived then ([`WebSocket::drained`]).
    Drained,
    /// The stream has ended: the transport is closed or the closing handshake is complete.
    Ended,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("protocol", &self.protocol)
            .field("compression", &self.compression())
            .field("close_state", &self.conn.close_state())
            .finish_non_exhaustive()
    }
}

impl WebSocket {
    pub(crate) fn new(
        upgraded: Upgraded,
        options: Arc<Options>,
        deflate: Option<ws_protocol::deflate::DeflateParams>,
        protocol: Option<String>,
    ) -> Self {
        let (io, leftover) = Io::from_upgraded(upgraded);
        let config = Config {
            role: Role::Server,
            max_message_size: options.max_message_size,
            max_frame_size: options.max_frame_size,
            deflate,
            budget: Some(options.inbound_budget.clone()),
        };
        WebSocket {
            io,
            conn: Connection::new(config),
            pending: (!leftover.is_empty()).then(|| Bytes::copy_from_slice(&leftover)),
            held: None,
            timers: Timers::new(options, Instant::now()),
            failure: None,
            failure_unreported: false,
            input: Input::Open,
            answer_queued: false,
            timer_covers_message: false,
            large_message: 0,
            protocol: protocol.map(String::into_boxed_str),
        }
    }

    /// The subprotocol selected during the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The bytes queued for the peer and not written yet. It stays under the write buffer size
    /// plus one frame: past the size, writes wait ([`Sink::poll_ready`]) and reading stops
    /// (a peer that sends pings and reads no pongs cannot grow it).
    pub fn buffered_output(&mut self) -> usize {
        self.conn.output().len()
    }

    /// Whether permessage-deflate is on for this connection.
    pub fn compression(&self) -> bool {
        self.conn.compression()
    }

    /// Whether the next [`recv`](WebSocket::recv) would most likely wait: the last read from
    /// the transport took less than it asked for (nothing more had arrived) and all it brought
    /// was given out, with nothing else to do first (an answer to write, an error to report,
    /// the end). A caller handling a burst of messages stops there: one more poll would only
    /// find nothing and register the task for the socket's readiness, which the caller's next
    /// wait on [`recv`](WebSocket::recv) does anyway. A hint: new bytes may have arrived since,
    /// and that next wait reads them.
    pub fn drained(&self) -> bool {
        self.input == Input::Drained
            && self.pending.is_none()
            && self.held.is_none()
            && !self.failure_unreported
            && !self.answer_queued
            && self.conn.close_state() != CloseState::Closed
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

    /// Keeps the connection alive while the caller is not ready for another data message:
    /// answers pings, drives the server's pings and their deadline, and gives control frames
    /// (ping, pong, close), errors and the end of the stream as [`recv`](WebSocket::recv) does.
    /// At most one data message is read ahead and kept for the next `recv`; reading then
    /// stops (so memory stays bounded) and, since answers behind it cannot be read, the pong
    /// deadline waits too.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`recv`](WebSocket::recv).
    pub async fn recv_control(&mut self) -> Option<Result<Message, WsError>> {
        poll_fn(|cx| self.poll_recv_control(cx)).await
    }

    /// [`recv_control`](WebSocket::recv_control) as a poll, for a caller that polls the
    /// socket among other sources by hand (as `Stream::poll_next` is to `recv`).
    pub fn poll_recv_control(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, WsError>>> {
        self.poll_incoming(cx, true)
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

    /// [`feed`](WebSocket::feed) for a message encoded once for many connections: the frame's
    /// bytes (compressed, when permessage-deflate is on without server context takeover) are
    /// made by the first connection with the same parameters and shared by the others.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`feed`](WebSocket::feed).
    pub async fn feed_prepared(&mut self, message: &PreparedMessage) -> Result<(), WsError> {
        poll_fn(|cx| Pin::new(&mut *self).poll_ready(cx)).await?;
        self.start_send_prepared(message)
    }

    /// [`Sink::start_send`] for a prepared message: queues it in the write buffer, to be called
    /// once [`Sink::poll_ready`] gave `Ready(Ok(()))`.
    pub fn start_send_prepared(&mut self, message: &PreparedMessage) -> Result<(), WsError> {
        if !message.message().is_data() {
            // A control frame or a close: nothing to share, and a close starts its timer.
            return Pin::new(self).start_send(message.message().clone());
        }
        self.claim_writes();
        self.conn.send_prepared(message).map_err(send_error)
    }

    /// A writer for other tasks to write prepared messages straight into this connection's
    /// socket while this one has nothing to write ([`DirectWriter`]). `None` when the socket
    /// is not a TCP stream of its own (a server that gave hyper another transport) or when
    /// its frames cannot be shared (server context takeover: each message is compressed with
    /// the connection's own state).
    ///
    /// A task that polls this socket and also takes frames to write from a queue of its own
    /// calls [`claim_writes`](WebSocket::claim_writes) before taking one.
    pub fn direct_writer(&self) -> Option<DirectWriter> {
        match &self.io {
            Io::Tcp { write, .. } => Some(DirectWriter::new(write, self.conn.shared_framing()?)),
            Io::Upgraded(_) => None,
        }
    }

    /// Holds the socket's writes for this task: no [`DirectWriter`] starts a write until the
    /// task's output is written out by a flush. For a task that takes frames to write from a
    /// queue of its own: it calls this before it takes one, so that a direct write cannot go
    /// out between the taking and the writing (`feed` and `start_send` call it themselves).
    /// If a direct writer is writing at that instant, the task's next write waits for it (one
    /// system call) and is woken when it is done.
    #[inline]
    pub fn claim_writes(&mut self) {
        if let Io::Tcp { write, held, .. } = &mut self.io
            && !*held
        {
            let _ = write.claim();
            *held = true;
        }
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
    /// [`recv`](WebSocket::recv) until it gives `None` to complete the handshake. A code that
    /// may not be sent (see [`CloseFrame::new`]) is refused with [`WsError::Protocol`].
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        let frame = CloseFrame::new(code, reason).map_err(|e| WsError::Protocol(e.to_string()))?;
        self.send(Message::Close(Some(frame))).await
    }

    /// After [`recv`](WebSocket::recv) gave an error, tells the peer why with the matching close
    /// frame (1002, 1007, 1009, 1013, ...) and shuts the connection down. Errors of the
    /// transport itself, where no frame can get through, only shut down.
    pub async fn fail(&mut self, error: &WsError) -> io::Result<()> {
        match self.failure.take() {
            Some(protocol_error) => self.conn.fail(&protocol_error),
            None if !matches!(error, WsError::Io(_) | WsError::Closed) => {
                let frame = CloseFrame::new(error.close_code(), error.to_string())
                    .unwrap_or_else(CloseFrame::from);
                // Refused only when our close is out already: nothing more to say then.
                let _ = self.conn.send(Message::Close(Some(frame)));
            }
            None => {}
        }
        if !matches!(error, WsError::Io(_)) {
            poll_fn(|cx| self.poll_write_output(cx)).await?;
        }
        self.input = Input::Ended;
        poll_fn(|cx| self.io.poll_shutdown(cx)).await
    }

    /// Writes the core's output until it is empty (or the transport would block).
    fn poll_write_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_until(cx, 0)
    }

    /// Writes the core's output until at most `keep` bytes are left. On a TCP stream, whose
    /// writes [`DirectWriter`]s share, the task takes them first (after the rest of a
    /// writer's frame, if one is left), and gives them back once the output is written out.
    fn poll_write_until(&mut self, cx: &mut Context<'_>, keep: usize) -> Poll<io::Result<()>> {
        let output = self.conn.output();
        // A rest left by a direct writer goes out before the output, so only a write of the
        // whole output needs to look for one.
        if let Io::Tcp { write, .. } = &self.io
            && (output.len() > keep || (keep == 0 && write.has_rest()))
        {
            ready!(write.poll_own(cx))?;
        }
        while output.len() > keep {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = output.chunks_vectored(&mut slices);
            let written = ready!(self.io.poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            output.advance(written);
        }
        if keep == 0
            && let Io::Tcp { write, held, .. } = &mut self.io
        {
            write.release(self.conn.close_state() != CloseState::Open);
            *held = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads once from the transport and parses what came. After a large message (at least
    /// [`DIRECT_READ_MIN`] bytes), between messages, the read goes into a new buffer sized for
    /// it, which the core keeps as the next message's (`poll_read_owned`). Inside a data frame
    /// with at least `DIRECT_READ_MIN` bytes to come, it goes straight into the message's buffer
    /// (`Connection::receive_direct`), at most to the frame's end. Otherwise it goes into the
    /// thread's scratch buffer; after a large message only up to the next header. Small messages
    /// only ever take that last path. Bytes read past the message returned are kept (`pending`)
    /// only when they complete a frame; the start of one goes into the core at once.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Read>> {
        let read_size = self.timers.options.read_buffer_size;
        // Small messages, the usual case, cost one test of the flag here and a few below.
        let len = if self.large_message > 0 {
            // Reads of large messages are not said to drain the transport (`drained`).
            self.input = Input::Open;
            if self.conn.between_messages() {
                return self.poll_read_owned(cx);
            }
            let remaining = self.conn.payload_remaining();
            if remaining >= DIRECT_READ_MIN
                && let Some(read) = self.poll_read_direct(cx)
            {
                return read;
            }
            (remaining + MAX_HEADER).min(read_size)
        } else {
            read_size
        };
        let WebSocket {
            io,
            conn,
            pending,
            failure,
            failure_unreported,
            input: read_side,
            ..
        } = self;
        with_scratch(len, |scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(io.poll_read(cx, &mut buf))?;
            let mut input = buf.filled();
            if input.is_empty() {
                return Poll::Ready(Ok(Read::Eof));
            }
            *read_side = if input.len() < len {
                Input::Drained
            } else {
                Input::Open
            };
            let parsed = conn.receive(&mut input);
            if !input.is_empty() && matches!(parsed, Ok(Some(_))) {
                if conn.completes_frame(input) {
                    *pending = Some(Bytes::copy_from_slice(input));
                } else if let Err(error) = conn.receive(&mut input) {
                    // Given after the message, by the next `recv`.
                    *failure = Some(error);
                    *failure_unreported = true;
                }
            }
            Poll::Ready(Ok(Read::Parsed(parsed)))
        })
    }

    /// The read of [`poll_read`](Self::poll_read) between large messages: into a new buffer
    /// sized for the last one (at most `read_buffer_size`) plus a header, handed to the core,
    /// which keeps it as the next message's buffer when a data message starts there.
    #[inline(never)]
    fn poll_read_owned(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Read>> {
        if let Io::Tcp { read, .. } = &self.io {
            // On TCP no buffer is allocated for a read that would block.
            ready!(read.as_ref().poll_read_ready(cx))?;
        }
        let expected = (self.large_message as usize).min(self.timers.options.read_buffer_size);
        let mut buffer = Vec::with_capacity(expected + MAX_HEADER);
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut buffer
        ))?;
        if read == 0 {
            return Poll::Ready(Ok(Read::Eof));
        }
        let (parsed, rest) = self.conn.receive_owned(buffer);
        if !rest.is_empty() {
            self.pending = Some(rest);
        }
        Poll::Ready(Ok(Read::Parsed(parsed)))
    }

    /// The read of [`poll_read`](Self::poll_read) straight into the message's buffer; `None`
    /// when the core has no data frame to read into. Kept out of line: small messages, the
    /// usual case, never come here.
    #[inline(never)]
    fn poll_read_direct(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Read>>> {
        let WebSocket {
            io, conn, timers, ..
        } = self;
        let (read, parsed) = conn.receive_direct(timers.options.read_buffer_size, |buf| {
            tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut &mut *buf)
        })?;
        Some(match read {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(Read::Eof)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(Read::Parsed(parsed))),
        })
    }

    /// Parses the bytes read past the last message, if any.
    fn parse_pending(&mut self) -> Option<Result<Option<Message>, ProtocolError>> {
        let pending = self.pending.as_mut()?;
        let mut input = &pending[..];
        let parsed = self.conn.receive(&mut input);
        let consumed = pending.len() - input.len();
        if input.is_empty() || parsed.is_err() {
            self.pending = None;
        } else {
            pending.advance(consumed);
        }
        Some(parsed)
    }

    /// The next message, or with `control_only` the next control frame (a data message is
    /// then held for later and reading stops).
    fn poll_incoming(
        &mut self,
        cx: &mut Context<'_>,
        control_only: bool,
    ) -> Poll<Option<Result<Message, WsError>>> {
        if !control_only && let Some(message) = self.held.take() {
            return Poll::Ready(Some(Ok(message)));
        }
        let mut reads = 0;
        loop {
            if self.input == Input::Ended {
                return Poll::Ready(None);
            }
            // Pongs, the echo of a close and the rest of a direct writer's frame go out without
            // waiting for the caller's flush.
            // Data the caller fed waits for its flush (or goes out with such an answer), so
            // that the replies to a burst of messages leave in one write; past the write
            // buffer size it is written too (the check below relies on that).
            if self.answer_queued
                || self.conn.close_state() == CloseState::Closed
                || self.conn.output().len() > self.timers.options.write_buffer_size
                || self.io.has_rest()
            {
                match self.poll_write_output(cx) {
                    Poll::Ready(Ok(())) => self.answer_queued = false,
                    Poll::Ready(Err(error)) => return self.end_with(Some(Err(WsError::Io(error)))),
                    Poll::Pending => {}
                }
            }
            if self.conn.close_state() == CloseState::Closed && self.conn.output().is_empty() {
                // The closing handshake is complete; the server closes the TCP connection
                // first (RFC 6455 §7.1.1). A peer that already went cannot fail this.
                let _ = ready!(self.io.poll_shutdown(cx));
                return self.end_with(None);
            }
            let suspended = control_only && self.held.is_some();
            if self.conn.output().len() > self.timers.options.write_buffer_size {
                // The peer sends faster than it reads (a ping flood: every ping queues a pong):
                // past the write buffer size, read and parse nothing more until the output
                // drains, so it stays bounded. The write above could not finish, so the task is
                // registered for write readiness; the deadlines still run.
                return match self.poll_timers(cx, suspended) {
                    Poll::Ready(end) => Poll::Ready(end),
                    Poll::Pending => Poll::Pending,
                };
            }
            if suspended {
                // A data message is held for the caller: nothing more is parsed (not even bytes
                // already read), or a second one would have nowhere to go.
                return match self.poll_timers(cx, suspended) {
                    Poll::Ready(end) => Poll::Ready(end),
                    Poll::Pending => Poll::Pending,
                };
            }
            if self.failure_unreported {
                self.failure_unreported = false;
                if let Some(error) = &self.failure {
                    return Poll::Ready(Some(Err(WsError::from_protocol(error))));
                }
            }
            let parsed = match self.parse_pending() {
                Some(parsed) => parsed,
                None => {
                    if let Poll::Ready(end) = self.poll_timers(cx, false) {
                        return Poll::Ready(end);
                    }
                    if reads == READS_PER_POLL {
                        // A large message arriving fast must not hold the worker thread:
                        // other connections get a turn between its slices.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    reads += 1;
                    match ready!(self.poll_read(cx)) {
                        Ok(Read::Parsed(parsed)) => {
                            let received = self.conn.message_received();
                            self.timers.heard(Instant::now(), received);
                            // Large payloads are flowing when the message read is large or
                            // the core is inside a large frame.
                            self.large_message = match &parsed {
                                Ok(Some(message)) if message.len() >= DIRECT_READ_MIN => {
                                    u32::try_from(message.len()).unwrap_or(u32::MAX)
                                }
                                Ok(Some(_)) => 0,
                                _ if self.conn.payload_remaining() >= DIRECT_READ_MIN => {
                                    self.large_message.max(1)
                                }
                                _ => 0,
                            };
                            parsed
                        }
                        Ok(Read::Eof) => return self.end_with(None),
                        Err(error) => return self.end_with(Some(Err(WsError::Io(error)))),
                    }
                }
            };
            if let Ok(Some(Message::Ping(_) | Message::Close(_))) = &parsed {
                // The core answered it (pong, close echo) in its output.
                self.answer_queued = true;
            }
            match parsed {
                Ok(None) => {}
                Ok(Some(message)) if control_only && message.is_data() => {
                    self.held = Some(message);
                }
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Err(error) => {
                    let reported = WsError::from_protocol(&error);
                    self.failure = Some(error);
                    return Poll::Ready(Some(Err(reported)));
                }
            }
        }
    }

    fn end_with(
        &mut self,
        last: Option<Result<Message, WsError>>,
    ) -> Poll<Option<Result<Message, WsError>>> {
        self.input = Input::Ended;
        Poll::Ready(last)
    }

    /// Drives the deadlines: pings a quiet peer, and ends the stream when one passed. Ready
    /// with the stream's last item, or pending with the timer registered.
    #[inline]
    fn poll_timers(
        &mut self,
        cx: &mut Context<'_>,
        suspended: bool,
    ) -> Poll<Option<Result<Message, WsError>>> {
        if (self.timer_covers_message || !self.conn.message_in_progress())
            && self.timers.armed(cx.waker())
        {
            // The usual case, before every read: the timer is set no later than every deadline
            // and will wake this task.
            return Poll::Pending;
        }
        self.poll_deadlines(cx, suspended)
    }

    /// [`poll_timers`](Self::poll_timers) when the timer is not known to be armed: finds the
    /// earliest deadline, sets the timer to it, and acts on what is due.
    #[inline(never)]
    fn poll_deadlines(
        &mut self,
        cx: &mut Context<'_>,
        suspended: bool,
    ) -> Poll<Option<Result<Message, WsError>>> {
        loop {
            let in_message = self.conn.message_in_progress();
            let Some(deadline) = self.timers.next_deadline(in_message) else {
                self.timers.registered = None;
                return Poll::Pending;
            };
            if deadline < self.timers.armed_for || self.timers.sleep.is_elapsed() {
                self.timers.armed_for = deadline;
                self.timers.sleep.as_mut().reset(deadline);
                self.timers.registered = None;
            }
            self.timer_covers_message = in_message;
            if self.timers.sleep.as_mut().poll(cx).is_pending() {
                self.timers.registered = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.timers.registered = None;
            match self.timers.due(Instant::now(), in_message, suspended) {
                None => {}
                Some(Due::Ping) => {
                    // Refused only once our close is out, and then no ping is due.
                    let _ = self.conn.send(Message::Ping(Bytes::new()));
                    if let Poll::Ready(Err(error)) = self.poll_write_output(cx) {
                        return self.end_with(Some(Err(WsError::Io(error))));
                    }
                }
                Some(Due::PingTimeout) => return self.end_with(Some(Err(WsError::PingTimeout))),
                Some(Due::MessageTimeout) => {
                    return Poll::Ready(Some(Err(WsError::MessageTimeout)));
                }
                Some(Due::CloseTimeout) => {
                    tracing::debug!("peer did not answer our close frame in time");
                    return self.end_with(None);
                }
            }
        }
    }
}

impl Stream for WebSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_incoming(cx, false)
    }
}

impl Sink<Message> for WebSocket {
    type Error = WsError;

    /// Ready while the write buffer holds less than `write_buffer_size`; past it, writes first.
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let keep = self.timers.options.write_buffer_size;
        self.poll_write_until(cx, keep.saturating_sub(1))
            .map_err(WsError::Io)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        self.claim_writes();
        let closing = matches!(message, Message::Close(_));
        self.conn.send(message).map_err(send_error)?;
        if closing {
            self.timers.close_sent = Some(Instant::now());
            // Its deadline may be earlier than the one the timer is set to.
            self.timers.registered = None;
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.poll_write_output(cx))?;
        self.io.poll_flush(cx).map_err(WsError::Io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        self.io.poll_shutdown(cx).map_err(WsError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds the size of `WebSocket`: it is held for the life of every connection, so growing
    /// it grows the memory of every idle connection (`cargo xtask bench`, [S5](bench/README.md#scenarios)). To measure it,
    /// set `BOUND` to 0 and run `cargo test -p ws-upgrader --lib websocket_size`: the failure
    /// gives the size (592 bytes, 536 once the options were shared rather than copied, 552
    /// with the timer's waker kept; rustc 1.95, x86_64). A change that passes the bound should
    /// say why in its commit, and move the bound.
    #[test]
    fn websocket_size_stays_small() {
        const BOUND: usize = 552;
        let size = std::mem::size_of::<WebSocket>();
        assert!(
            size <= BOUND,
            "WebSocket is {size} bytes, over its bound of {BOUND}"
        );
    }
}
