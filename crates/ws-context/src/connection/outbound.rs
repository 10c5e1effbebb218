//! The write path: [`WriteSide`] holds the socket, the connection's handle (whose queue
//! other tasks write to), whether frames are fed but not flushed, and the traffic sent. Its
//! methods take `&mut WriteSide` only, so writing cannot touch the handler's state or the
//! closing state; they tell the task what happened (a close frame met in the queue,
//! [`WriteFailed`]) and the task makes the transition.
//!
//! Frames are fed without waiting ([`WriteSide::feed`]): the socket almost always has room,
//! and when it has not, it takes the frame all the same and the task stops taking work until
//! its flush at the end of the turn has written it. So the task's handling path is synchronous
//! and holds no write in its future (part of each connection's memory, [S5](bench/README.md#scenarios)). Only that
//! flush waits for the peer, boxed and bounded by the send timeout ([`bounded_write`]).

use std::{future::Future, pin::Pin, task::Poll, time::Duration};

use futures_util::Sink as _;
use ws_message::{CloseFrame, Message};
use ws_upgrader::{PreparedMessage, WebSocket, WsError};

use super::{MAX_BATCH, Traffic};
use crate::{
    Connection, SocketWriter,
    writer::{Delivery, Outbound},
};

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
    /// The socket is over its write buffer size (see [`full`](WriteSide::full)).
    full: bool,
    /// What the queued frames fed while the socket was full cost the queue's budget: given
    /// back once they are written, so that a peer that stops reading holds at most the queue's
    /// bound plus the write buffer, not both twice.
    charged: u32,
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
            full: false,
            charged: 0,
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

    /// The next queued command, if one is there now. Taken while the socket is full, it stays
    /// charged to the queue's budget until the flush has written it
    /// ([`charged`](WriteSide::charged)).
    ///
    /// Inlined: the task asks after every handler call, and the queue is nearly always empty
    /// then (one atomic load); taking a command is a call.
    #[inline]
    pub(super) fn next_command(&mut self) -> Option<Outbound> {
        if self.writer().queue().is_empty() {
            return None;
        }
        self.take_command()
    }

    fn take_command(&mut self) -> Option<Outbound> {
        // No direct write may go out between the taking of a command and its writing.
        self.socket.claim_writes();
        let queue = self.conn.0.writer.queue();
        if !self.full {
            return queue.try_pop();
        }
        let (command, cost) = queue.try_pop_charged()?;
        self.charged = self.charged.saturating_add(cost);
        Some(command)
    }

    /// For the task's wait: an urgent close or the next queued command (see
    /// [`SocketWriter::poll_delivery`]).
    #[inline]
    pub(super) fn poll_delivery(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Delivery> {
        let socket = &mut self.socket;
        self.conn
            .0
            .writer
            .poll_delivery(cx, || socket.claim_writes())
    }

    /// Whether the socket is over its write buffer size: the task takes no more work this
    /// turn (no further reads of the burst, no further queued frames), and its flush at the end
    /// of the turn waits for the peer, bounded by the send timeout.
    pub(super) fn full(&self) -> bool {
        self.full
    }

    /// Writes what a call returned, after everything it queued while running. Returns a close
    /// frame when the connection must close: `close` (the call panicked) or one met in the
    /// queue, which then stops the writing, reply included.
    ///
    /// Everything the call queued is fed even past the write buffer size, so that the reply
    /// keeps its place after it; what is fed past it stays charged to the queue's budget
    /// until the turn's flush has written it.
    pub(super) fn finish(
        &mut self,
        reply: Option<Message>,
        mut close: Option<CloseFrame>,
    ) -> Result<Option<CloseFrame>, WriteFailed> {
        while let Some(command) = self.next_command() {
            if let Some(frame) = self.feed_command(command)? {
                close = Some(frame);
                break;
            }
        }
        if let Some(message) = reply {
            self.feed(Frame::Plain(message))?;
        }
        Ok(close)
    }

    /// Writes a queued command and whatever else is ready, up to `MAX_BATCH` or until the
    /// socket is [`full`](Self::full), without flushing (the task flushes at the end of the
    /// turn). Returns a close frame if one was among them: it stops the batch.
    pub(super) fn write_batch(
        &mut self,
        first: Outbound,
    ) -> Result<Option<CloseFrame>, WriteFailed> {
        let mut command = first;
        let mut written = 0;
        loop {
            if let Some(frame) = self.feed_command(command)? {
                return Ok(Some(frame));
            }
            written += 1;
            if written == MAX_BATCH || self.full {
                return Ok(None);
            }
            match self.next_command() {
                Some(more) => command = more,
                None => return Ok(None),
            }
        }
    }

    /// Feeds a queued command; a close is not fed but returned.
    fn feed_command(&mut self, command: Outbound) -> Result<Option<CloseFrame>, WriteFailed> {
        match command {
            Outbound::Message(message) => self.feed(Frame::Plain(message))?,
            Outbound::Prepared(prepared) => self.feed(Frame::Prepared(prepared))?,
            Outbound::Close(frame) => return Ok(Some(frame)),
        }
        Ok(None)
    }

    /// Queues a frame on the socket, without waiting. The socket almost always has room; when
    /// it has not (the peer reads slower than we write), the frame is queued all the same and
    /// [`full`](Self::full) tells the task to stop taking work and wait in its flush. Nothing
    /// here awaits, so no future of the task's handling path holds a write in its state
    /// ([S5](bench/README.md#scenarios)).
    fn feed(&mut self, frame: Frame) -> Result<(), WriteFailed> {
        let message = frame.message();
        let data = message.is_data().then(|| super::payload_len(message));
        // Writes what is over the buffer size, if the transport takes it now.
        match Pin::new(&mut self.socket).poll_ready(&mut no_wake()) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                return self.settle(Waited::Done(Err(error)), "write failed");
            }
            Poll::Pending => self.full = true,
        }
        let queued = match frame {
            Frame::Plain(message) => Pin::new(&mut self.socket).start_send(message),
            Frame::Prepared(prepared) => self.socket.start_send_prepared(&prepared),
        };
        self.settle(Waited::Done(queued), "write failed")?;
        self.unflushed = true;
        if let Some(bytes) = data {
            self.sent.messages += 1;
            self.sent.bytes += bytes;
        }
        Ok(())
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
        self.full = false;
        let charged = std::mem::take(&mut self.charged);
        self.writer().queue().release(charged);
        self.settle(waited, "flush failed")
    }

    /// Inlined: a write that is done is every message's case; only a failure is a call.
    #[inline]
    fn settle(&self, waited: Waited, failure: &str) -> Result<(), WriteFailed> {
        if let Waited::Done(Ok(())) = waited {
            return Ok(());
        }
        self.failed(waited, failure)
    }

    fn failed(&self, waited: Waited, failure: &str) -> Result<(), WriteFailed> {
        match waited {
            Waited::Done(done) => done.map_err(|error| {
                tracing::debug!(parent: self.conn.span(), %error, "{failure}");
                WriteFailed::Broken
            }),
            Waited::Stalled => {
                // The peer took nothing for the send timeout: it is closed as slow.
                self.writer().close_slow();
                Err(WriteFailed::Urgent)
            }
            Waited::Urgent => Err(WriteFailed::Urgent),
        }
    }

    /// Writes our close frame, giving the peer `grace` to take it. False if it could not be
    /// written. Boxed whole, as every rare wait with a timer: a timer is large, and inline it
    /// would grow every connection's task ([S5](bench/README.md#scenarios)) and every move of
    /// its futures.
    pub(super) fn write_close(
        &mut self,
        frame: CloseFrame,
        grace: Duration,
    ) -> Pin<Box<impl Future<Output = bool> + '_>> {
        Box::pin(async move {
            let write = async {
                self.socket.feed(Message::Close(Some(frame))).await?;
                self.socket.flush().await
            };
            match tokio::time::timeout(grace, write).await {
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
        })
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

/// Polls a future once in the task's own context; its output if it was ready.
async fn poll_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
