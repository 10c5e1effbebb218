//! Presence events: who arrives in and who leaves a room, per presence key (the info the app
//! attached with [`ConnectionHub::set_presence_info`](crate::ConnectionHub::set_presence_info),
//! or the connection id), on every instance the backplane reaches.
//!
//! The tracker counts, per room and key, the connections present on any instance. A key's
//! first connection makes a [`PresenceEventKind::Joined`]; when its last one goes, a
//! [`PresenceEventKind::Left`] follows after the leave delay unless a connection with the
//! same key arrives in between: a client that reconnects quickly (a new connection id, the
//! same user) makes no leave/join pair. Each instance runs the same tracker on the same
//! changes (its own and those the backplane brings), so every instance reports the same
//! events. Members of an instance that stopped sending heartbeats leave at once: three
//! heartbeats have passed already.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use tokio::sync::broadcast;

use crate::hub::ConnectionId;

/// How long a key stays present after its last connection left, by default (as Pusher's
/// member_removed delay): a reconnect within it makes no events.
pub const DEFAULT_PRESENCE_LEAVE_DELAY: Duration = Duration::from_secs(3);

/// Events each [`PresenceEvents`] receiver may fall behind by before it loses the oldest.
pub const PRESENCE_EVENTS_CAPACITY: usize = 4096;

/// Most memberships counted, across instances: past it a join is not counted (logged), so
/// a flood of forged joins (without a backplane secret) cannot grow memory without bound.
pub const MAX_PRESENCE_MEMBERSHIPS: usize = 1 << 20;

const EVENTS_LOST: &str = "ws_presence_events_lost_total";

/// A member arrived in a room or left it, on any instance.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceEvent {
    /// The room.
    pub room: Arc<str>,
    /// The member's presence key: its [`PresenceMember::info`](crate::PresenceMember::info)
    /// (what the app set with `set_presence_info`, a user name say), or its connection id.
    pub key: Arc<str>,
    /// Arrived or left.
    pub kind: PresenceEventKind,
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PresenceEventKind {
    /// The key's first connection in the room (none was present, nor leaving within the
    /// leave delay).
    Joined,
    /// The key's last connection left the room and none came back within the leave delay,
    /// or its instance stopped sending heartbeats.
    Left,
}

/// A subscription to a hub's presence events ([`ConnectionHub::presence_events`](crate::ConnectionHub::presence_events)).
///
/// Bounded: a receiver that falls more than [`PRESENCE_EVENTS_CAPACITY`] events behind loses
/// the oldest; they are counted ([`lost`](Self::lost), the metric
/// `ws_presence_events_lost_total`) and logged, and the next event is the oldest one kept.
/// A slow subscriber never grows memory and never delays anyone else.
#[derive(Debug)]
pub struct PresenceEvents {
    receiver: broadcast::Receiver<PresenceEvent>,
    lost: u64,
}

impl PresenceEvents {
    /// The next event; `None` once the hub is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken only when returned.
    pub async fn recv(&mut self) -> Option<PresenceEvent> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lag(n),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<PresenceEvent> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lag(n),
                Err(_) => return None,
            }
        }
    }

    /// How many events this receiver lost by falling behind.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    fn lag(&mut self, n: u64) {
        self.lost += n;
        metrics::counter!(EVENTS_LOST).increment(n);
        tracing::warn!(
            lost = n,
            "a presence subscriber fell behind; oldest events dropped"
        );
    }
}

/// The presence tracker of one hub.
pub(crate) struct Tracker {
    state: Mutex<State>,
    events: broadcast::Sender<PresenceEvent>,
}

/// A membership: (room, connection).
type Member = (Arc<str>, ConnectionId);
/// What is known of it: (the hub it is on, its presence key).
type Of = (Arc<str>, Arc<str>);
/// A room's presence key: (room, key).
type RoomKey = (Arc<str>, Arc<str>);

#[derive(Default)]
struct State {
    leave_delay: Option<Duration>,
    /// Every membership known, on any instance: (room, connection) -> (hub origin, key).
    members: HashMap<Member, Of>,
    /// Per (room, key): connections present, and the leave waiting for the delay.
    keys: HashMap<RoomKey, Key>,
    next_leave: u64,
    /// Per hub whose snapshot is arriving: its members not confirmed by it so far.
    snapshots: HashMap<Arc<str>, HashSet<Member>>,
}

#[derive(Default)]
struct Key {
    present: usize,
    /// Set while the key has no connection and its leave waits: the leave's number.
    leaving: Option<u64>,
}

impl Tracker {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Tracker {
            state: Mutex::new(State::default()),
            events: broadcast::channel(PRESENCE_EVENTS_CAPACITY).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> PresenceEvents {
        PresenceEvents {
            receiver: self.events.subscribe(),
            lost: 0,
        }
    }

    pub(crate) fn set_leave_delay(&self, delay: Duration) {
        self.state().leave_delay = Some(delay);
    }

    pub(crate) fn leave_delay(&self) -> Duration {
        self.state()
            .leave_delay
            .unwrap_or(DEFAULT_PRESENCE_LEAVE_DELAY)
    }

    /// A connection of the hub `origin` joined `room` with presence key `key`. Joining
    /// again with the same key changes nothing; with another key it is a leave and a join.
    pub(crate) fn joined(self: &Arc<Self>, origin: &str, room: &str, id: &ConnectionId, key: &str) {
        let mut state = self.state();
        let room: Arc<str> = room.into();
        let key: Arc<str> = key.into();
        let member = (room.clone(), id.clone());
        if let Some(unconfirmed) = state.snapshots.get_mut(origin) {
            unconfirmed.remove(&member);
        }
        if let Some((_, old)) = state.members.get(&member) {
            if *old == key {
                return;
            }
            self.left_locked(&mut state, &room, id, false);
        }
        if state.members.len() >= MAX_PRESENCE_MEMBERSHIPS {
            tracing::warn!(%room, "too many memberships counted: a join makes no presence event");
            return;
        }
        state.members.insert(member, (origin.into(), key.clone()));
        let entry = state.keys.entry((room.clone(), key.clone())).or_default();
        entry.present += 1;
        // A leave still waiting means the key never went away for the others.
        if entry.present == 1 && entry.leaving.take().is_none() {
            self.emit(room, key, PresenceEventKind::Joined);
        }
    }

    /// A connection left `room` (or closed): its key leaves after the delay unless another
    /// of its connections is present or arrives in time.
    pub(crate) fn left(self: &Arc<Self>, room: &str, id: &ConnectionId) {
        let room: Arc<str> = room.into();
        let mut state = self.state();
        self.left_locked(&mut state, &room, id, false);
    }

    /// The hub `origin` starts listing all its members (after which its members not listed
    /// are gone: it may have lost the messages saying so).
    pub(crate) fn snapshot_begins(&self, origin: &str) {
        let mut state = self.state();
        let members: HashSet<Member> = state
            .members
            .iter()
            .filter(|(_, (of, _))| **of == *origin)
            .map(|(member, _)| member.clone())
            .collect();
        state.snapshots.insert(origin.into(), members);
    }

    /// The hub `origin` has listed all its members: those it did not list leave (after the
    /// delay, as any leave).
    pub(crate) fn snapshot_ends(self: &Arc<Self>, origin: &str) {
        let mut state = self.state();
        let Some(unconfirmed) = state.snapshots.remove(origin) else {
            return;
        };
        for (room, id) in unconfirmed {
            self.left_locked(&mut state, &room, &id, false);
        }
    }

    /// Members of hubs other than `own` that are not in `live` leave now, without a
    /// further delay (their instance stopped sending heartbeats).
    pub(crate) fn retain_origins(self: &Arc<Self>, own: &str, live: &[Arc<str>]) {
        let mut state = self.state();
        state
            .snapshots
            .retain(|of, _| **of == *own || live.contains(of));
        let gone: Vec<Member> = state
            .members
            .iter()
            .filter(|(_, (of, _))| **of != *own && !live.contains(of))
            .map(|(member, _)| member.clone())
            .collect();
        if !gone.is_empty() {
            tracing::info!(members = gone.len(), "members of lost instances left");
        }
        for (room, id) in gone {
            self.left_locked(&mut state, &room, &id, true);
        }
    }

    fn left_locked(
        self: &Arc<Self>,
        state: &mut State,
        room: &Arc<str>,
        id: &ConnectionId,
        now: bool,
    ) {
        let member = (room.clone(), id.clone());
        let Some((origin, key)) = state.members.remove(&member) else {
            return;
        };
        if let Some(unconfirmed) = state.snapshots.get_mut(&origin) {
            unconfirmed.remove(&member);
        }
        let index = (room.clone(), key);
        let Some(entry) = state.keys.get_mut(&index) else {
            return;
        };
        entry.present = entry.present.saturating_sub(1);
        if entry.present > 0 {
            return;
        }
        let delay = state.leave_delay.unwrap_or(DEFAULT_PRESENCE_LEAVE_DELAY);
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !now && !delay.is_zero() => {
                state.next_leave += 1;
                let number = state.next_leave;
                entry.leaving = Some(number);
                let tracker = Arc::downgrade(self);
                runtime.spawn(leave_later(tracker, index, number, delay));
            }
            // Without a runtime there is no timer: the leave is reported at once.
            _ => {
                state.keys.remove(&index);
                let (room, key) = index;
                self.emit(room, key, PresenceEventKind::Left);
            }
        }
    }

    /// The leave numbered `number` is due: reported unless the key came back meanwhile.
    fn leave_due(&self, index: RoomKey, number: u64) {
        let mut state = self.state();
        let due = state
            .keys
            .get(&index)
            .is_some_and(|key| key.present == 0 && key.leaving == Some(number));
        if due {
            state.keys.remove(&index);
            let (room, key) = index;
            self.emit(room, key, PresenceEventKind::Left);
        }
    }

    /// Sent under the state's lock, so every subscriber sees events in the order of the
    /// changes. Nobody listening is not an error.
    fn emit(&self, room: Arc<str>, key: Arc<str>, kind: PresenceEventKind) {
        tracing::debug!(%room, %key, ?kind, "presence");
        let _ = self.events.send(PresenceEvent { room, key, kind });
    }
}

async fn leave_later(tracker: Weak<Tracker>, index: RoomKey, number: u64, delay: Duration) {
    tokio::time::sleep(delay).await;
    if let Some(tracker) = tracker.upgrade() {
        tracker.leave_due(index, number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(events: &mut PresenceEvents) -> Vec<(String, PresenceEventKind)> {
        std::iter::from_fn(|| events.try_recv())
            .map(|e| (e.key.to_string(), e.kind))
            .collect()
    }

    #[test]
    fn keys_join_once_and_leave_with_their_last_connection() {
        let tracker = Tracker::new();
        let mut events = tracker.subscribe();
        let (a, b) = (ConnectionId::from("n-1"), ConnectionId::from("n-2"));
        tracker.joined("n/1", "lobby", &a, "ann");
        tracker.joined("n/1", "lobby", &b, "ann");
        tracker.joined("n/1", "lobby", &b, "ann");
        assert_eq!(
            drain(&mut events),
            [("ann".into(), PresenceEventKind::Joined)]
        );
        // No runtime: leaves are reported at once.
        tracker.left("lobby", &a);
        assert!(drain(&mut events).is_empty());
        tracker.left("lobby", &b);
        tracker.left("lobby", &b);
        assert_eq!(
            drain(&mut events),
            [("ann".into(), PresenceEventKind::Left)]
        );
    }

    #[test]
    fn a_lost_origin_takes_only_its_members() {
        let tracker = Tracker::new();
        let mut events = tracker.subscribe();
        tracker.joined("n/1", "lobby", &ConnectionId::from("n-1"), "ann");
        tracker.joined("m/1", "lobby", &ConnectionId::from("m-1"), "bob");
        tracker.joined("m/1", "lobby", &ConnectionId::from("m-2"), "ann");
        drain(&mut events);
        tracker.retain_origins("n/1", &["x/1".into()]);
        assert_eq!(
            drain(&mut events),
            [("bob".into(), PresenceEventKind::Left)]
        );
    }

    #[test]
    fn a_snapshot_removes_the_members_it_does_not_list() {
        let tracker = Tracker::new();
        let mut events = tracker.subscribe();
        let (a, b) = (ConnectionId::from("m-1"), ConnectionId::from("m-2"));
        tracker.joined("m/1", "lobby", &a, "ann");
        tracker.joined("m/1", "lobby", &b, "bob");
        drain(&mut events);
        // The leave of bob was lost; the snapshot lists ann only, and carl, new.
        tracker.snapshot_begins("m/1");
        tracker.joined("m/1", "lobby", &a, "ann");
        tracker.joined("m/1", "lobby", &ConnectionId::from("m-3"), "carl");
        tracker.snapshot_ends("m/1");
        assert_eq!(
            drain(&mut events),
            [
                ("carl".into(), PresenceEventKind::Joined),
                ("bob".into(), PresenceEventKind::Left)
            ]
        );
        // An end without a beginning changes nothing.
        tracker.snapshot_ends("m/1");
        assert!(drain(&mut events).is_empty());
    }

    #[tokio::test]
    async fn a_return_within_the_delay_makes_no_events() {
        let delay = Duration::from_millis(300);
        let tracker = Tracker::new();
        tracker.set_leave_delay(delay);
        let mut events = tracker.subscribe();
        tracker.joined("n/1", "lobby", &ConnectionId::from("n-1"), "ann");
        assert_eq!(drain(&mut events).len(), 1);
        tracker.left("lobby", &ConnectionId::from("n-1"));
        tracker.joined("n/1", "lobby", &ConnectionId::from("n-2"), "ann");
        tokio::time::sleep(delay * 2).await;
        assert!(drain(&mut events).is_empty());
        tracker.left("lobby", &ConnectionId::from("n-2"));
        assert!(drain(&mut events).is_empty());
        let left = tokio::time::timeout(delay * 10, events.recv()).await;
        let left = left.ok().flatten().map(|e| (e.key.to_string(), e.kind));
        assert_eq!(left, Some(("ann".into(), PresenceEventKind::Left)));
    }
}
