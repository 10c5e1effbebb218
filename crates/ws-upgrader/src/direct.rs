//! Writes from other tasks straight into a connection's socket ([`DirectWriter`]).
//!
//! A message sent to many connections is otherwise queued on each and written by each
//! connection's task, which must be woken and polled for it: some 3,200 instructions per
//! receiver, most of a broadcast's user-space cost once its frame is shared (S8 in
//! bench/README.md). When a connection's task has nothing to write, the sending task can write
//! the frame itself, with one non-blocking system call.
//!
//! The socket's writes are then shared between the connection's task and any number of direct
//! writers. One atomic state, the gate, says whose they are; each transition is one atomic
//! operation, and only the rare ones (a writer and the task at the same instant, a frame the
//! socket took in part) take a lock:
//!
//! | gate           | whose the writes are                                   | leaves it                                                       |
//! |----------------|--------------------------------------------------------|-----------------------------------------------------------------|
//! | `FREE`         | nobody's: the task has nothing to write                | the task takes it (`TASK`) to queue a frame or take one from its own queue; a writer takes it (`DIRECT`) |
//! | `TASK`         | the task's, until its output is written out            | written out: `FREE`, or `CLOSED` once its close frame is out     |
//! | `DIRECT`       | one writer's, for one non-blocking write               | the frame written whole: `FREE`; in part: `REST`; the task asked meanwhile: `TASK_WAITING` |
//! | `TASK_WAITING` | the writer's, and the task waits for them              | the writer is done: `TASK` (the task is woken) or `REST`          |
//! | `REST`         | the task's: it writes the rest of the writer's frame before anything else | the rest written: `TASK`                    |
//! | `CLOSED`       | the task's for good: our close frame is out             | never                                                           |
//!
//! The order a sender sees is kept: a writer writes only while the gate is `FREE`, that is
//! while nothing the task took to write is unwritten, and the task takes the gate before it
//! takes a frame from a queue of its own
//! ([`WebSocket::claim_writes`](crate::WebSocket::claim_writes)), so that a frame queued before
//! a direct write cannot go out after it.

use std::{
    io::{self, IoSlice},
    net::Shutdown,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Waker, ready},
};

use bytes::{Buf as _, Bytes};
use tokio::net::{TcpStream, tcp::OwnedWriteHalf};
use ws_protocol::{PreparedMessage, SharedFraming};

const FREE: u8 = 0;
const TASK: u8 = 1;
const DIRECT: u8 = 2;
const TASK_WAITING: u8 = 3;
const REST: u8 = 4;
const CLOSED: u8 = 5;

/// The write half of a connection's TCP stream, shared by its task and its [`DirectWriter`]s,
/// and the gate. One allocation per connection: what is rare (a frame's rest, a waiting task)
/// is boxed.
pub(crate) struct Transport {
    /// Shut down when the last strong reference, the socket's, goes.
    write: OwnedWriteHalf,
    gate: AtomicU8,
    rare: Mutex<Option<Box<Rare>>>,
}

/// What the gate's rare states keep.
#[derive(Default)]
struct Rare {
    /// `REST`: what the socket did not take of a writer's frame.
    rest: Option<Bytes>,
    /// `TASK_WAITING`: the task, to wake when the writer is done.
    waiting: Option<Waker>,
}

/// What the task found when it asked for the socket's writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Claim {
    /// They are the task's.
    Owned,
    /// They are the task's, once it has written the rest of a writer's frame.
    Rest,
    /// A writer is writing: the task must wait for it.
    Later,
}

impl Transport {
    pub(crate) fn new(write: OwnedWriteHalf) -> Arc<Self> {
        Arc::new(Transport {
            write,
            gate: AtomicU8::new(FREE),
            rare: Mutex::new(None),
        })
    }

    fn stream(&self) -> &TcpStream {
        self.write.as_ref()
    }

    fn rare(&self) -> MutexGuard<'_, Option<Box<Rare>>> {
        self.rare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn poll_write(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Written first, readiness asked only when it would block: the socket nearly always
        // has room, and `try_write` checks the readiness it knows of anyway.
        loop {
            let written = match bufs {
                [one] => self.write.try_write(one),
                _ => self.write.try_write_vectored(bufs),
            };
            match written {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream().poll_write_ready(cx))?;
                }
                done => return Poll::Ready(done),
            }
        }
    }

    pub(crate) fn shutdown(&self) -> io::Result<()> {
        socket2::SockRef::from(self.stream()).shutdown(Shutdown::Write)
    }

    /// For the task: takes the socket's writes, or finds them its own already (one load,
    /// inlined: the task asks before every frame it queues).
    #[inline]
    pub(crate) fn claim(&self) -> Claim {
        match self.gate.load(Ordering::Acquire) {
            TASK | CLOSED => Claim::Owned,
            state => self.claim_from(state),
        }
    }

    fn claim_from(&self, mut state: u8) -> Claim {
        loop {
            let (next, claim) = match state {
                TASK | CLOSED => return Claim::Owned,
                REST => return Claim::Rest,
                TASK_WAITING => return Claim::Later,
                FREE => (TASK, Claim::Owned),
                _ => (TASK_WAITING, Claim::Later),
            };
            match self
                .gate
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return claim,
                Err(now) => state = now,
            }
        }
    }

    /// For the task, before it writes: ready once the writes are its own, the rest of a
    /// writer's frame written first; pending, with the task to be woken, while a writer writes.
    #[inline]
    pub(crate) fn poll_own(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.gate.load(Ordering::Acquire), TASK | CLOSED) {
            return Poll::Ready(Ok(()));
        }
        self.poll_take(cx)
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_claim(cx));
        if self.has_rest() {
            return self.poll_write_rest(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// For the task: ready once the writes are its (the rest of a writer's frame, if any,
    /// still to write); pending, with the task to be woken, while a writer writes.
    fn poll_claim(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.claim() != Claim::Later {
            return Poll::Ready(());
        }
        self.rare().get_or_insert_with(Box::default).waiting = Some(cx.waker().clone());
        // Asked again with the waker in place: a writer that finished in between found no
        // waker, but left the gate changed.
        if self.claim() == Claim::Later {
            return Poll::Pending;
        }
        let mut rare = self.rare();
        if rare.as_ref().is_some_and(|kept| kept.rest.is_none()) {
            *rare = None;
        }
        Poll::Ready(())
    }

    /// Whether a writer's frame waits for the task to write its rest.
    #[inline]
    pub(crate) fn has_rest(&self) -> bool {
        self.gate.load(Ordering::Acquire) == REST
    }

    fn poll_write_rest(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut rare = self.rare();
        if let Some(kept) = rare.as_mut() {
            while let Some(rest) = kept.rest.as_mut() {
                let written = ready!(self.poll_write(cx, &[IoSlice::new(rest)]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                rest.advance(written);
                if rest.is_empty() {
                    kept.rest = None;
                }
            }
            if kept.waiting.is_none() {
                *rare = None;
            }
        }
        self.gate.store(TASK, Ordering::Release);
        Poll::Ready(Ok(()))
    }

    /// For the task, its output written out: the writes are free again, or, once our close
    /// frame is out, the task's for good.
    #[inline]
    pub(crate) fn release(&self, closed: bool) {
        let next = if closed { CLOSED } else { FREE };
        // Only the task leaves `TASK`; in any other state the writes are not its to give.
        let _ = self
            .gate
            .compare_exchange(TASK, next, Ordering::Release, Ordering::Relaxed);
    }

    /// For a writer, done without leaving anything: the writes go back, or to the task if it
    /// waits for them.
    fn end_direct(&self) {
        if self
            .gate
            .compare_exchange(DIRECT, FREE, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.gate.store(TASK, Ordering::Release);
            self.wake_waiting();
        }
    }

    /// For a writer whose frame the socket took in part: the task writes the rest.
    fn leave_rest(&self, rest: Bytes) {
        self.rare().get_or_insert_with(Box::default).rest = Some(rest);
        if self.gate.swap(REST, Ordering::AcqRel) == TASK_WAITING {
            self.wake_waiting();
        }
    }

    fn wake_waiting(&self) {
        let waiting = self.rare().as_mut().and_then(|rare| rare.waiting.take());
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// Writes prepared messages straight into one connection's socket from other tasks, while the
/// connection's own task has nothing to write: one non-blocking system call, and the
/// connection's task is not woken. Made by [`WebSocket::direct_writer`]; cheap to clone, and it
/// does not keep the connection open (the socket closes when its [`WebSocket`] is dropped).
///
/// This is what a broadcast is made of: the frame is encoded (and compressed) once per set of
/// parameters ([`PreparedMessage`]) and written to each connection that is free; the others
/// get it the usual way, through their task.
///
/// ```no_run
/// use std::sync::Arc;
/// use tokio::sync::{Notify, mpsc};
/// use ws_upgrader::{DirectSend, DirectWriter, Message, PreparedMessage, WebSocket};
///
/// // A connection's own task: hands out a writer and a way to wake it, then reads as usual.
/// async fn run(mut socket: WebSocket, writers: mpsc::UnboundedSender<(DirectWriter, Arc<Notify>)>) {
///     let wake = Arc::new(Notify::new());
///     if let Some(writer) = socket.direct_writer() {
///         let _ = writers.send((writer, wake.clone()));
///     }
///     loop {
///         tokio::select! {
///             message = socket.recv() => if message.is_none() { break },
///             // Polled again: the socket writes the rest of a frame a writer left.
///             () = wake.notified() => {}
///         }
///     }
/// }
///
/// // Another task: one encoding, written into every socket that is free.
/// fn announce(connections: &[(DirectWriter, Arc<Notify>)]) -> usize {
///     let news = PreparedMessage::new(Message::text("news"));
///     let mut written = 0;
///     for (writer, wake) in connections {
///         match writer.try_send(&news, || true) {
///             DirectSend::Written => written += 1,
///             DirectSend::Partial => {
///                 wake.notify_one();
///                 written += 1;
///             }
///             // Busy: send it through the connection's task instead (a channel of yours).
///             DirectSend::NotWritten => {}
///         }
///     }
///     written
/// }
/// ```
///
/// [`WebSocket`]: crate::WebSocket
/// [`WebSocket::direct_writer`]: crate::WebSocket::direct_writer
#[derive(Clone)]
pub struct DirectWriter {
    transport: Weak<Transport>,
    framing: SharedFraming,
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectWriter")
            .field("open", &(self.transport.strong_count() > 0))
            .finish_non_exhaustive()
    }
}

/// How a [`DirectWriter::try_send`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum DirectSend {
    /// The whole frame is in the socket.
    Written,
    /// The socket took the start of the frame; the connection's task writes the rest before
    /// anything else, when it is next polled: wake it (the caller knows how its task waits).
    Partial,
    /// Nothing was written: the connection's task has something to write, or is closing, or
    /// `ready` said no, or the socket is full or gone. Send the message through the task.
    NotWritten,
}

impl DirectWriter {
    pub(crate) fn new(transport: &Arc<Transport>, framing: SharedFraming) -> Self {
        DirectWriter {
            transport: Arc::downgrade(transport),
            framing,
        }
    }

    /// Writes `message`'s frame into the socket if its writes are free now. `ready` is asked
    /// once they are held for this write, and may still refuse it: for a caller with a queue
    /// of its own for this connection, which must be empty, or the message would overtake
    /// what is in it. Control messages and closes are never written here.
    pub fn try_send(&self, message: &PreparedMessage, ready: impl FnOnce() -> bool) -> DirectSend {
        let Some(transport) = self.transport.upgrade() else {
            return DirectSend::NotWritten;
        };
        if transport
            .gate
            .compare_exchange(FREE, DIRECT, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return DirectSend::NotWritten;
        }
        let frame = match ready().then(|| message.frame(self.framing)).flatten() {
            Some(Ok(frame)) => frame,
            _ => {
                transport.end_direct();
                return DirectSend::NotWritten;
            }
        };
        match transport.write.try_write(&frame) {
            Ok(written) if written == frame.len() => {
                transport.end_direct();
                DirectSend::Written
            }
            Ok(written) if written > 0 => {
                transport.leave_rest(frame.slice(written..));
                DirectSend::Partial
            }
            // Nothing taken: full (`WouldBlock`) or failed; the task finds out which.
            _ => {
                transport.end_direct();
                DirectSend::NotWritten
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (Arc<Transport>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_read, write) = accepted.unwrap().0.into_split();
        (Transport::new(write), client.unwrap())
    }

    /// The gate's transitions, as the module doc's table gives them.
    #[tokio::test]
    async fn the_gate_serializes_the_task_and_writers() {
        let (transport, _client) = pair().await;
        assert_eq!(transport.claim(), Claim::Owned, "FREE -> TASK");
        assert_eq!(transport.gate.load(Ordering::Relaxed), TASK);
        // A writer cannot take it from the task.
        assert!(
            transport
                .gate
                .compare_exchange(FREE, DIRECT, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        );
        transport.release(false);
        assert_eq!(transport.gate.load(Ordering::Relaxed), FREE);

        // A writer holds it; the task asks and waits; the writer hands it over.
        transport.gate.store(DIRECT, Ordering::Relaxed);
        assert_eq!(transport.claim(), Claim::Later);
        assert_eq!(transport.gate.load(Ordering::Relaxed), TASK_WAITING);
        transport.end_direct();
        assert_eq!(transport.claim(), Claim::Owned, "handed over");
        transport.release(true);
        assert_eq!(transport.gate.load(Ordering::Relaxed), CLOSED);
        assert_eq!(transport.claim(), Claim::Owned, "CLOSED stays the task's");
        transport.release(false);
        assert_eq!(
            transport.gate.load(Ordering::Relaxed),
            CLOSED,
            "and never frees"
        );
    }

    /// A frame the socket took in part: its rest goes out first, then the task owns the writes.
    #[tokio::test]
    async fn the_rest_of_a_frame_goes_before_anything_else() {
        let (transport, mut client) = pair().await;
        transport.gate.store(DIRECT, Ordering::Relaxed);
        transport.leave_rest(Bytes::from_static(b"rest"));
        assert!(transport.has_rest());
        assert_eq!(transport.claim(), Claim::Rest);
        std::future::poll_fn(|cx| transport.poll_own(cx))
            .await
            .unwrap();
        assert_eq!(transport.gate.load(Ordering::Relaxed), TASK);
        assert!(transport.rare().is_none(), "nothing kept once written");
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"rest");
    }
}
