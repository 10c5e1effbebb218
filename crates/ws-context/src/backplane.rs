//! The seam for cross-instance fan-out: [`Backplane`] (with [`InProcess`], the default),
//! [`Envelope`] and [`Target`], and [`Inbound`], through which a backplane's reader hands
//! deliveries to this instance's connections without ever waiting for one (a full member's
//! messages are held by `Stalled`). Room history positions ([`RoomPosition`]) live here too.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use ws_message::{CloseFrame, Message};
use ws_upgrader::PreparedMessage;

use crate::{
    hub::{ConnectionId, HubInner, PresenceMember},
    writer::{Outbound, SocketWriter, WriteError},
};

/// Most messages from other instances held for one member whose queue is full; past it the
/// member is closed as a slow peer at once instead of after its send timeout.
pub const MAX_STALLED_MESSAGES: usize = 16_384;

/// A future returned by a [`Backplane`].
pub type BackplaneFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(), BackplaneError>> + Send + 'a>>;

/// A future returned by the history methods of a [`Backplane`].
pub type HistoryFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`Backplane::append`] did with a room message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// Recorded at the position asked for, and on its way to every instance's members
    /// (this one's included) through [`Inbound::deliver_entry`].
    At(RoomPosition),
    /// Not recorded: the room's history is at this position now (another message took the
    /// one asked for, or the history is new). Make the message again for the next one.
    Moved(RoomPosition),
}

/// A room message read back from a shared history: its position and the message.
pub type HistoryEntry = (RoomPosition, Message);

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

    /// A connection joined a room (with what presence shows for it): record it where every
    /// instance can list it. Called under the hub's lock, in order with
    /// [`presence_remove`](Backplane::presence_remove): must not block.
    fn presence_add(&self, room: &str, id: &ConnectionId, info: &str) {
        let _ = (room, id, info);
    }

    /// A connection left a room (or closed). Must not block.
    fn presence_remove(&self, room: &str, id: &ConnectionId) {
        let _ = (room, id);
    }

    /// The members of a room on every instance, when this backplane tracks presence; `None`
    /// (the default) when it does not, and the hub lists its own.
    fn presence(
        &self,
        room: &str,
    ) -> Option<HistoryFuture<'_, Result<Vec<PresenceMember>, BackplaneError>>> {
        let _ = room;
        None
    }

    /// Whether this backplane keeps a room history that every instance shares (Redis
    /// Streams, say). When it does, and the hub has history limits, room messages go
    /// through [`append`](Backplane::append) and reach every member, this instance's too,
    /// through [`Inbound::deliver_entry`], in the history's order. Default: false.
    fn shared_history(&self) -> bool {
        false
    }

    /// The limits given to [`ConnectionHub::set_history_limits`](crate::ConnectionHub::set_history_limits):
    /// at most `max_len` messages per room, none older than `max_age`.
    fn set_history_limits(&self, max_len: usize, max_age: Duration) {
        let _ = (max_len, max_age);
    }

    /// The position of a room's last message in the shared history (offset 0 before the
    /// first), creating the room's history (its epoch) if there is none, so that a client
    /// given it can recover from it.
    fn room_position(&self, room: &str) -> HistoryFuture<'_, Result<RoomPosition, BackplaneError>> {
        let _ = room;
        Box::pin(std::future::ready(Err(BackplaneError::Unavailable(
            "no shared history".to_owned(),
        ))))
    }

    /// The position the room's next message probably gets (the last one this instance saw,
    /// plus one), without asking anyone; `None` when it does not know.
    fn next_position(&self, room: &str) -> Option<RoomPosition> {
        let _ = room;
        None
    }

    /// Records `message` in the room's shared history at `at`, the room's next position,
    /// and publishes it to every instance, atomically; or, when `at` is not the next
    /// position, records nothing and says where the history is.
    fn append(
        &self,
        room: &str,
        origin: &str,
        at: RoomPosition,
        message: Message,
    ) -> HistoryFuture<'_, Result<Appended, BackplaneError>> {
        let _ = (room, origin, at, message);
        Box::pin(std::future::ready(Err(BackplaneError::Unavailable(
            "no shared history".to_owned(),
        ))))
    }

    /// Every message of the room's shared history after `since`, oldest first, and the
    /// position of the last one (`since` when nothing came after it); or why that is not
    /// possible.
    fn history_since(
        &self,
        room: &str,
        since: &RoomPosition,
    ) -> HistoryFuture<'_, Result<(Vec<HistoryEntry>, RoomPosition), RecoveryError>> {
        let _ = (room, since);
        Box::pin(std::future::ready(Err(RecoveryError::Unavailable(
            "no shared history".to_owned(),
        ))))
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
    /// Partly connected (a Redis Cluster with a shard that does not answer): deliveries on
    /// the other shards reach the other instances; those on the missing shard fail until a
    /// replica takes over.
    Degraded,
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
    /// No answer in time: the delivery may or may not have happened.
    #[error("backplane did not answer in time: {0}")]
    TimedOut(String),
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
///
/// # Slow members
///
/// A delivery never waits for a member: the single reader of a backplane must not let one
/// connection delay everyone else's messages. A member whose queue is full gets the same
/// policy as in local delivery, applied off the reader: its messages are held, in order, by
/// one task that waits up to the member's send timeout for room in its queue; if none comes,
/// the member is closed with [`SLOW_PEER_CLOSE_CODE`](crate::SLOW_PEER_CLOSE_CODE) (1008) and
/// what was held is dropped. At most [`MAX_STALLED_MESSAGES`] are held per member; one more
/// closes it at once.
#[derive(Clone)]
pub struct Inbound {
    pub(crate) hub: std::sync::Weak<HubInner>,
    pub(crate) origin: Arc<str>,
    pub(crate) stalled: Stalled,
}

/// Messages held for members whose queue is full, per member, each drained by one task.
#[derive(Clone, Default)]
pub(crate) struct Stalled(Arc<Mutex<HashMap<ConnectionId, VecDeque<Outbound>>>>);

impl Stalled {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, VecDeque<Outbound>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `message` on `writer` now, or holds it behind what is held already. False if
    /// the member is closed (or just got closed for holding too much).
    pub(crate) fn offer(&self, writer: &SocketWriter, message: &Outbound) -> bool {
        let mut stalled = self.lock();
        if let Some(held) = stalled.get_mut(writer.id()) {
            if held.len() >= MAX_STALLED_MESSAGES {
                held.clear();
                drop(stalled);
                writer.close_slow();
                return false;
            }
            held.push_back(message.clone());
            return true;
        }
        match writer.try_send_item(message.clone()) {
            Ok(()) => true,
            Err(WriteError::Full(_)) => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    drop(stalled);
                    writer.close_slow();
                    return false;
                };
                stalled.insert(writer.id().clone(), VecDeque::from([message.clone()]));
                runtime.spawn(self.clone().drain(writer.clone()));
                true
            }
            Err(_) => false,
        }
    }

    /// Feeds what is held for one member into its queue, in order, each write waiting up to
    /// the send timeout (which closes the member with 1008 when it runs out).
    async fn drain(self, writer: SocketWriter) {
        loop {
            let next = {
                let mut stalled = self.lock();
                match stalled.get_mut(writer.id()).and_then(VecDeque::pop_front) {
                    Some(message) => message,
                    None => {
                        // Caught up: later deliveries go straight to the queue again.
                        stalled.remove(writer.id());
                        return;
                    }
                }
            };
            if writer.send_item(next).await.is_err() {
                self.lock().remove(writer.id());
                return;
            }
        }
    }
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
    /// how many took it or hold it for later (see [Slow members](Self#slow-members)).
    /// Envelopes from this instance itself are ignored. Never waits for a member: this is
    /// [`deliver_now`](Self::deliver_now), kept async for implementations written against it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing happens after the first poll.
    pub async fn deliver(&self, envelope: Envelope) -> usize {
        self.deliver_now(envelope)
    }

    /// Delivers to this instance's connections only, without waiting for any of them, and
    /// returns how many took it or hold it for later. A backplane's single reader calls this
    /// for every delivery, in order: each member gets them in that order.
    ///
    /// ```
    /// # fn demo(inbound: &ws_context::Inbound) {
    /// use ws_context::{Envelope, Message, Target};
    /// let delivered = inbound.deliver_now(Envelope::new(
    ///     "another-node/1",
    ///     Target::Room("lobby".into()),
    ///     Message::text("from far away"),
    /// ));
    /// # let _ = delivered; }
    /// ```
    pub fn deliver_now(&self, envelope: Envelope) -> usize {
        if envelope.origin == self.origin {
            return 0;
        }
        let Some(inner) = self.hub.upgrade() else {
            return 0;
        };
        let hub = crate::hub::ConnectionHub { inner };
        match (&envelope.target, envelope.message) {
            (Target::Connection(id), Message::Close(frame)) => {
                let frame = frame.unwrap_or_else(|| CloseFrame::normal(""));
                // Ahead of anything held for the member: a close waits for no one.
                hub.get(id)
                    .map_or(0, |writer| usize::from(writer.try_close(frame)))
            }
            (target, message) => {
                // As in local delivery: one connection gets the message as it is, many get
                // it prepared once (encoded and compressed once per set of parameters).
                let item = match target {
                    Target::Connection(_) => Outbound::Message(message),
                    Target::Room(_) | Target::All => {
                        Outbound::Prepared(PreparedMessage::new(message))
                    }
                };
                let mut delivered = 0;
                hub.for_each_writer(target, |writer| {
                    delivered += usize::from(self.stalled.offer(writer, &item));
                });
                delivered
            }
        }
    }

    /// A connection of another instance's hub `origin` joined `room` with presence key
    /// `key` (what its app set with `set_presence_info`, or its id): counted for this hub's
    /// [presence events](crate::ConnectionHub::presence_events). Changes from this hub's own
    /// origin are ignored (the hub counts its own). A backplane's reader calls this and
    /// [`presence_left`](Self::presence_left) in the order the other hub made them.
    ///
    /// ```
    /// # fn demo(inbound: &ws_context::Inbound) {
    /// use ws_context::ConnectionId;
    /// let id = ConnectionId::from("9f2c-0a1b");
    /// inbound.presence_joined("9f2c/1", "lobby", &id, "ann");
    /// inbound.presence_left("9f2c/1", "lobby", &id);
    /// # }
    /// ```
    pub fn presence_joined(&self, origin: &str, room: &str, id: &ConnectionId, key: &str) {
        if origin == &*self.origin {
            return;
        }
        if let Some(inner) = self.hub.upgrade() {
            inner.presence.joined(origin, room, id, key);
        }
    }

    /// A connection of another instance's hub `origin` left `room` (or closed).
    pub fn presence_left(&self, origin: &str, room: &str, id: &ConnectionId) {
        if origin == &*self.origin {
            return;
        }
        if let Some(inner) = self.hub.upgrade() {
            inner.presence.left(room, id);
        }
    }

    /// The hubs alive now, as a backplane that tracks them knows them (by heartbeats, say):
    /// every member of another hub not among them leaves at once, without the leave delay
    /// (they were counted out after missing heartbeats, which took longer than the delay).
    pub fn presence_origins_alive(&self, live: &[Arc<str>]) {
        if let Some(inner) = self.hub.upgrade() {
            inner.presence.retain_origins(&self.origin, live);
        }
    }

    /// Calls `each(room, id, info)` for every membership of this hub's connections, under the
    /// hub's lock (so joins and leaves made meanwhile come after): what to announce to an
    /// instance met for the first time, or again, so that it counts them. Must not block.
    pub fn local_presence(&self, each: impl FnMut(&str, &ConnectionId, &str)) {
        if let Some(inner) = self.hub.upgrade() {
            crate::hub::ConnectionHub { inner }.local_presence(each);
        }
    }

    /// The hub `origin` of another instance starts listing every member it has
    /// ([`presence_joined`](Self::presence_joined) for each, then
    /// [`presence_snapshot_ends`](Self::presence_snapshot_ends)): its members it does not list
    /// leave, as after a leave this instance missed.
    pub fn presence_snapshot_begins(&self, origin: &str) {
        if origin == &*self.origin {
            return;
        }
        if let Some(inner) = self.hub.upgrade() {
            inner.presence.snapshot_begins(origin);
        }
    }

    /// The hub `origin` has listed every member it has (see
    /// [`presence_snapshot_begins`](Self::presence_snapshot_begins)).
    pub fn presence_snapshot_ends(&self, origin: &str) {
        if origin == &*self.origin {
            return;
        }
        if let Some(inner) = self.hub.upgrade() {
            inner.presence.snapshot_ends(origin);
        }
    }

    /// Delivers one message of a room's shared history (see [`Backplane::shared_history`])
    /// to this instance's members, those of its own origin included, in the history's
    /// order: a message at or before the last one delivered for the room is a duplicate and
    /// dropped; members recovering get it after what they recover. Returns how many members
    /// took it or hold it for later. Never waits for a member. A backplane's single reader
    /// calls it for every history message, in the order of the history.
    ///
    /// ```
    /// # fn demo(inbound: &ws_context::Inbound) {
    /// use ws_context::{Message, RoomPosition};
    /// let delivered = inbound.deliver_entry(
    ///     "lobby",
    ///     RoomPosition::new("5e1f0c2a9b3d4e6f", 7),
    ///     Message::text("hello"),
    /// );
    /// # let _ = delivered; }
    /// ```
    pub fn deliver_entry(&self, room: &str, position: RoomPosition, message: Message) -> usize {
        let Some(inner) = self.hub.upgrade() else {
            return 0;
        };
        let hub = crate::hub::ConnectionHub { inner };
        hub.deliver_entry(room, position, message, &self.stalled)
    }
}

/// A room message's place in the room's history: an epoch, which changes whenever the
/// history is lost (a restart, an expiry), and an offset, which counts the room's messages
/// within the epoch. Clients get it as an opaque string (`to_string`, parsed back with
/// `parse`) and hand it back to recover what they missed (see
/// [`ConnectionHub::join_since`](crate::ConnectionHub::join_since)).
///
/// ```
/// use ws_context::RoomPosition;
/// let position = RoomPosition::new("3f9a0c", 42);
/// let text = position.to_string();
/// assert_eq!(text.parse::<RoomPosition>().unwrap(), position);
/// assert!("nonsense".parse::<RoomPosition>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomPosition {
    epoch: Arc<str>,
    offset: u64,
}

impl RoomPosition {
    /// A position; `epoch` is 1 to 64 ASCII letters, digits, `_` or `-` (others are kept
    /// but such a position does not parse back).
    pub fn new(epoch: impl Into<Arc<str>>, offset: u64) -> Self {
        RoomPosition {
            epoch: epoch.into(),
            offset,
        }
    }

    /// The history's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The message's number within the epoch, from 1; 0 is "before the first".
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The position after this one, in the same epoch.
    ///
    /// ```
    /// let position = ws_context::RoomPosition::new("e1", 41);
    /// assert_eq!(position.next().offset(), 42);
    /// ```
    pub fn next(&self) -> RoomPosition {
        RoomPosition {
            epoch: self.epoch.clone(),
            offset: self.offset.saturating_add(1),
        }
    }

    /// Whether `other` is in the same epoch and at or before this position.
    pub(crate) fn covers(&self, other: &RoomPosition) -> bool {
        self.epoch == other.epoch && other.offset <= self.offset
    }
}

impl fmt::Display for RoomPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.offset, self.epoch)
    }
}

/// A string that is not a [`RoomPosition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a room position: {0:?}")]
pub struct PositionError(String);

impl std::str::FromStr for RoomPosition {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PositionError(text.chars().take(80).collect());
        let (offset, epoch) = text.split_once('.').ok_or_else(bad)?;
        let offset = offset.parse().map_err(|_| bad())?;
        let valid = (1..=64).contains(&epoch.len())
            && epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(bad());
        }
        Ok(RoomPosition::new(epoch, offset))
    }
}

/// Why a member could not recover a room's messages from a position; the app should reload
/// its state (and then [`join`](crate::ConnectionHub::join) without recovery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The connection is not open here.
    #[error("the connection is not open")]
    NotOpen,
    /// The room's history is not the one the position is from (it was lost, expired, or the
    /// position is from another history).
    #[error("the room's history has changed since that position")]
    EpochChanged,
    /// Some messages after the position are no longer kept.
    #[error("the position is older than the room's history")]
    TooOld,
    /// No history is kept here for recovery (for example with a backplane that keeps none).
    #[error("recovery is not available: {0}")]
    Unavailable(String),
}

/// What [`ConnectionHub::join_since`](crate::ConnectionHub::join_since) recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovered {
    /// How many messages were queued for the member, in order, before any live one.
    pub count: usize,
    /// The room's position when the member joined: its last message before the live ones.
    pub position: RoomPosition,
}
