use std::{fmt, future::Future, pin::Pin, sync::Arc};

use ws_message::Message;

use crate::hub::{ConnectionId, HubInner};

/// A future returned by a [`Backplane`].
pub type BackplaneFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), BackplaneError>> + Send + 'a>>;

/// Carries a hub's fan-out to the other instances of an app, so that a room or a broadcast
/// spans every instance (for example over Redis pub/sub). Handlers never see it: they call
/// [`ConnectionHub`](crate::ConnectionHub) methods, which deliver to local connections first
/// and then [`publish`](Backplane::publish) here.
///
/// The default, [`InProcess`], reaches no other instance. An implementation delivers what
/// other instances publish through the [`Inbound`] handle it gets in
/// [`attach`](Backplane::attach); those deliveries go through the same bounded per-connection
/// queues and the same slow-peer policy as local ones.
///
/// Guarantee expected of implementations: at most once, no duplicates, in order per sender.
pub trait Backplane: Send + Sync + 'static {
    /// Hands a delivery made on this instance to the others. Must not block and must not
    /// queue without limit: an implementation with a network behind it keeps a bounded
    /// queue and fails fast when it is full.
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError>;

    /// The first local connection joined `room`: start receiving the room's deliveries. The
    /// join that caused it waits for this future.
    fn join_interest(&self, room: &str) -> BackplaneFuture<'_> {
        let _ = room;
        Box::pin(std::future::ready(Ok(())))
    }

    /// The last local connection left `room`: its deliveries are no longer needed here.
    fn leave_interest(&self, room: &str) {
        let _ = room;
    }

    /// Called once when a hub is built with this backplane: deliveries from other instances
    /// go to `inbound`.
    fn attach(&self, inbound: Inbound) {
        let _ = inbound;
    }

    /// Whether other instances are reachable now; health checks report it.
    fn status(&self) -> BackplaneStatus {
        BackplaneStatus::Standalone
    }

    /// The hubs currently known to be alive on other instances and this one, by origin
    /// (see [`Envelope::origin`]); empty when the backplane does not track them.
    fn nodes(&self) -> Vec<Arc<str>> {
        Vec::new()
    }
}

/// Whether a [`Backplane`] reaches the other instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneStatus {
    /// There are no other instances to reach (the [`InProcess`] default).
    Standalone,
    /// Connected: deliveries reach the other instances.
    Up,
    /// Disconnected: local deliveries go on, cross-instance ones fail until it is back.
    Down,
}

/// The default [`Backplane`]: every delivery stays in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl Backplane for InProcess {
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        match envelope.target {
            // There is no other instance that could own the connection.
            Target::Connection(_) => Err(BackplaneError::NoRoute),
            Target::All | Target::Room(_) => Ok(()),
        }
    }
}

/// Why a [`Backplane`] could not carry a delivery. Local delivery is never affected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// No instance reachable through this backplane owns the target.
    #[error("no instance owns the target")]
    NoRoute,
    /// The backplane is down or its queue is full.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// The delivery cannot travel between instances (too large, a field outside the
    /// format's rules); it was still delivered locally.
    #[error("backplane refused the delivery: {0}")]
    Refused(String),
}

/// Who a delivery is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every connection.
    All,
    /// The members of a room.
    Room(Arc<str>),
    /// One connection, by id; a [`Message::Close`] closes it.
    Connection(ConnectionId),
}

/// One delivery as it travels between instances.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope {
    /// The hub it comes from (this process's [`node_id`](crate::node_id) and the hub's
    /// number); a hub ignores its own.
    pub origin: Arc<str>,
    /// Who it is for.
    pub target: Target,
    /// What to deliver.
    pub message: Message,
}

impl Envelope {
    /// A delivery from `origin`.
    pub fn new(origin: impl Into<Arc<str>>, target: Target, message: Message) -> Self {
        Envelope {
            origin: origin.into(),
            target,
            message,
        }
    }
}

/// Where a [`Backplane`] hands deliveries that come from other instances. Holds the hub
/// weakly: once the hub is gone, deliveries are dropped.
#[derive(Clone)]
pub struct Inbound {
    pub(crate) hub: std::sync::Weak<HubInner>,
    pub(crate) origin: Arc<str>,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Inbound {
    /// The origin of the hub it delivers to (see [`Envelope::origin`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Delivers to this instance's connections only (never published again) and returns
    /// how many took it. Envelopes from this instance itself are ignored.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future may leave the message with only some members.
    pub async fn deliver(&self, envelope: Envelope) -> usize {
        if envelope.origin == self.origin {
            return 0;
        }
        match self.hub.upgrade() {
            Some(inner) => {
                crate::hub::ConnectionHub { inner }
                    .deliver_locally(&envelope.target, envelope.message)
                    .await
            }
            None => 0,
        }
    }
}
