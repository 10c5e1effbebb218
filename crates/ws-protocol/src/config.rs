//! What is fixed when a connection starts: its [`Role`], limits, the negotiated deflate and the
//! process-wide [`InboundBudget`].

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use crate::deflate::DeflateParams;

/// Which end of the connection we are: it decides masking (RFC 6455 §5.3): a client masks every
/// frame it sends and requires unmasked frames; a server the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that accepted the connection.
    Server,
    /// The end that opened the connection.
    Client,
}

/// The default of [`Config::max_message_size`] and [`Config::max_frame_size`]: 16 MiB.
pub const DEFAULT_MAX_SIZE: usize = 16 << 20;

/// Everything fixed when a connection starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server or client.
    pub role: Role,
    /// The largest message accepted, fragments together, after inflating (default 16 MiB);
    /// larger is [`ProtocolError::MessageTooBig`](crate::ProtocolError::MessageTooBig) (1009).
    /// Compressed messages count against it twice: compressed, as received, and inflated.
    pub max_message_size: usize,
    /// The largest frame payload accepted (default 16 MiB); larger is
    /// [`ProtocolError::FrameTooBig`](crate::ProtocolError::FrameTooBig) (1009).
    pub max_frame_size: usize,
    /// The permessage-deflate parameters negotiated in the handshake, if any.
    pub deflate: Option<DeflateParams>,
    /// The process-wide bound on bytes held in unfinished messages, if any.
    pub budget: Option<InboundBudget>,
}

impl Config {
    /// A server's configuration: 16 MiB limits, no deflate, no budget.
    pub fn server() -> Self {
        Config::with_role(Role::Server)
    }

    /// A client's configuration: 16 MiB limits, no deflate, no budget.
    pub fn client() -> Self {
        Config::with_role(Role::Client)
    }

    fn with_role(role: Role) -> Self {
        Config {
            role,
            max_message_size: DEFAULT_MAX_SIZE,
            max_frame_size: DEFAULT_MAX_SIZE,
            deflate: None,
            budget: None,
        }
    }
}

/// A process-wide budget of bytes held in unfinished inbound messages, shared by every
/// connection given a clone of it (cheap: an `Arc` around a counter and the limit).
///
/// A connection reserves from it only for bytes it must keep between two
/// [`Connection::receive`](crate::Connection::receive) calls (its
/// [`buffered`](crate::Connection::buffered) bytes: the capacity of the buffers holding the
/// unfinished frame or message); a message complete inside one call never touches it. When a
/// reservation fails the connection reports
/// [`ProtocolError::BudgetExhausted`](crate::ProtocolError::BudgetExhausted) (close code 1013).
/// Reservations are returned when the message completes, on error, and when the connection is
/// dropped.
#[derive(Debug, Clone)]
pub struct InboundBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl InboundBudget {
    /// A budget of `limit_bytes` bytes.
    pub fn new(limit_bytes: usize) -> Self {
        InboundBudget {
            inner: Arc::new(BudgetInner {
                used: AtomicUsize::new(0),
                limit: AtomicUsize::new(limit_bytes),
            }),
        }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.inner.limit.load(Ordering::Acquire)
    }

    /// Changes the limit for every connection sharing this budget (a configuration read at
    /// start-up, say). Reservations already made stay; new ones are checked against the new
    /// limit.
    pub fn set_limit(&self, limit_bytes: usize) {
        self.inner.limit.store(limit_bytes, Ordering::Release);
    }

    /// The bytes reserved now, by every connection sharing this budget.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes`; false (and nothing reserved) when that would exceed the limit.
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let limit = self.limit();
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` reserved earlier.
    pub(crate) fn release(&self, bytes: usize) {
        self.inner.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}
