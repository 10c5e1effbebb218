//! [`SocketWriter`]: the one writer of a connection, shared by every task that writes to it:
//! a bounded queue of [`Outbound`] commands (`queue.rs`) drained by the connection's task,
//! and the urgent close that skips it.

use std::{
    fmt,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use serde::Serialize;
use ws_message::{Bytes, CloseFrame, Encode, EncodeError, Message, Utf8Bytes, close_code, encode};
use ws_upgrader::{DirectSend, DirectWriter, PreparedMessage};

use crate::{
    hub::ConnectionId,
    metrics::ConnMetrics,
    queue::{OutboundQueue, Refused},
};

/// The close code for a peer that stopped reading: its queue stayed full for the send timeout,
/// or a write to its socket made no progress for that long (1008, policy violation).
pub const SLOW_PEER_CLOSE_CODE: u16 = close_code::POLICY;
const SLOW_PEER_REASON: &str = "slow consumer: outbound queue full";

/// What the connection task gets from its writers, most urgent first.
pub(crate) enum Delivery {
    /// An urgent close is set: take it with [`UrgentClose::take`].
    Urgent,
    Command(Outbound),
    /// The queue is closed (the task closed it itself).
    Closed,
}

/// What other tasks ask a connection's I/O task to do.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    Message(Message),
    /// A message sent to many connections (a broadcast, a room), encoded once for all of
    /// them per set of parameters.
    Prepared(PreparedMessage),
    Close(CloseFrame),
}

impl Outbound {
    /// A message to queue, with a payload of its own when it is small
    /// ([`Message::detach`]): it may wait in the queue for the send timeout, and a
    /// payload read from a peer may be a slice of a 4 KiB block, which the queue's byte bound
    /// would not count.
    fn message(message: Message) -> Self {
        Outbound::Message(message.detach())
    }

    /// What it weighs in the queue's byte bound: a message's payload (a close costs the
    /// least an item costs).
    fn bytes(&self) -> usize {
        match self {
            Outbound::Message(message) => message.len(),
            Outbound::Prepared(prepared) => prepared.message().len(),
            Outbound::Close(_) => 0,
        }
    }
}

/// Why a write to a socket failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The value could not be encoded (its `Serialize` impl failed).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The connection is closed; nothing more can be written to it.
    #[error("connection {0} is closed")]
    Closed(ConnectionId),
    /// The connection's outbound queue stayed full for the whole send timeout: the peer reads
    /// slower than it is written to.
    #[error("connection {0}: outbound queue full (peer is not reading fast enough)")]
    Full(ConnectionId),
}

/// The one writer of a socket, shared by every task that writes to it.
///
/// Cloning gives another handle to the same queue; the connection's I/O task writes queued
/// messages in order and coalesces whatever is ready into one system call. Messages from one
/// handle keep their order; messages from different handles never interleave inside a frame.
///
/// The queue is bounded, in messages and in bytes ([`Endpoint::queue_capacity`](crate::Endpoint::queue_capacity),
/// [`Endpoint::queue_bytes`](crate::Endpoint::queue_bytes)). A write that finds it full waits up to the send timeout, then fails
/// with [`WriteError::Full`], and the peer, which stayed full that long, is closed with
/// [`SLOW_PEER_CLOSE_CODE`] (1008): a slow reader can never grow server memory without bound.
///
/// ```no_run
/// # async fn demo(ctx: ws_context::Context) -> Result<(), ws_context::WriteError> {
/// let socket = ctx.socket();
/// tokio::spawn(async move {
///     let _ = socket.write("from another task").await;
/// });
/// ctx.write_message_to_socket("from the handler").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SocketWriter {
    id: ConnectionId,
    send_timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    queue: OutboundQueue<Outbound>,
    urgent: UrgentClose,
    metrics: Arc<ConnMetrics>,
    /// Writes prepared messages straight into the socket while the task has nothing to
    /// write; set once the connection is upgraded, if its socket allows it.
    direct: OnceLock<DirectWriter>,
}

/// A close that skips the queue: for a peer whose queue is full, or that is too slow. Set at
/// most once, taken at most once by the connection task, which checks it on every turn of its
/// loop: an atomic state, so the check takes no lock. Setting it wakes the task through the
/// queue's waker (see [`SocketWriter::poll_delivery`]).
pub(crate) struct UrgentClose {
    state: AtomicU8,
    frame: Mutex<Option<CloseFrame>>,
}

const URGENT_NONE: u8 = 0;
const URGENT_SET: u8 = 1;
const URGENT_TAKEN: u8 = 2;

impl UrgentClose {
    fn new() -> Self {
        UrgentClose {
            state: AtomicU8::new(URGENT_NONE),
            frame: Mutex::new(None),
        }
    }

    /// True if this call set the close (no earlier one had).
    fn set(&self, frame: CloseFrame) -> bool {
        let mut slot = self.frame.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Ordering::Acquire) != URGENT_NONE {
            return false;
        }
        *slot = Some(frame);
        self.state.store(URGENT_SET, Ordering::Release);
        true
    }

    /// A close is set and not yet taken.
    #[inline]
    fn is_set(&self) -> bool {
        self.state.load(Ordering::Acquire) == URGENT_SET
    }

    /// The close, the first time it is asked for after it was set.
    pub(crate) fn take(&self) -> Option<CloseFrame> {
        if !self.is_set() {
            return None;
        }
        let mut slot = self.frame.lock().unwrap_or_else(PoisonError::into_inner);
        self.state
            .compare_exchange(
                URGENT_SET,
                URGENT_TAKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .and_then(|_| slot.take())
    }
}

impl fmt::Debug for SocketWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketWriter")
            .field("id", &self.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl SocketWriter {
    pub(crate) fn new(
        id: ConnectionId,
        capacity: usize,
        max_bytes: usize,
        send_timeout: Duration,
        metrics: Arc<ConnMetrics>,
    ) -> Self {
        SocketWriter {
            id,
            send_timeout,
            shared: Arc::new(Shared {
                queue: OutboundQueue::new(capacity, max_bytes),
                urgent: UrgentClose::new(),
                metrics,
                direct: OnceLock::new(),
            }),
        }
    }

    /// Lets other tasks write prepared messages straight into the socket
    /// ([`try_send_prepared`](Self::try_send_prepared)).
    pub(crate) fn set_direct(&self, direct: DirectWriter) {
        let _ = self.shared.direct.set(direct);
    }

    /// The queue the connection task drains.
    pub(crate) fn queue(&self) -> &OutboundQueue<Outbound> {
        &self.shared.queue
    }

    /// How long a write may wait for the peer (the endpoint's send timeout).
    pub(crate) fn send_timeout(&self) -> Duration {
        self.send_timeout
    }

    /// The close that skips this connection's queue.
    pub(crate) fn urgent(&self) -> &UrgentClose {
        &self.shared.urgent
    }

    /// For the connection task: an urgent close if one is set, else the next queued command,
    /// else `Closed` once the queue is closed. Both are watched through one waker, so one
    /// registration of the task's waker covers everything its writers can give it.
    ///
    /// `claim` runs before a command is taken: it holds the socket's writes for the task
    /// ([`WebSocket::claim_writes`](ws_upgrader::WebSocket::claim_writes)), so that no direct
    /// write overtakes the command between its taking and its writing.
    #[inline]
    pub(crate) fn poll_delivery(
        &self,
        cx: &mut Context<'_>,
        mut claim: impl FnMut(),
    ) -> Poll<Delivery> {
        let queue = &self.shared.queue;
        queue.poll_task(cx, || {
            if self.shared.urgent.is_set() {
                Some(Delivery::Urgent)
            } else if !queue.is_empty()
                && let Some(command) = {
                    claim();
                    queue.try_pop()
                }
            {
                Some(Delivery::Command(command))
            } else {
                queue.is_closed().then_some(Delivery::Closed)
            }
        })
    }

    /// Waits until an urgent close is set (and not yet taken).
    pub(crate) async fn urgent_close(&self) {
        std::future::poll_fn(|cx| {
            self.shared
                .queue
                .poll_task(cx, || self.shared.urgent.is_set().then_some(()))
        })
        .await;
    }

    /// The connection this writer writes to.
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.queue.is_closed()
    }

    /// Writes a value with GoFr's rules (`WriteMessageToSocket`, see
    /// [`encode`](ws_message::encode)): strings as text, bytes as binary, other `Serialize`
    /// values as JSON text, `()`/`None` as nothing. The value is borrowed and encoded at the
    /// call: the future holds the message, not the value.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped the message was either queued whole or not at all.
    pub fn write<T: Encode + ?Sized>(
        &self,
        data: &T,
    ) -> impl Future<Output = Result<(), WriteError>> + Send + '_ {
        let encoded = encode(data);
        async move {
            match encoded? {
                Some(message) => self.send(message).await,
                None => Ok(()),
            }
        }
    }

    /// Queues a message, waiting up to the send timeout while the queue is full. If it stays
    /// full that long the result is [`WriteError::Full`] and the peer is closed with
    /// [`SLOW_PEER_CLOSE_CODE`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`write`](Self::write).
    pub async fn send(&self, message: Message) -> Result<(), WriteError> {
        self.send_item(Outbound::message(message)).await
    }

    /// [`send`](Self::send) for any item of the queue.
    pub(crate) async fn send_item(&self, item: Outbound) -> Result<(), WriteError> {
        let result = self.enqueue(item).await;
        if let Err(WriteError::Full(_)) = result {
            self.close_slow();
        }
        result
    }

    /// Sends a text frame.
    pub async fn text(&self, text: impl Into<Utf8Bytes>) -> Result<(), WriteError> {
        self.send(Message::Text(text.into())).await
    }

    /// Sends a binary frame.
    pub async fn binary(&self, data: impl Into<Bytes>) -> Result<(), WriteError> {
        self.send(Message::Binary(data.into())).await
    }

    /// Sends any `Serialize` value as JSON text, strings included (`"hi"` becomes `"\"hi\""`).
    pub async fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), WriteError> {
        let json = serde_json::to_string(value).map_err(EncodeError::from_json::<T>)?;
        // A buffer of its own already: nothing to detach.
        self.send_item(Outbound::Message(Message::text(json))).await
    }

    /// Sends a ping; the peer's pong shows up as [`Message::Pong`] to nobody but the
    /// liveness timer.
    pub async fn ping(&self, payload: impl Into<Bytes>) -> Result<(), WriteError> {
        self.send(Message::Ping(payload.into())).await
    }

    /// Closes the connection with a close frame after the messages queued before it.
    /// Its code was checked when it was made ([`CloseFrame::new`]; a frame that only reports,
    /// 1005 or 1006, goes out without a code).
    /// A handler running at the time may finish first, within the endpoint's grace period.
    /// If the queue stays full for the send timeout, the queued messages are dropped and the
    /// close goes out at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the close is queued whole or not at all.
    pub async fn close(&self, frame: CloseFrame) -> Result<(), WriteError> {
        match self.enqueue(Outbound::Close(frame.clone())).await {
            Err(WriteError::Full(_)) => {
                self.close_now(frame);
                Ok(())
            }
            other => other,
        }
    }

    /// Queues a message only if there is room now; never waits.
    pub fn try_send(&self, message: Message) -> Result<(), WriteError> {
        self.try_send_item(Outbound::message(message))
    }

    /// [`try_send`](Self::try_send) for a message prepared for many connections: written
    /// straight into the socket when the connection's task has nothing to write and nothing
    /// is queued for it (no task woken: S8 in bench/README.md), else queued.
    pub(crate) fn try_send_prepared(&self, prepared: &PreparedMessage) -> Result<(), WriteError> {
        if let Some(direct) = self.shared.direct.get() {
            let Shared { queue, urgent, .. } = &*self.shared;
            // Asked with the socket's writes held: nothing queued can be overtaken, and a
            // connection that is being closed takes nothing more this way.
            let sent = direct.try_send(prepared, || {
                queue.is_empty() && !urgent.is_set() && !queue.is_closed()
            });
            if sent != DirectSend::NotWritten {
                if sent == DirectSend::Partial {
                    // The task writes the rest of the frame before anything else.
                    queue.wake_task();
                }
                let metrics = &self.shared.metrics;
                metrics.messages_sent.increment(1);
                metrics
                    .bytes_sent
                    .increment(u64::try_from(prepared.message().len()).unwrap_or(u64::MAX));
                return Ok(());
            }
        }
        self.try_send_item(Outbound::Prepared(prepared.clone()))
    }

    /// [`try_send`](Self::try_send) for any item of the queue.
    pub(crate) fn try_send_item(&self, item: Outbound) -> Result<(), WriteError> {
        let bytes = item.bytes();
        self.shared
            .queue
            .try_push(item, bytes)
            .map_err(|refused| match refused {
                Refused::Full(_) => {
                    self.shared.metrics.queue_full.increment(1);
                    WriteError::Full(self.id.clone())
                }
                Refused::Closed(_) => WriteError::Closed(self.id.clone()),
            })
    }

    /// Closes after what is queued, or at once if the queue is full. False if already closed.
    pub(crate) fn try_close(&self, frame: CloseFrame) -> bool {
        match self.shared.queue.try_push(Outbound::Close(frame), 0) {
            Ok(()) => true,
            Err(Refused::Full(Outbound::Close(frame))) => self.close_now(frame),
            Err(_) => false,
        }
    }

    /// Closes the peer for not reading: counted, and the queue is dropped.
    pub(crate) fn close_slow(&self) {
        if self.close_now(CloseFrame::policy(SLOW_PEER_REASON)) {
            self.shared.metrics.slow_peers.increment(1);
            tracing::warn!(conn_id = %self.id, "peer is not reading; closing it with 1008");
        }
    }

    /// Closes without waiting for the queue, which the connection task then drops. True if
    /// this call started the close.
    fn close_now(&self, frame: CloseFrame) -> bool {
        let first = !self.is_closed() && self.shared.urgent.set(frame);
        if first {
            self.shared.queue.wake_task();
        }
        first
    }

    async fn enqueue(&self, item: Outbound) -> Result<(), WriteError> {
        let bytes = item.bytes();
        let item = match self.shared.queue.try_push(item, bytes) {
            Ok(()) => return Ok(()),
            Err(Refused::Closed(_)) => return Err(WriteError::Closed(self.id.clone())),
            Err(Refused::Full(item)) => item,
        };
        self.shared.metrics.queue_full.increment(1);
        match tokio::time::timeout(self.send_timeout, self.shared.queue.push(item, bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Closed(self.id.clone())),
            Err(_) => Err(WriteError::Full(self.id.clone())),
        }
    }
}
