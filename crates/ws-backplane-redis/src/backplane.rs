use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use redis::{
    AsyncCommands as _, IntoConnectionInfo as _, ProtocolVersion, PushInfo, PushKind, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::{sync::mpsc, task::JoinHandle};
use ws_context::{
    Backplane, BackplaneError, BackplaneFuture, BackplaneStatus, Envelope, Inbound, Target,
};

use crate::{
    metrics as m,
    wire::{self, Body, Frame, Position},
};

/// Default time between heartbeats; a hub is dropped from [`RedisBackplane::nodes`] after
/// three missed ones.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default channel prefix.
pub const DEFAULT_PREFIX: &str = "gofrws";
/// Default capacity of the outgoing and incoming queues, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;
/// How long a publish, subscribe or health probe may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a disconnected backplane checks whether Redis is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Most publishes sent to Redis in one pipeline.
const BATCH: usize = 256;
/// Most channels whose numbering a sender keeps; past it, every count starts a new stream.
const MAX_NUMBERED_CHANNELS: usize = 65_536;
/// Longest the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`RedisBackplane`] behaves; every instance of an app should use the same.
///
/// ```
/// use std::time::Duration;
/// let settings = ws_backplane_redis::Settings::default()
///     .prefix("chat")
///     .heartbeat(Duration::from_millis(500));
/// let backplane = ws_backplane_redis::RedisBackplane::with_settings(settings);
/// # let _ = backplane;
/// ```
#[derive(Debug, Clone)]
pub struct Settings {
    prefix: String,
    heartbeat: Duration,
    queue_capacity: usize,
}

impl Default for Settings {
    /// Prefix `gofrws`, heartbeat every 2 s, queues of 16,384 messages.
    fn default() -> Self {
        Settings {
            prefix: DEFAULT_PREFIX.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }
}

impl Settings {
    /// Sets the prefix of every channel name (default `gofrws`), so apps sharing a Redis
    /// stay apart.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the time between heartbeats (default 2 s, at least 10 ms). Other instances drop
    /// this one after three missed heartbeats.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(10));
        self
    }

    /// Sets the capacity of the outgoing and incoming queues (default 16,384). A publish
    /// that finds the outgoing queue full fails at once; a message from Redis that finds the
    /// incoming queue full is dropped; both are counted.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }
}

/// Why [`RedisBackplane::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackplaneError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL given, without its password.
        url: String,
        /// What the client said.
        source: redis::RedisError,
    },
    /// Redis did not answer.
    #[error("cannot reach Redis at {url}: {reason}")]
    Connect {
        /// The URL given, without its password.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// [`connect`](RedisBackplane::connect) was called before a hub was built with the
    /// backplane, so there is nowhere to deliver what other instances send.
    #[error("the backplane is not attached to a hub yet: build the hub with it first")]
    NotAttached,
    /// [`connect`](RedisBackplane::connect) was called twice.
    #[error("the backplane is already connected")]
    AlreadyConnected,
}

/// A [`Backplane`] over Redis pub/sub: rooms, broadcasts, send-to-id and close-by-id reach
/// every instance of an app connected to the same Redis.
///
/// Build a hub with it, then [`connect`](Self::connect); until then (or without a call to
/// it) it behaves as the in-process default. Cloning is cheap; clones share one connection.
/// The background tasks stop when the last clone is dropped or on
/// [`disconnect`](Self::disconnect).
///
/// Defaults: see [`Settings`].
///
/// ```no_run
/// use ws_backplane_redis::RedisBackplane;
/// use ws_context::ConnectionHub;
///
/// # async fn demo() -> Result<(), ws_backplane_redis::RedisBackplaneError> {
/// let backplane = RedisBackplane::new();
/// let hub = ConnectionHub::with_backplane(backplane.clone());
/// backplane.connect("redis://127.0.0.1:6379").await?;
/// // Hand `hub` to the endpoints as usual.
/// # let _ = hub; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
    tasks: Arc<Tasks>,
}

#[derive(Debug)]
struct Shared {
    prefix: String,
    heartbeat: Duration,
    queue_capacity: usize,
    inbound: OnceLock<Inbound>,
    link: OnceLock<Link>,
    up: AtomicBool,
    /// The numbering of each channel this hub sends on; the lock also keeps queue order equal
    /// to number order.
    numbering: Mutex<Numbering>,
    /// Rooms this instance has members in: subscribed again after Redis comes back.
    interests: Mutex<HashSet<String>>,
    /// Serialises SUBSCRIBE and UNSUBSCRIBE so a leave never overtakes a later join.
    subscribing: tokio::sync::Mutex<()>,
    /// Last heartbeat from each live hub, and the interval it promised.
    nodes: Mutex<HashMap<Arc<str>, (Instant, Duration)>>,
}

/// What exists once connected.
#[derive(Debug)]
struct Link {
    url: String,
    manager: ConnectionManager,
    outgoing: mpsc::Sender<(String, Bytes)>,
}

/// Sequence numbers per channel, in streams: a forgotten channel restarts in a new stream,
/// which receivers take as a fresh start rather than as duplicates.
#[derive(Debug, Default)]
struct Numbering {
    next_stream: u32,
    channels: HashMap<String, Position>,
}

impl Numbering {
    fn next(&mut self, channel: &str) -> Position {
        if let Some(position) = self.channels.get_mut(channel) {
            position.seq += 1;
            return *position;
        }
        if self.channels.len() >= MAX_NUMBERED_CHANNELS {
            self.channels.clear();
        }
        self.next_stream = self.next_stream.wrapping_add(1);
        let position = Position {
            stream: self.next_stream,
            seq: 1,
        };
        self.channels.insert(channel.to_owned(), position);
        position
    }
}

#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in lock(&self.0).drain(..) {
            task.abort();
        }
    }
}

impl Default for RedisBackplane {
    fn default() -> Self {
        RedisBackplane::new()
    }
}

impl RedisBackplane {
    /// A backplane with the default [`Settings`], not connected yet.
    pub fn new() -> Self {
        RedisBackplane::with_settings(Settings::default())
    }

    /// A backplane with these settings, not connected yet.
    pub fn with_settings(settings: Settings) -> Self {
        RedisBackplane {
            shared: Arc::new(Shared {
                prefix: settings.prefix,
                heartbeat: settings.heartbeat,
                queue_capacity: settings.queue_capacity,
                inbound: OnceLock::new(),
                link: OnceLock::new(),
                up: AtomicBool::new(false),
                numbering: Mutex::default(),
                interests: Mutex::default(),
                subscribing: tokio::sync::Mutex::new(()),
                nodes: Mutex::default(),
            }),
            tasks: Arc::default(),
        }
    }

    /// Connects to Redis (RESP3 is selected whatever the URL says), subscribes to the
    /// broadcast channel and this node's channel, and starts the reader, publisher and
    /// heartbeat tasks. Waits at most 5 s for Redis.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped after connecting, the backplane stays unusable.
    pub async fn connect(&self, url: &str) -> Result<(), RedisBackplaneError> {
        let shared = &self.shared;
        let Some(inbound) = shared.inbound.get() else {
            return Err(RedisBackplaneError::NotAttached);
        };
        if shared.link.get().is_some() {
            return Err(RedisBackplaneError::AlreadyConnected);
        }
        let shown = redact(url);
        let info = url
            .into_connection_info()
            .map_err(|source| RedisBackplaneError::Url {
                url: shown.clone(),
                source,
            })?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        // Small frames, sent as they come: Nagle's algorithm would hold them for an ACK.
        let info = info
            .set_redis_settings(settings)
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|source| RedisBackplaneError::Url {
            url: shown.clone(),
            source,
        })?;

        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(shared.queue_capacity);
        let config = ConnectionManagerConfig::new()
            .set_push_sender(move |push: PushInfo| {
                push_tx.try_send(push).map_err(|_| {
                    metrics::counter!(m::OVERFLOW).increment(1);
                })
            })
            .set_automatic_resubscription()
            // Retry quickly while Redis is away, so delivery resumes soon after it answers;
            // once the retries run out, the next probe starts another round.
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(10)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let connect_error = |reason: String| RedisBackplaneError::Connect {
            url: shown.clone(),
            reason,
        };
        let mut manager = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_error(e.to_string()))?;
        let own_node = node_of(inbound.origin());
        manager
            .subscribe(&[shared.all_channel(), shared.node_channel(own_node)])
            .await
            .map_err(|e| connect_error(e.to_string()))?;

        let (outgoing, outgoing_rx) = mpsc::channel(shared.queue_capacity);
        let link = Link {
            url: shown.clone(),
            manager: manager.clone(),
            outgoing,
        };
        if shared.link.set(link).is_err() {
            return Err(RedisBackplaneError::AlreadyConnected);
        }
        shared.up.store(true, Ordering::Release);
        shared.seen(inbound.origin().into(), shared.heartbeat);
        let tasks = [
            tokio::spawn(read(shared.clone(), inbound.clone(), push_rx)),
            tokio::spawn(publish_queued(shared.clone(), manager.clone(), outgoing_rx)),
            tokio::spawn(heartbeat(shared.clone(), inbound.origin().into(), manager)),
        ];
        lock(&self.tasks.0).extend(tasks);
        tracing::info!(redis = %shown, origin = inbound.origin(), "joined the cluster");
        Ok(())
    }

    /// Stops the background tasks: no more heartbeats, deliveries or publishes. The other
    /// instances drop this one after three missed heartbeats.
    pub fn disconnect(&self) {
        for task in lock(&self.tasks.0).drain(..) {
            task.abort();
        }
        self.shared.up.store(false, Ordering::Release);
    }

    /// The channel a room's deliveries travel on: `<prefix>:room:<room>`.
    pub fn room_channel(&self, room: &str) -> String {
        self.shared.room_channel(room)
    }
}

impl Backplane for RedisBackplane {
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        let shared = &self.shared;
        let Some(link) = shared.link.get() else {
            // Not connected: behave as the in-process default.
            return match envelope.target {
                Target::Connection(_) => Err(BackplaneError::NoRoute),
                _ => Ok(()),
            };
        };
        let channel = match &envelope.target {
            Target::Room(room) => shared.room_channel(room),
            Target::Connection(id) => shared.node_channel(node_of(id.as_str())),
            Target::All => shared.all_channel(),
            // A kind of target this version does not know how to route.
            _ => return Err(BackplaneError::NoRoute),
        };
        let body = Body::Delivery {
            target: envelope.target,
            message: envelope.message,
        };
        let mut numbering = lock(&shared.numbering);
        // Numbered even when refused, so receivers see the gap.
        let position = numbering.next(&channel);
        let frame = wire::encode(&envelope.origin, position, now_us(), &body);
        let result = if !shared.up.load(Ordering::Acquire) {
            Err(BackplaneError::Unavailable(format!(
                "Redis at {} is unreachable",
                link.url
            )))
        } else {
            link.outgoing
                .try_send((channel, frame))
                .map_err(|_| BackplaneError::Unavailable("publish queue is full".to_owned()))
        };
        drop(numbering);
        if result.is_err() {
            metrics::counter!(m::PUBLISH_ERRORS).increment(1);
        }
        result
    }

    fn join_interest(&self, room: &str) -> BackplaneFuture<'_> {
        let room = room.to_owned();
        Box::pin(async move {
            let shared = &self.shared;
            let Some(link) = shared.link.get() else {
                return Ok(());
            };
            lock(&shared.interests).insert(room.clone());
            let _order = shared.subscribing.lock().await;
            let mut manager = link.manager.clone();
            match tokio::time::timeout(
                COMMAND_TIMEOUT,
                manager.subscribe(shared.room_channel(&room)),
            )
            .await
            {
                Ok(Ok(())) => Ok(()),
                // Kept in the interests: subscribed again once Redis is back.
                Ok(Err(error)) => Err(BackplaneError::Unavailable(error.to_string())),
                Err(_) => Err(BackplaneError::Unavailable(
                    "SUBSCRIBE timed out".to_owned(),
                )),
            }
        })
    }

    fn leave_interest(&self, room: &str) {
        let shared = self.shared.clone();
        if shared.link.get().is_none() {
            return;
        }
        lock(&shared.interests).remove(room);
        // Bounded memory: the room's numbering goes with its last member (a later send starts
        // a new stream).
        lock(&shared.numbering)
            .channels
            .remove(&shared.room_channel(room));
        let room = room.to_owned();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let _order = shared.subscribing.lock().await;
            // A join since the leave wants the room again.
            if lock(&shared.interests).contains(&room) {
                return;
            }
            if let Some(link) = shared.link.get() {
                let mut manager = link.manager.clone();
                let channel = shared.room_channel(&room);
                if let Ok(Err(error)) =
                    tokio::time::timeout(COMMAND_TIMEOUT, manager.unsubscribe(&channel)).await
                {
                    tracing::debug!(%error, channel, "UNSUBSCRIBE failed");
                }
            }
        });
    }

    fn attach(&self, inbound: Inbound) {
        if self.shared.inbound.set(inbound).is_err() {
            tracing::warn!("a RedisBackplane serves one hub; the second hub gets nothing");
        }
    }

    fn status(&self) -> BackplaneStatus {
        if self.shared.link.get().is_none() {
            BackplaneStatus::Standalone
        } else if self.shared.up.load(Ordering::Acquire) {
            BackplaneStatus::Up
        } else {
            BackplaneStatus::Down
        }
    }

    fn nodes(&self) -> Vec<Arc<str>> {
        let mut nodes = self.shared.live_nodes();
        nodes.sort();
        nodes
    }
}

impl Shared {
    fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn seen(&self, origin: Arc<str>, interval: Duration) {
        lock(&self.nodes).insert(origin, (Instant::now(), interval));
    }

    /// Live hubs; forgets those that missed three heartbeats.
    fn live_nodes(&self) -> Vec<Arc<str>> {
        let mut nodes = lock(&self.nodes);
        nodes.retain(|_, (last, interval)| last.elapsed() <= *interval * 3);
        metrics::gauge!(m::NODES).set(nodes.len() as f64);
        nodes.keys().cloned().collect()
    }

    fn set_down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(reason = %why, "lost Redis: cross-instance delivery paused");
        }
    }
}

/// The single reader: everything from Redis arrives here, in order, and is delivered in order.
async fn read(shared: Arc<Shared>, inbound: Inbound, mut pushes: mpsc::Receiver<PushInfo>) {
    // Last position seen per (origin, channel).
    let mut last: HashMap<(Arc<str>, Bytes), Position> = HashMap::new();
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::Message => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (
                    data.next().and_then(bytes_of),
                    data.next().and_then(bytes_of),
                ) else {
                    continue;
                };
                let frame = match wire::decode(payload) {
                    Ok(frame) => frame,
                    Err(error) => {
                        metrics::counter!(m::INVALID).increment(1);
                        tracing::warn!(%error, "dropped a frame from Redis");
                        continue;
                    }
                };
                if *frame.origin == *inbound.origin() {
                    continue;
                }
                deliver(&shared, &inbound, &mut last, channel, frame).await;
            }
            PushKind::Disconnection => shared.set_down(&"connection closed"),
            PushKind::Unsubscribe => {
                // Left the channel on purpose: a later join starts its numbering afresh.
                if let Some(channel) = push.data.into_iter().next().and_then(bytes_of) {
                    last.retain(|(_, c), _| *c != channel);
                }
            }
            _ => {}
        }
    }
}

async fn deliver(
    shared: &Shared,
    inbound: &Inbound,
    last: &mut HashMap<(Arc<str>, Bytes), Position>,
    channel: Bytes,
    frame: Frame,
) {
    let Frame {
        origin,
        position,
        sent_at_us,
        body,
    } = frame;
    let (target, message) = match body {
        Body::Heartbeat { interval } => {
            shared.seen(origin, interval);
            return;
        }
        Body::Delivery { target, message } => (target, message),
    };
    match last.entry((origin.clone(), channel)) {
        // First from this sender here, or a new stream: nothing to compare with.
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(position);
        }
        std::collections::hash_map::Entry::Occupied(mut entry) => {
            let previous = *entry.get();
            if previous.stream == position.stream {
                if position.seq <= previous.seq {
                    metrics::counter!(m::DUPLICATES).increment(1);
                    return;
                }
                if position.seq > previous.seq + 1 {
                    metrics::counter!(m::GAPS).increment(1);
                    tracing::warn!(
                        %origin,
                        lost = position.seq - previous.seq - 1,
                        "messages from another instance were lost"
                    );
                }
            }
            entry.insert(position);
        }
    }
    metrics::counter!(m::RECEIVED).increment(1);
    let latency = now_us().saturating_sub(sent_at_us);
    metrics::histogram!(m::LATENCY).record(latency as f64 / 1e6);
    inbound
        .deliver(Envelope::new(origin, target, message))
        .await;
}

/// The single publisher: sends queued deliveries in order, many per round trip.
async fn publish_queued(
    shared: Arc<Shared>,
    mut manager: ConnectionManager,
    mut queue: mpsc::Receiver<(String, Bytes)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, frame) in &batch {
            pipe.publish(channel, frame.as_ref()).ignore();
        }
        let sent = batch.len() as u64;
        batch.clear();
        match tokio::time::timeout(COMMAND_TIMEOUT, pipe.exec_async(&mut manager)).await {
            Ok(Ok(())) => metrics::counter!(m::PUBLISHED).increment(sent),
            Ok(Err(error)) => {
                metrics::counter!(m::PUBLISH_ERRORS).increment(sent);
                shared.set_down(&error);
            }
            Err(_) => {
                metrics::counter!(m::PUBLISH_ERRORS).increment(sent);
                shared.set_down(&"PUBLISH timed out");
            }
        }
    }
}

/// Heartbeats while Redis answers; probes it every 200 ms while it does not, and on its
/// return subscribes the rooms again and counts the reconnect.
async fn heartbeat(shared: Arc<Shared>, origin: Arc<str>, mut manager: ConnectionManager) {
    let all = shared.all_channel();
    let node_channel = shared.node_channel(node_of(&origin));
    loop {
        if shared.up.load(Ordering::Acquire) {
            let frame = wire::encode(
                &origin,
                Position { stream: 0, seq: 0 },
                now_us(),
                &Body::Heartbeat {
                    interval: shared.heartbeat,
                },
            );
            let sent: Result<Result<(), _>, _> =
                tokio::time::timeout(COMMAND_TIMEOUT, manager.publish(&all, frame.as_ref())).await;
            match sent {
                Ok(Ok(())) => shared.seen(origin.clone(), shared.heartbeat),
                Ok(Err(error)) => shared.set_down(&error),
                Err(_) => shared.set_down(&"heartbeat timed out"),
            }
            shared.live_nodes();
            tokio::time::sleep(if shared.up.load(Ordering::Acquire) {
                shared.heartbeat
            } else {
                PROBE_INTERVAL
            })
            .await;
        } else {
            let ping = tokio::time::timeout(
                COMMAND_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut manager),
            )
            .await;
            if matches!(ping, Ok(Ok(_))) {
                // The manager resubscribed what Redis had confirmed; rooms joined while it
                // was away are subscribed here (subscribing twice is harmless).
                let mut channels: Vec<String> = lock(&shared.interests)
                    .iter()
                    .map(|room| shared.room_channel(room))
                    .collect();
                channels.push(all.clone());
                channels.push(node_channel.clone());
                let resubscribed = {
                    let _order = shared.subscribing.lock().await;
                    tokio::time::timeout(COMMAND_TIMEOUT, manager.subscribe(&channels)).await
                };
                if matches!(resubscribed, Ok(Ok(()))) {
                    shared.up.store(true, Ordering::Release);
                    metrics::counter!(m::RECONNECTS).increment(1);
                    tracing::info!("Redis is back: cross-instance delivery resumed");
                    continue;
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

/// The node part of a connection id or origin (`<node>-<random>`, `<node>/<hub>`).
fn node_of(id: &str) -> &str {
    id.split(['-', '/']).next().unwrap_or(id)
}

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(bytes.into()),
        Value::SimpleString(text) => Some(text.into_bytes().into()),
        _ => None,
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves its data consistent: recover from a poisoned lock.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_part_of_ids_and_origins() {
        assert_eq!(node_of("00ab-12"), "00ab");
        assert_eq!(node_of("00ab/1"), "00ab");
        assert_eq!(node_of("plain"), "plain");
    }

    #[test]
    fn a_forgotten_channel_restarts_in_a_new_stream() {
        let mut numbering = Numbering::default();
        let first = numbering.next("a");
        assert_eq!(numbering.next("a").seq, first.seq + 1);
        assert_eq!(numbering.next("b").seq, 1);
        numbering.channels.remove("a");
        let again = numbering.next("a");
        assert_eq!(again.seq, 1);
        assert_ne!(again.stream, first.stream);
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:secret@h:1/"), "redis://***@h:1/");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
    }
}
