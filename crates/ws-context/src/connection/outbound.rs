//! The write path: [`WriteSide`] holds the socket, the connection's handle (whose queue
//! other tasks write to), whether frames are fed but not flushed, and the traffic sent. Its
//! methods take `&mut WriteSide` only, so writing cannot touch the handler's state or the
//! closing state; they tell the task what happened (a close frame met in the queue,
//! [`WriteFailed`]) and the task makes the transition.
//!
//! Every socket operation is tried first with a waker that does nothing ([`no_wake`]): the
//! socket almost always has room, and the futures of every caller stay small (they are in the
//! state of each connection's task, [S5](bench/README.md#scenarios)). Only a full socket is waited for, boxed and bounded
//! by the send timeout ([`bounded_write`]).

use std::{future::Future, pin::Pin, task::Poll, time::Duration};

use futures_util::Sink as _;
use ws_message::{CloseFrame, Message};
use ws_upgrader::{PreparedMessage, WebSocket, WsError};

use super::{MAX_BATCH, Traffic, poll_now};
use crate::{Connection, SocketWriter, writer::Outbound};

/// Time allowed to tell a peer that broke the protocol why it is being dropped.
const FAIL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The write side of a connection's task.
pub(super) struct WriteSide {
    /// Read too, by the read path: the socket answers pings itself and holds at most one
    /// data message read ahead.
    pub(super) socket: WebSocket,
    /// The connection's shared handle: its span, and the queue and urgent close of its writer.
    pub(super) conn: Connection,
    /// Frames are fed but not flushed yet: they go out in one write at the end of the turn.
    unflushed: bool,
    /// Traffic written and not yet added to the shared counters.
    sent: Traffic,
}

/// Why a write to the socket did not complete.
pub(super) enum WriteFailed {
    /// The transport failed: nothing more can be written.
    Broken,
    /// An urgent close arrived, or the peer took nothing for the send timeout (and was
    /// then closed as slow): go on with the urgent close.
    Urgent,
}

/// Writers see the connection closed as soon as its task is gone, however it ended.
impl Drop for WriteSide {
    fn drop(&mut self) {
        self.writer().queue().close();
    }
}

impl WriteSide {
    pub(super) fn new(socket: WebSocket, conn: Connection) -> Self {
        WriteSide {
            socket,
            conn,
            unflushed: false,
            sent: Traffic::default(),
        }
    }

    fn writer(&self) -> &SocketWriter {
        &self.conn.0.writer
    }

    pub(super) fn unflushed(&self) -> bool {
        self.unflushed
    }

    pub(super) fn sent(&mut self) -> &mut Traffic {
        &mut self.sent
    }

    /// The next queued command, if one is there now.
    pub(super) fn next_command(&self) -> Option<Outbound> {
        self.writer().queue().try_pop()
    }

    /// Writes what a call returned, after everything it queued while running. Returns a close
    /// frame when the connection must close: `close` (the call panicked) or one met in the
    /// queue, which then stops the writing, reply included.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    pub(super) fn finish(
        &mut self,
        reply: Option<Message>,
        mut close: Option<CloseFrame>,
    ) -> impl Future<Output = Result<Option<CloseFrame>, WriteFailed>> + '_ {
        async move {
            while let Some(command) = self.next_command() {
                match command {
                    Outbound::Message(message) => self.feed(Frame::Plain(message)).await?,
                    Outbound::Prepared(prepared) => self.feed(Frame::Prepared(prepared)).await?,
                    Outbound::Close(frame) => {
                        close = Some(frame);
                        break;
                    }
                }
            }
            if let Some(message) = reply {
                self.feed(Frame::Plain(message)).await?;
            }
            if close.is_some() {
                self.flush().await?;
            }
            Ok(close)
        }
    }

    /// Writes a queued command and whatever else is ready, up to `MAX_BATCH`, without flushing
    /// (the task flushes once nothing else is ready). Returns a close frame if one was among
    /// them, after flushing what came before it.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    pub(super) fn write_batch(
        &mut self,
        first: Outbound,
    ) -> impl Future<Output = Result<Option<CloseFrame>, WriteFailed>> + '_ {
        async move {
            let mut command = first;
            let mut written = 0;
            loop {
                match command {
                    Outbound::Message(message) => self.feed(Frame::Plain(message)).await?,
                    Outbound::Prepared(prepared) => self.feed(Frame::Prepared(prepared)).await?,
                    Outbound::Close(frame) => return self.flush().await.map(|()| Some(frame)),
                }
                written += 1;
                if written == MAX_BATCH {
                    break;
                }
                match self.next_command() {
                    Some(more) => command = more,
                    None => break,
                }
            }
            Ok(None)
        }
    }

    /// Queues a frame on the socket. The socket almost always has room: that is tried first
    /// without a future, so the futures of every caller stay small (this one is in the state of
    /// each connection's task, [S5](bench/README.md#scenarios)); only a full socket is waited for, boxed and bounded.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its state"
    )]
    fn feed(&mut self, frame: Frame) -> impl Future<Output = Result<(), WriteFailed>> + '_ {
        async move {
            let message = frame.message();
            let data = message.is_data().then(|| super::payload_len(message));
            let ready = Pin::new(&mut self.socket).poll_ready(&mut no_wake());
            let waited = match ready {
                Poll::Ready(Ok(())) => Waited::Done(match frame {
                    Frame::Plain(message) => Pin::new(&mut self.socket).start_send(message),
                    Frame::Prepared(prepared) => self.socket.start_send_prepared(&prepared),
                }),
                Poll::Ready(Err(error)) => Waited::Done(Err(error)),
                Poll::Pending => {
                    let writer = &self.conn.0.writer;
                    let socket = &mut self.socket;
                    let write = async move {
                        match frame {
                            Frame::Plain(message) => socket.feed(message).await,
                            Frame::Prepared(prepared) => socket.feed_prepared(&prepared).await,
                        }
                    };
                    Box::pin(bounded_write(write, writer)).await
                }
            };
            self.settle(waited, "write failed")?;
            self.unflushed = true;
            if let Some(bytes) = data {
                self.sent.messages += 1;
                self.sent.bytes += bytes;
            }
            Ok(())
        }
    }

    /// Writes what is queued on the socket; tried at once first, as in [`feed`](Self::feed).
    pub(super) async fn flush(&mut self) -> Result<(), WriteFailed> {
        self.unflushed = false;
        let flushed = Pin::new(&mut self.socket).poll_flush(&mut no_wake());
        let waited = match flushed {
            Poll::Ready(result) => Waited::Done(result),
            Poll::Pending => {
                let writer = &self.conn.0.writer;
                let write = self.socket.flush();
                Box::pin(bounded_write(write, writer)).await
            }
        };
        self.settle(waited, "flush failed")
    }

    fn settle(&self, waited: Waited, failure: &str) -> Result<(), WriteFailed> {
        match waited {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(error)) => {
                tracing::debug!(parent: self.conn.span(), %error, "{failure}");
                Err(WriteFailed::Broken)
            }
            Waited::Stalled => {
                // The peer took nothing for the send timeout: it is closed as slow.
                self.writer().close_slow();
                Err(WriteFailed::Urgent)
            }
            Waited::Urgent => Err(WriteFailed::Urgent),
        }
    }

    /// Writes our close frame, giving the peer `grace` to take it. False if it could not be
    /// written.
    pub(super) async fn write_close(&mut self, frame: CloseFrame, grace: Duration) -> bool {
        let write = async {
            self.socket.feed(Message::Close(Some(frame))).await?;
            self.socket.flush().await
        };
        // Boxed, as every rare wait with a timer: a timer is large, and inline it would grow
        // every connection's task ([S5](bench/README.md#scenarios)) and every move of its futures.
        match Box::pin(tokio::time::timeout(grace, write)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(parent: self.conn.span(), %error, "close frame not written");
                false
            }
            Err(_) => {
                tracing::debug!(parent: self.conn.span(), "peer did not take the close frame in time; dropping it");
                false
            }
        }
    }

    /// After a read error: tells the peer why with the matching close frame, if it takes it
    /// within a second, and shuts the transport down.
    pub(super) async fn fail(&mut self, error: &WsError) {
        // Boxed, as every rare wait with a timer.
        let _ = Box::pin(tokio::time::timeout(
            FAIL_WRITE_TIMEOUT,
            self.socket.fail(error),
        ))
        .await;
    }
}

/// A data or control frame to feed: a message of this connection's own, or one prepared for
/// many connections (encoded once per set of parameters, see `PreparedMessage`).
enum Frame {
    Plain(Message),
    Prepared(PreparedMessage),
}

impl Frame {
    fn message(&self) -> &Message {
        match self {
            Frame::Plain(message) => message,
            Frame::Prepared(prepared) => prepared.message(),
        }
    }
}

/// How a bounded socket write ended.
enum Waited {
    Done(Result<(), WsError>),
    /// The send timeout passed with the write still waiting for the peer.
    Stalled,
    /// An urgent close arrived while waiting.
    Urgent,
}

/// Runs a socket write, bounded by the writer's send timeout and cut short by an urgent
/// close. The write is polled once first, so one that the socket takes at once (the usual
/// case) arms no timer, and the wait with a timer is boxed, so it costs no room in the futures
/// that write.
async fn bounded_write(
    write: impl Future<Output = Result<(), WsError>>,
    writer: &SocketWriter,
) -> Waited {
    let mut write = std::pin::pin!(write);
    if let Some(result) = poll_now(&mut write).await {
        return Waited::Done(result);
    }
    Box::pin(async move {
        tokio::select! {
            biased;
            result = write => Waited::Done(result),
            () = tokio::time::sleep(writer.send_timeout()) => Waited::Stalled,
            () = writer.urgent_close() => Waited::Urgent,
        }
    })
    .await
}

/// A context whose waker does nothing: for trying a socket operation that, when it is not
/// ready, is then awaited with the task's own waker, which replaces this one.
fn no_wake() -> std::task::Context<'static> {
    std::task::Context::from_waker(futures_util::task::noop_waker_ref())
}
