//! [`RedisBackplane`]: the hub's [`Backplane`](ws_context::Backplane) over Redis pub/sub, its
//! [`Settings`] (checked by [`SettingsBuilder::build`]), its three tasks (reader, publisher,
//! heartbeat and probe) and what it counts.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    hash::{BuildHasher as _, Hasher as _},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use redis::{
    AsyncCommands as _, IntoConnectionInfo as _, ProtocolVersion, PushInfo, PushKind, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
};
use tokio::{sync::mpsc, task::JoinHandle};
use ws_context::{
    Appended, Backplane, BackplaneError, BackplaneFuture, BackplaneStatus, ConnectionId, Envelope,
    HistoryEntry, HistoryFuture, Inbound, Message, PresenceMember, RecoveryError, RoomPosition,
    Target,
};

use crate::{
    connection::{self, Conn},
    history::{self, AppendReply, RoomKeys, Script, SinceReply},
    metrics as m,
    wire::{self, Body, Frame, Key, Position, Sync, WireError},
};

/// Default time between heartbeats; a hub is dropped from [`RedisBackplane::nodes`] after
/// three missed ones.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default channel prefix.
pub const DEFAULT_PREFIX: &str = "gofrws";
/// Default capacity of the outgoing and incoming queues, in messages.
pub const DEFAULT_QUEUE_MESSAGES: usize = 16_384;
/// Default largest payload carried between instances: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;
/// Largest [`SettingsBuilder::queue_capacity`], in messages.
pub const MAX_QUEUE_MESSAGES: usize = 1 << 24;
/// Largest [`SettingsBuilder::max_payload`]: 1 GiB (the frame counts it in 32 bits).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// How long a publish, subscribe or health probe may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a pipeline of publishes may take (up to [`BATCH`] of them, each up to the
/// payload limit) before its messages count as failed and Redis as down.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a disconnected backplane checks whether Redis is back.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Most publishes sent to Redis in one pipeline.
const BATCH: usize = 256;
/// Most channels whose numbering a sender keeps; past it, every count starts a new stream.
/// Also the most (sender, channel) pairs a receiver remembers.
const MAX_NUMBERED_CHANNELS: usize = 65_536;
/// How far behind the newest number a receiver still tells duplicates from late arrivals.
const WINDOW: u64 = 32;
/// Longest the first connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a history script (append, position, recovery read) may take.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a room's history epoch and offset outlive its last message or join: a
/// client away for less can still be told exactly what it missed (or that it is too old).
pub const DEFAULT_EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a sender whose position was taken keeps the room's next turn.
const TURN: Duration = Duration::from_millis(50);
/// Most rooms whose last position a backplane remembers to guess the next one.
const MAX_GUESSED_ROOMS: usize = 65_536;
/// Most hubs remembered as counted out (forgotten all at once past it).
const MAX_COUNTED_OUT: usize = 4096;

/// Shortest heartbeat interval accepted.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Shortest epoch TTL accepted.
pub const MIN_EPOCH_TTL: Duration = Duration::from_secs(1);
/// Longest channel prefix accepted, in bytes.
pub const MAX_PREFIX_BYTES: usize = 64;

/// A setting value that cannot work, found when the settings are built
/// ([`SettingsBuilder::build`]); the same kinds as the other crates' `ConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count or size setting is out of range.
    #[error("{option} must be between {min} and {max}, got {value}")]
    Size {
        /// The setting's builder method.
        option: &'static str,
        /// The value given.
        value: usize,
        /// Smallest accepted value.
        min: usize,
        /// Largest accepted value.
        max: usize,
    },
    /// A duration setting is shorter than its minimum.
    #[error("{option} must be at least {min:?}, got {value:?}")]
    ShortDuration {
        /// The setting's builder method.
        option: &'static str,
        /// The value given.
        value: Duration,
        /// Shortest accepted value.
        min: Duration,
    },
    /// The channel prefix is empty, too long, or has a character other than ASCII letters,
    /// digits, `.`, `_` and `-` (`:` separates channel parts, `{`/`}` are Redis Cluster
    /// hash tags).
    #[error("prefix must be 1-64 ASCII letters, digits, '.', '_' or '-', got {value:?}")]
    Prefix {
        /// The value given.
        value: String,
    },
}

/// How a [`RedisBackplane`] behaves; every instance of an app should use the same. Made by
/// [`Settings::builder`] (whose [`build`](SettingsBuilder::build) checks every value) or
/// [`Settings::default`].
///
/// ```
/// use std::time::Duration;
/// let settings = ws_backplane_redis::Settings::builder()
///     .prefix("chat")
///     .heartbeat(Duration::from_millis(500))
///     .build()?;
/// let backplane = ws_backplane_redis::RedisBackplane::with_settings(settings);
/// # let _ = backplane;
/// # Ok::<(), ws_backplane_redis::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Settings {
    prefix: String,
    heartbeat: Duration,
    queue_capacity: usize,
    max_payload: usize,
    secret: Option<Secret>,
    tls_root_ca: Option<Vec<u8>>,
    epoch_ttl: Duration,
}

/// The shared secret's key; never printed.
#[derive(Clone)]
struct Secret(Key);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Default for Settings {
    /// Prefix `gofrws`, heartbeat every 2 s, queues of 16,384 messages, payloads up to
    /// 16 MiB, no shared secret, the webpki roots for `rediss://`.
    fn default() -> Self {
        Settings {
            prefix: DEFAULT_PREFIX.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            queue_capacity: DEFAULT_QUEUE_MESSAGES,
            max_payload: DEFAULT_MAX_PAYLOAD,
            secret: None,
            tls_root_ca: None,
            epoch_ttl: DEFAULT_EPOCH_TTL,
        }
    }
}

impl Settings {
    /// Settings starting from the defaults.
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder(Settings::default())
    }
}

/// Sets [`Settings`] one by one; [`build`](Self::build) checks them.
#[derive(Debug, Clone)]
pub struct SettingsBuilder(Settings);

impl SettingsBuilder {
    /// Sets the prefix of every channel name (default `gofrws`), so apps sharing a Redis
    /// stay apart: pub/sub ignores database numbers, so two apps with one prefix hear each
    /// other even on different databases. gofr-app sets it from `APP_NAME`. 1-64 ASCII
    /// letters, digits, `.`, `_` or `-`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.prefix = prefix.into();
        self
    }

    /// Signs every envelope with HMAC-SHA256 under this shared secret, and drops (and
    /// counts) every envelope that is unsigned or whose signature does not match. Every
    /// instance of the app must use the same secret. The signature also covers the channel
    /// name, so a signed envelope cannot be replayed onto another room or node.
    ///
    /// Without a secret, anyone who can `PUBLISH` on the Redis can inject well-formed
    /// envelopes under the app's prefix.
    ///
    /// ```
    /// let settings = ws_backplane_redis::Settings::builder()
    ///     .secret("a long random string")
    ///     .build()?;
    /// # let _ = settings;
    /// # Ok::<(), ws_backplane_redis::ConfigError>(())
    /// ```
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.0.secret = Some(Secret(wire::key(secret.as_ref())));
        self
    }

    /// Sets the largest payload carried between instances (default 16 MiB): larger ones are
    /// not published (the local delivery still happens), and received ones are dropped and
    /// counted. At least 1 byte, at most 1 GiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.0.max_payload = bytes;
        self
    }

    /// Trusts this CA (PEM) for `rediss://` URLs instead of the webpki roots, as for a Redis
    /// with a self-signed or private certificate.
    pub fn tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.0.tls_root_ca = Some(pem.into());
        self
    }

    /// Sets how long a room's history epoch and last offset are kept after its last
    /// message or join (default 24 h, at least 1 s). The messages themselves are kept as
    /// long as the hub's history limits say
    /// ([`ConnectionHub::set_history_limits`](ws_context::ConnectionHub::set_history_limits));
    /// a client whose position is older than the kept messages is told `TooOld`, one whose
    /// epoch is gone `EpochChanged`.
    pub fn epoch_ttl(mut self, ttl: Duration) -> Self {
        self.0.epoch_ttl = ttl;
        self
    }

    /// Sets the time between heartbeats (default 2 s, at least 10 ms). Other instances drop
    /// this one after three missed heartbeats.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.0.heartbeat = interval;
        self
    }

    /// Sets the capacity of the outgoing and incoming queues (default 16,384, at most
    /// [`MAX_QUEUE_MESSAGES`]). A publish
    /// that finds the outgoing queue full fails at once; a message from Redis that finds the
    /// incoming queue full is dropped; both are counted.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.0.queue_capacity = capacity;
        self
    }

    /// Checks every value and gives the settings.
    pub fn build(self) -> Result<Settings, ConfigError> {
        let s = &self.0;
        let valid_prefix = (1..=MAX_PREFIX_BYTES).contains(&s.prefix.len())
            && s.prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_prefix {
            return Err(ConfigError::Prefix {
                value: s.prefix.clone(),
            });
        }
        for (option, value, min) in [
            ("heartbeat", s.heartbeat, MIN_HEARTBEAT),
            ("epoch_ttl", s.epoch_ttl, MIN_EPOCH_TTL),
        ] {
            if value < min {
                return Err(ConfigError::ShortDuration { option, value, min });
            }
        }
        for (option, value, max) in [
            ("queue_capacity", s.queue_capacity, MAX_QUEUE_MESSAGES),
            ("max_payload", s.max_payload, MAX_PAYLOAD),
        ] {
            if !(1..=max).contains(&value) {
                return Err(ConfigError::Size {
                    option,
                    value,
                    min: 1,
                    max,
                });
            }
        }
        Ok(self.0)
    }
}

/// Why [`RedisBackplane::connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackplaneError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL {url:?}: {reason}")]
    Url {
        /// The URL given, without its password.
        url: String,
        /// What the client said (a text: the Redis client's types stay out of our API).
        reason: String,
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

/// What a [`RedisBackplane`] has counted since it was built; the same numbers go to the
/// `metrics` facade (see [`describe_metrics`](crate::describe_metrics)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Deliveries Redis accepted for other instances.
    pub published: u64,
    /// Deliveries received from other instances and handed to the hub.
    pub received: u64,
    /// Deliveries that could not be published.
    pub publish_errors: u64,
    /// Breaks in a sender's numbering (messages lost between instances), and room
    /// histories found lost (a new epoch).
    pub gaps: u64,
    /// Deliveries received twice, dropped.
    pub duplicates: u64,
    /// Messages from Redis dropped because the reader's queue was full.
    pub overflow: u64,
    /// Frames dropped for being malformed, too long, on the wrong channel, unsigned or
    /// wrongly signed.
    pub invalid: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    publish_errors: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    overflow: AtomicU64,
    invalid: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
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
    max_payload: usize,
    secret: Option<Secret>,
    tls_root_ca: Option<Vec<u8>>,
    counters: Counters,
    inbound: OnceLock<Inbound>,
    link: OnceLock<Link>,
    up: AtomicBool,
    /// On a cluster: some shard does not answer (rooms on it wait for its failover).
    degraded: AtomicBool,
    /// The numbering of each channel this hub sends on; the lock also keeps queue order equal
    /// to number order.
    numbering: Mutex<Numbering>,
    /// Rooms this instance has members in: subscribed again after Redis comes back.
    interests: Mutex<HashSet<String>>,
    /// Serialises SUBSCRIBE and UNSUBSCRIBE so a leave never overtakes a later join; holds
    /// the rooms whose SUBSCRIBE Redis confirmed (and no UNSUBSCRIBE followed), so a join
    /// waits for the room's subscription in flight rather than sending another.
    subscribing: tokio::sync::Mutex<HashSet<String>>,
    /// Last heartbeat from each live hub, and the interval it promised.
    nodes: Mutex<HashMap<Arc<str>, (Instant, Duration)>>,
    /// Hubs dropped from `nodes` for missing heartbeats (at most `MAX_COUNTED_OUT`): one
    /// heard from again is asked to list its members, which the others dropped.
    counted_out: Mutex<HashSet<Arc<str>>>,
    /// The hub's history limits: (max messages, max age); no shared history while 0.
    history: Mutex<(usize, Duration)>,
    epoch_ttl: Duration,
    /// The last position seen of each room, to guess the next one.
    positions: Mutex<HashMap<String, RoomPosition>>,
}

/// What exists once connected.
#[derive(Debug)]
struct Link {
    url: String,
    manager: Conn,
    outgoing: mpsc::Sender<(String, Bytes)>,
    /// Presence changes, applied in order by one task.
    presence: mpsc::Sender<PresenceChange>,
    connected_at: Instant,
}

/// A change to a room's presence hash `{<prefix>:<room>}:presence` (field: connection id,
/// value: the hub's origin, a tab, the member's info).
#[derive(Debug)]
enum PresenceChange {
    Add {
        key: String,
        id: String,
        value: String,
    },
    Remove {
        key: String,
        id: String,
    },
}

/// Sequence numbers per channel, in streams: a forgotten channel restarts in a new stream,
/// which receivers take as a fresh start rather than as duplicates. Stream numbers start at
/// a random point per process and only grow, so a restarted sender is a new stream too.
#[derive(Debug)]
struct Numbering {
    next_stream: u64,
    channels: HashMap<String, Position>,
}

impl Default for Numbering {
    fn default() -> Self {
        // Random, with room to grow: 2^62 streams before the top bit.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Numbering {
            next_stream: random >> 2,
            channels: HashMap::new(),
        }
    }
}

impl Numbering {
    /// The position the next frame on `channel` gets; taken only by [`commit`](Self::commit).
    fn peek(&mut self, channel: &str) -> Position {
        match self.channels.get(channel) {
            Some(position) => Position {
                stream: position.stream,
                seq: position.seq + 1,
            },
            None => Position {
                stream: self.next_stream + 1,
                seq: 1,
            },
        }
    }

    fn commit(&mut self, channel: &str, position: Position) {
        if position.seq == 1 {
            if self.channels.len() >= MAX_NUMBERED_CHANNELS {
                self.channels.clear();
            }
            self.next_stream = position.stream;
        }
        self.channels.insert(channel.to_owned(), position);
    }

    #[cfg(test)]
    fn next(&mut self, channel: &str) -> Position {
        let position = self.peek(channel);
        self.commit(channel, position);
        position
    }
}

/// What a receiver knows of one sender's numbering on one channel: the stream, the highest
/// number seen and a fingerprint of each of the [`WINDOW`] numbers up to it that arrived.
///
/// A frame is a duplicate only if its number arrived before with the same bytes: without a
/// secret anyone can publish a frame with a real sender's origin and number, and a forged
/// frame must not make the real one with that number look like a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    stream: u64,
    top: u64,
    /// `slots[n % WINDOW]`: fingerprint of number `n` (0: not arrived), for `n` in
    /// `top - WINDOW + 1 ..= top`.
    slots: [u32; WINDOW as usize],
}

/// What a receiver makes of a frame's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Take it; `lost` numbers were skipped just before it.
    Take { lost: u64 },
    /// Seen already: drop it.
    Duplicate,
    /// A new stream, or (without a secret) a number far from the last: numbering starts
    /// again from here, so a forged number cannot silence the real sender.
    Restart,
    /// With a secret, an older stream or a number far behind: a replay, dropped.
    Stale,
}

impl Window {
    fn new(position: Position, fingerprint: u32) -> Self {
        let mut window = Window {
            stream: position.stream,
            top: position.seq,
            slots: [0; WINDOW as usize],
        };
        window.slots[slot(position.seq)] = fingerprint | 1;
        window
    }

    /// Judges a frame at `position` whose bytes have `fingerprint`. `signed`: frames are
    /// authenticated, so numbers cannot be forged and anything old is a replay; otherwise a
    /// number far from the last restarts the window instead of silencing what follows.
    fn check(&mut self, position: Position, fingerprint: u32, signed: bool) -> Verdict {
        let fingerprint = fingerprint | 1;
        if position.stream != self.stream {
            if signed && position.stream < self.stream {
                return Verdict::Stale;
            }
            *self = Window::new(position, fingerprint);
            return Verdict::Restart;
        }
        if position.seq > self.top {
            let ahead = position.seq - self.top;
            if ahead >= WINDOW {
                self.slots = [0; WINDOW as usize];
            } else {
                for n in self.top + 1..position.seq {
                    self.slots[slot(n)] = 0;
                }
            }
            self.slots[slot(position.seq)] = fingerprint;
            self.top = position.seq;
            return Verdict::Take { lost: ahead - 1 };
        }
        if self.top - position.seq < WINDOW {
            let seen = &mut self.slots[slot(position.seq)];
            if *seen == fingerprint || (signed && *seen != 0) {
                return Verdict::Duplicate;
            }
            *seen = fingerprint;
            return Verdict::Take { lost: 0 };
        }
        if signed {
            return Verdict::Stale;
        }
        *self = Window::new(position, fingerprint);
        Verdict::Restart
    }
}

fn slot(seq: u64) -> usize {
    (seq % WINDOW) as usize
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
                max_payload: settings.max_payload,
                secret: settings.secret,
                tls_root_ca: settings.tls_root_ca,
                counters: Counters::default(),
                inbound: OnceLock::new(),
                link: OnceLock::new(),
                up: AtomicBool::new(false),
                degraded: AtomicBool::new(false),
                numbering: Mutex::default(),
                interests: Mutex::default(),
                subscribing: tokio::sync::Mutex::new(HashSet::new()),
                nodes: Mutex::default(),
                counted_out: Mutex::default(),
                history: Mutex::new((0, ws_context::DEFAULT_HISTORY_AGE)),
                epoch_ttl: settings.epoch_ttl,
                positions: Mutex::default(),
            }),
            tasks: Arc::default(),
        }
    }

    /// Connects to Redis (RESP3 is selected whatever the URL says), subscribes to the
    /// broadcast channel and this node's channel, and starts the reader, publisher and
    /// heartbeat tasks. Waits at most 5 s for Redis.
    ///
    /// Several URLs separated by commas name a Redis Cluster (Redis 7 or later): any of its
    /// nodes, the client finds the rest; channels are then sharded (see the crate's
    /// [Redis Cluster](crate#redis-cluster) section).
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
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(shared.queue_capacity);
        let overflow = self.shared.clone();
        let push_sender = move |push: PushInfo| {
            push_tx.try_send(push).map_err(|_| {
                add(&overflow.counters.overflow, 1);
                metrics::counter!(m::OVERFLOW).increment(1);
            })
        };
        let connect_error = |reason: String| RedisBackplaneError::Connect {
            url: shown.clone(),
            reason,
        };
        let url_error = |error: redis::RedisError| RedisBackplaneError::Url {
            url: shown.clone(),
            reason: error.to_string(),
        };
        // Small frames, sent as they come: Nagle's algorithm would hold them for an ACK.
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let tls = shared
            .tls_root_ca
            .as_ref()
            .map(|pem| redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        let mut prober = None;
        let mut manager = match connection::node_urls(url) {
            Some(nodes) => {
                prober = Some(connection::Prober::new(&nodes, tls.clone()).map_err(url_error)?);
                let mut builder = ClusterClientBuilder::new(nodes)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(push_sender)
                    .tcp_settings(tcp)
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(1));
                if let Some(certificates) = tls {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(url_error)?;
                let cluster = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| connect_error(e.to_string()))?;
                Conn::Cluster(cluster)
            }
            None => {
                let info = url.into_connection_info().map_err(url_error)?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let info = info.set_redis_settings(settings).set_tcp_settings(tcp);
                let client = match tls {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates),
                    None => redis::Client::open(info),
                }
                .map_err(url_error)?;
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(push_sender)
                    .set_automatic_resubscription()
                    // Retry quickly while Redis is away, so delivery resumes soon after it
                    // answers; once the retries run out, the next probe starts another round.
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500))
                    .set_number_of_retries(10)
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)));
                let manager = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| connect_error(format!("no answer within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| connect_error(e.to_string()))?;
                Conn::Single(manager)
            }
        };
        let own_node = node_of(inbound.origin());
        manager
            .subscribe(&[shared.all_channel(), shared.node_channel(own_node)])
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        let (outgoing, outgoing_rx) = mpsc::channel(shared.queue_capacity);
        let (presence, presence_rx) = mpsc::channel(shared.queue_capacity);
        let link = Link {
            url: shown.clone(),
            manager: manager.clone(),
            outgoing,
            presence,
            connected_at: Instant::now(),
        };
        if shared.link.set(link).is_err() {
            return Err(RedisBackplaneError::AlreadyConnected);
        }
        shared.up.store(true, Ordering::Release);
        shared.seen(inbound.origin().into(), shared.heartbeat);
        let mut tasks = vec![
            tokio::spawn(read(shared.clone(), inbound.clone(), push_rx)),
            tokio::spawn(publish_queued(shared.clone(), manager.clone(), outgoing_rx)),
            tokio::spawn(apply_presence(manager.clone(), presence_rx)),
            tokio::spawn(heartbeat(
                shared.clone(),
                inbound.origin().into(),
                manager.clone(),
            )),
            tokio::spawn(count_out(shared.clone(), inbound.clone())),
        ];
        if let Some(prober) = prober {
            tasks.push(tokio::spawn(watch_shards(
                shared.clone(),
                inbound.origin().into(),
                prober,
                manager,
            )));
        }
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

    /// The channel a room's deliveries travel on: `{<prefix>:<room>}:room` (the braces are a
    /// Redis Cluster hash tag, shared with the room's keys, so they all hash to one slot).
    pub fn room_channel(&self, room: &str) -> String {
        self.shared.room_channel(room)
    }

    /// The channel of broadcasts and heartbeats: `<prefix>:all`.
    pub fn all_channel(&self) -> String {
        self.shared.all_channel()
    }

    /// The channel of send-to-id and close-by-id for connections of the node `node` (the
    /// part of a connection id before its `-`): `<prefix>:node:<node>`.
    pub fn node_channel(&self, node: &str) -> String {
        self.shared.node_channel(node)
    }

    /// What this backplane has counted so far.
    pub fn stats(&self) -> BackplaneStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BackplaneStats {
            published: get(&c.published),
            received: get(&c.received),
            publish_errors: get(&c.publish_errors),
            gaps: get(&c.gaps),
            duplicates: get(&c.duplicates),
            overflow: get(&c.overflow),
            invalid: get(&c.invalid),
        }
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
        shared.send_numbered(link, channel, &envelope.origin, &body)
    }

    fn join_interest(&self, room: &str) -> BackplaneFuture<'_> {
        let room = room.to_owned();
        Box::pin(async move {
            let shared = &self.shared;
            let Some(link) = shared.link.get() else {
                return Ok(());
            };
            lock(&shared.interests).insert(room.clone());
            let mut subscribed = shared.subscribing.lock().await;
            if subscribed.contains(&room) {
                return Ok(());
            }
            let mut manager = link.manager.clone();
            match tokio::time::timeout(
                COMMAND_TIMEOUT,
                manager.subscribe(&[shared.room_channel(&room)]),
            )
            .await
            {
                Ok(Ok(())) => {
                    subscribed.insert(room);
                    Ok(())
                }
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
            let mut subscribed = shared.subscribing.lock().await;
            // A join since the leave wants the room again.
            if lock(&shared.interests).contains(&room) {
                return;
            }
            subscribed.remove(&room);
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
        } else if !self.shared.up.load(Ordering::Acquire) {
            BackplaneStatus::Down
        } else if self.shared.degraded.load(Ordering::Acquire) {
            BackplaneStatus::Degraded
        } else {
            BackplaneStatus::Up
        }
    }

    fn nodes(&self) -> Vec<Arc<str>> {
        let mut nodes = self.shared.live_nodes();
        nodes.sort();
        nodes
    }

    fn presence_add(&self, room: &str, id: &ConnectionId, info: &str) {
        let Some(link) = self.shared.link.get() else {
            return;
        };
        let Some(inbound) = self.shared.inbound.get() else {
            return;
        };
        // The hub's origin, whose heartbeats say whether the member's instance lives.
        let change = PresenceChange::Add {
            key: self.shared.presence_key(room),
            id: id.as_str().to_owned(),
            value: format!("{}\t{info}", inbound.origin()),
        };
        if link.presence.try_send(change).is_err() {
            tracing::warn!(room, "presence queue full: a join is not listed");
        }
        self.shared.announce_presence(room, id, Some(info));
    }

    fn presence_remove(&self, room: &str, id: &ConnectionId) {
        let Some(link) = self.shared.link.get() else {
            return;
        };
        let change = PresenceChange::Remove {
            key: self.shared.presence_key(room),
            id: id.as_str().to_owned(),
        };
        if link.presence.try_send(change).is_err() {
            tracing::warn!(room, "presence queue full: a leave is not recorded");
        }
        self.shared.announce_presence(room, id, None);
    }

    fn presence(
        &self,
        room: &str,
    ) -> Option<HistoryFuture<'_, Result<Vec<PresenceMember>, BackplaneError>>> {
        let link = self.shared.link.get()?;
        let key = self.shared.presence_key(room);
        Some(Box::pin(async move {
            let shared = &self.shared;
            let mut manager = link.manager.clone();
            let entries: HashMap<String, String> =
                match tokio::time::timeout(HISTORY_TIMEOUT, manager.hgetall(&key)).await {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(error)) => return Err(BackplaneError::Unavailable(error.to_string())),
                    Err(_) => return Err(BackplaneError::TimedOut("HGETALL".to_owned())),
                };
            // Members of an instance that missed three heartbeats are left out (and
            // removed); until this one has been connected that long it cannot tell.
            let judge = link.connected_at.elapsed() > shared.heartbeat * 3;
            let live: HashSet<Arc<str>> = shared.live_nodes().into_iter().collect();
            let mut members = Vec::new();
            let mut dead = Vec::new();
            for (id, value) in entries {
                let Some((origin, info)) = value.split_once('\t') else {
                    dead.push(id);
                    continue;
                };
                if judge && !live.contains(origin) {
                    dead.push(id);
                    continue;
                }
                members.push(PresenceMember::new(ConnectionId::from(id.as_str()), info));
            }
            for id in dead {
                let _ = link.presence.try_send(PresenceChange::Remove {
                    key: key.clone(),
                    id,
                });
            }
            Ok(members)
        }))
    }

    fn shared_history(&self) -> bool {
        self.shared.link.get().is_some() && lock(&self.shared.history).0 > 0
    }

    fn set_history_limits(&self, max_len: usize, max_age: Duration) {
        *lock(&self.shared.history) = (max_len, max_age);
    }

    fn next_position(&self, room: &str) -> Option<RoomPosition> {
        lock(&self.shared.positions)
            .get(room)
            .map(RoomPosition::next)
    }

    fn room_position(&self, room: &str) -> HistoryFuture<'_, Result<RoomPosition, BackplaneError>> {
        let room = room.to_owned();
        Box::pin(async move {
            let shared = &self.shared;
            let mut manager = shared.manager()?;
            let keys = RoomKeys::new(&shared.prefix, &room);
            let args = [
                history::new_epoch().into_bytes(),
                history::millis(shared.epoch_ttl),
            ];
            let reply = run_script(Script::position(), &mut manager, &keys, &args).await?;
            let (epoch, offset) = history::position_reply(reply).ok_or_else(unexpected)?;
            let position = RoomPosition::new(epoch, offset);
            shared.saw(&room, &position);
            Ok(position)
        })
    }

    fn append(
        &self,
        room: &str,
        origin: &str,
        at: RoomPosition,
        message: Message,
    ) -> HistoryFuture<'_, Result<Appended, BackplaneError>> {
        let room = room.to_owned();
        let origin = origin.to_owned();
        Box::pin(async move {
            let shared = &self.shared;
            let mut manager = shared.manager()?;
            let (max_len, max_age) = *lock(&shared.history);
            let channel = shared.room_channel(&room);
            // A position of another history (or none yet): ask for one that cannot match,
            // and learn the real one from the answer.
            let epoch = history::epoch_number(at.epoch()).unwrap_or(0);
            let body = Body::Entry {
                room: room.as_str().into(),
                message,
            };
            let frame = wire::encode(
                &channel,
                &origin,
                Position {
                    stream: epoch,
                    seq: at.offset(),
                },
                now_us(),
                &body,
                shared.key(),
                shared.max_payload,
            )
            .map_err(|error| {
                shared.publish_failed(1);
                BackplaneError::Refused(error.to_string())
            })?;
            let keys = RoomKeys::new(&shared.prefix, &room);
            let args = [
                at.epoch().as_bytes().to_vec(),
                at.offset().to_string().into_bytes(),
                history::new_epoch().into_bytes(),
                frame.to_vec(),
                channel.into_bytes(),
                max_len.max(1).to_string().into_bytes(),
                history::millis(max_age),
                history::millis(shared.epoch_ttl),
                origin.into_bytes(),
                history::millis(TURN),
                manager.publish_command().as_bytes().to_vec(),
            ];
            let reply = run_script(Script::append(), &mut manager, &keys, &args).await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    shared.publish_failed(1);
                    return Err(error);
                }
            };
            match history::append_reply(reply).ok_or_else(unexpected)? {
                AppendReply::At(epoch, offset) => {
                    add(&shared.counters.published, 1);
                    metrics::counter!(m::PUBLISHED).increment(1);
                    let position = RoomPosition::new(epoch, offset);
                    shared.saw(&room, &position);
                    Ok(Appended::At(position))
                }
                AppendReply::Moved(epoch, offset) => {
                    let position = RoomPosition::new(epoch, offset);
                    if let Some(seen) = shared.seen_beyond(&room, &position) {
                        // The answer may just be older than a message of another sender
                        // received meanwhile: only a fresh read behind what was seen is a loss.
                        let args = [
                            history::new_epoch().into_bytes(),
                            history::millis(shared.epoch_ttl),
                        ];
                        let now = run_script(Script::position(), &mut manager, &keys, &args)
                            .await
                            .ok()
                            .and_then(history::position_reply);
                        if let Some((epoch, offset)) = now
                            && epoch == position.epoch()
                            && offset < seen
                        {
                            end_epoch(&mut manager, &keys, &position).await;
                        }
                    }
                    shared.saw(&room, &position);
                    Ok(Appended::Moved(position))
                }
            }
        })
    }

    fn history_since(
        &self,
        room: &str,
        since: &RoomPosition,
    ) -> HistoryFuture<'_, Result<(Vec<HistoryEntry>, RoomPosition), RecoveryError>> {
        let room = room.to_owned();
        let since = since.clone();
        Box::pin(async move {
            let shared = &self.shared;
            let unavailable = |error: BackplaneError| RecoveryError::Unavailable(error.to_string());
            let mut manager = shared.manager().map_err(unavailable)?;
            let (max_len, max_age) = *lock(&shared.history);
            let keys = RoomKeys::new(&shared.prefix, &room);
            let args = [
                since.epoch().as_bytes().to_vec(),
                since.offset().to_string().into_bytes(),
                max_len.saturating_mul(2).max(64).to_string().into_bytes(),
                history::millis(max_age),
            ];
            let reply = run_script(Script::since(), &mut manager, &keys, &args)
                .await
                .map_err(unavailable)?;
            let (last, entries) = match history::since_reply(reply) {
                Some(SinceReply::EpochChanged) => return Err(RecoveryError::EpochChanged),
                Some(SinceReply::TooOld) => return Err(RecoveryError::TooOld),
                Some(SinceReply::Entries(last, entries)) => (last, entries),
                None => return Err(unavailable(unexpected())),
            };
            let channel = shared.room_channel(&room);
            let mut missed = Vec::with_capacity(entries.len());
            let mut expected = since.offset() + 1;
            for (offset, frame) in entries {
                if offset != expected {
                    // Trimmed between the offset check and the read, or not ours.
                    return Err(RecoveryError::TooOld);
                }
                let frame =
                    wire::decode(channel.as_bytes(), frame, shared.key(), shared.max_payload)
                        .map_err(|error| {
                            shared.invalid(error.reason(), &error);
                            RecoveryError::Unavailable(format!(
                                "a history entry is invalid: {error}"
                            ))
                        })?;
                let position = RoomPosition::new(since.epoch(), offset);
                match frame.body {
                    Body::Entry { room: of, message }
                        if *of == *room
                            && history::epoch_text(frame.position.stream) == since.epoch()
                            && frame.position.seq == offset =>
                    {
                        missed.push((position, message));
                    }
                    _ => {
                        shared.invalid(
                            "wrong_channel",
                            &WireError::Invalid("history entry not of its room or position"),
                        );
                        return Err(RecoveryError::Unavailable(
                            "a history entry is not of its room".to_owned(),
                        ));
                    }
                }
                expected += 1;
            }
            if expected != last + 1 {
                return Err(RecoveryError::TooOld);
            }
            Ok((missed, RoomPosition::new(since.epoch(), last)))
        })
    }
}

/// Runs a history script within [`HISTORY_TIMEOUT`].
async fn run_script(
    script: &Script,
    manager: &mut Conn,
    keys: &RoomKeys,
    args: &[Vec<u8>],
) -> Result<Value, BackplaneError> {
    match tokio::time::timeout(HISTORY_TIMEOUT, script.run(manager, keys, args)).await {
        Ok(Ok(value)) => Ok(value),
        // Never reached Redis: nothing happened.
        Ok(Err(error)) if error.is_connection_refusal() => {
            Err(BackplaneError::Unavailable(error.to_string()))
        }
        // Sent, perhaps run, answer lost.
        Ok(Err(error)) if error.is_io_error() || error.is_connection_dropped() => {
            Err(BackplaneError::TimedOut(error.to_string()))
        }
        // Refused by Redis (an error before the script wrote anything).
        Ok(Err(error)) => Err(BackplaneError::Unavailable(error.to_string())),
        Err(_) => Err(BackplaneError::TimedOut(format!(
            "no answer within {HISTORY_TIMEOUT:?}"
        ))),
    }
}

/// Ends a room's epoch whose offsets went back (see [`Shared::seen_beyond`]), if it is still
/// the room's: the next append starts a new one, so members here and elsewhere take the
/// next messages as new rather than as copies of the lost ones, and clients holding
/// positions of the old epoch are told `EpochChanged`. Best effort: if it fails, the next
/// append that finds the offsets behind tries again.
async fn end_epoch(manager: &mut Conn, keys: &RoomKeys, position: &RoomPosition) {
    const END: &str =
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end";
    tracing::warn!(
        key = keys.epoch,
        offset = position.offset(),
        "the room's offsets went back (a failover lost its last messages): a new epoch starts"
    );
    let mut end = redis::cmd("EVAL");
    end.arg(END).arg(1).arg(&keys.epoch).arg(position.epoch());
    if let Ok(Err(error)) = tokio::time::timeout(HISTORY_TIMEOUT, end.exec_async(manager)).await {
        tracing::warn!(%error, "could not end the epoch");
    }
}

/// Redis answered a history script with something that is not the script's answer.
fn unexpected() -> BackplaneError {
    BackplaneError::Unavailable("unexpected answer from a history script".to_owned())
}

impl Shared {
    /// Numbers a frame on its channel and queues it for the publisher; never waits.
    fn send_numbered(
        &self,
        link: &Link,
        channel: String,
        origin: &str,
        body: &Body,
    ) -> Result<(), BackplaneError> {
        let mut numbering = lock(&self.numbering);
        let position = numbering.peek(&channel);
        let frame = match wire::encode(
            &channel,
            origin,
            position,
            now_us(),
            body,
            self.key(),
            self.max_payload,
        ) {
            Ok(frame) => frame,
            Err(error) => {
                // Not numbered: receivers would drop it, so it is no gap.
                drop(numbering);
                self.publish_failed(1);
                return Err(BackplaneError::Refused(error.to_string()));
            }
        };
        // Numbered even when it cannot be sent now, so receivers see the gap.
        numbering.commit(&channel, position);
        let result = if !self.up.load(Ordering::Acquire) {
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
            self.publish_failed(1);
        }
        result
    }

    /// Tells every instance that a connection of this hub joined a room with a presence key
    /// (`Some`) or left it (`None`), on the broadcast channel: every instance counts every
    /// member for its presence events, whether or not it has members in the room.
    fn announce_presence(&self, room: &str, id: &ConnectionId, key: Option<&str>) {
        let (Some(link), Some(inbound)) = (self.link.get(), self.inbound.get()) else {
            return;
        };
        let body = Body::Presence {
            room: room.into(),
            id: id.clone(),
            key: key.map(Arc::from),
        };
        if let Err(error) = self.send_numbered(link, self.all_channel(), inbound.origin(), &body) {
            tracing::warn!(%error, room, "a presence change did not reach the other instances");
        }
    }

    /// Lists every member of this hub to the others, framed by [`Sync::Begin`] and
    /// [`Sync::End`]: a hub met for the first time (or again) counts them, and every hub drops
    /// this one's members it no longer lists (leaves it missed).
    fn announce_members(&self, inbound: &Inbound) {
        self.presence_sync(Sync::Begin);
        inbound.local_presence(|room, id, info| self.announce_presence(room, id, Some(info)));
        self.presence_sync(Sync::End);
    }

    fn presence_sync(&self, step: Sync) {
        let (Some(link), Some(inbound)) = (self.link.get(), self.inbound.get()) else {
            return;
        };
        let body = Body::PresenceSync(step);
        if let Err(error) = self.send_numbered(link, self.all_channel(), inbound.origin(), &body) {
            tracing::warn!(%error, "a presence list did not reach the other instances");
        }
    }

    fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}:room", history::hash_tag(&self.prefix, room))
    }

    /// Remembers the last position seen of a room (a later one of the same epoch, or any
    /// of another epoch). A new epoch means the room's history was lost (Redis restarted
    /// without persistence, say): counted as a gap, since what it held may not have reached
    /// every member.
    fn saw(&self, room: &str, position: &RoomPosition) {
        let mut positions = lock(&self.positions);
        match positions.get_mut(room) {
            Some(known) => {
                if known.epoch() != position.epoch() {
                    add(&self.counters.gaps, 1);
                    metrics::counter!(m::GAPS).increment(1);
                    tracing::warn!(room, "the room's history was lost: a new epoch started");
                    *known = position.clone();
                } else if known.offset() < position.offset() {
                    *known = position.clone();
                }
            }
            None => {
                if positions.len() >= MAX_GUESSED_ROOMS {
                    positions.clear();
                }
                positions.insert(room.to_owned(), position.clone());
            }
        }
    }

    /// The offset this instance saw of a room when it is beyond `now` in the same epoch.
    /// Confirmed by a fresh read, that is Redis with the room's history behind what was
    /// seen: a failover to a replica that had not received the last messages (Redis
    /// replicates asynchronously). Their offsets would be given out again, and every member
    /// that received the lost ones would drop as many new ones as copies.
    fn seen_beyond(&self, room: &str, now: &RoomPosition) -> Option<u64> {
        lock(&self.positions)
            .get(room)
            .filter(|known| known.epoch() == now.epoch() && known.offset() > now.offset())
            .map(RoomPosition::offset)
    }

    /// The connection for history scripts: tried even while the backplane counts as down
    /// (a missed heartbeat on a busy machine is not a lost Redis); the script's own timeout
    /// bounds the wait.
    fn manager(&self) -> Result<Conn, BackplaneError> {
        match self.link.get() {
            Some(link) => Ok(link.manager.clone()),
            None => Err(BackplaneError::Unavailable("not connected".to_owned())),
        }
    }

    fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn presence_key(&self, room: &str) -> String {
        format!("{}:presence", history::hash_tag(&self.prefix, room))
    }

    fn key(&self) -> Option<&Key> {
        self.secret.as_ref().map(|secret| &secret.0)
    }

    fn publish_failed(&self, n: u64) {
        add(&self.counters.publish_errors, n);
        metrics::counter!(m::PUBLISH_ERRORS).increment(n);
    }

    fn invalid(&self, reason: &'static str, error: &dyn fmt::Display) {
        add(&self.counters.invalid, 1);
        metrics::counter!(m::INVALID, "reason" => reason).increment(1);
        tracing::warn!(%error, reason, "dropped a frame from Redis");
    }

    /// Whether a frame's target belongs on the channel it came by: room deliveries on their
    /// room's channel, connection ones on this node's channel for this node's connections,
    /// broadcasts and heartbeats on the broadcast channel.
    fn on_its_channel(&self, channel: &[u8], body: &Body, own_node: &str) -> bool {
        match body {
            Body::Heartbeat { .. }
            | Body::Presence { .. }
            | Body::PresenceSync(_)
            | Body::Delivery {
                target: Target::All,
                ..
            } => channel == self.all_channel().as_bytes(),
            Body::Delivery {
                target: Target::Room(room),
                ..
            }
            | Body::Entry { room, .. } => channel == self.room_channel(room).as_bytes(),
            Body::Delivery {
                target: Target::Connection(id),
                ..
            } => {
                node_of(id.as_str()) == own_node
                    && channel == self.node_channel(own_node).as_bytes()
            }
            Body::Delivery { .. } => false,
        }
    }

    /// Records a heartbeat; true when the hub was not counted alive before.
    fn seen(&self, origin: Arc<str>, interval: Duration) -> bool {
        lock(&self.nodes)
            .insert(origin, (Instant::now(), interval))
            .is_none()
    }

    /// Live hubs; forgets those that missed three heartbeats.
    fn live_nodes(&self) -> Vec<Arc<str>> {
        let mut nodes = lock(&self.nodes);
        let mut counted_out = Vec::new();
        nodes.retain(|origin, (last, interval)| {
            let live = last.elapsed() <= *interval * 3;
            if !live {
                counted_out.push(origin.clone());
            }
            live
        });
        if !counted_out.is_empty() {
            let mut set = lock(&self.counted_out);
            if set.len() + counted_out.len() > MAX_COUNTED_OUT {
                set.clear();
            }
            set.extend(counted_out);
        }
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
    // What each (origin, channel) has sent so far.
    let mut windows: HashMap<(Arc<str>, Bytes), Window> = HashMap::new();
    let own_node = node_of(inbound.origin()).to_owned();
    let fingerprints = std::collections::hash_map::RandomState::new();
    while let Some(push) = pushes.recv().await {
        match push.kind {
            // `smessage`: a sharded channel's, on a cluster.
            PushKind::Message | PushKind::SMessage => {
                let mut data = push.data.into_iter();
                let (Some(channel), Some(payload)) = (
                    data.next().and_then(bytes_of),
                    data.next().and_then(bytes_of),
                ) else {
                    continue;
                };
                let fingerprint = fingerprints.hash_one(&payload) as u32;
                let frame = match wire::decode(&channel, payload, shared.key(), shared.max_payload)
                {
                    Ok(frame) => frame,
                    Err(error) => {
                        shared.invalid(error.reason(), &error);
                        continue;
                    }
                };
                // A room history's messages come back to their sender too: its members get
                // them here, in the history's order.
                if *frame.origin == *inbound.origin() && !matches!(frame.body, Body::Entry { .. }) {
                    continue;
                }
                if !shared.on_its_channel(&channel, &frame.body, &own_node) {
                    shared.invalid(
                        "wrong_channel",
                        &WireError::Invalid("target not on its channel"),
                    );
                    continue;
                }
                deliver(&shared, &inbound, &mut windows, channel, frame, fingerprint);
            }
            PushKind::Disconnection => match shared.link.get() {
                // One node of a cluster: the shard watcher finds out which and for how long.
                Some(link) if link.manager.is_cluster() => {
                    shared.degraded.store(true, Ordering::Release);
                }
                _ => shared.set_down(&"connection closed"),
            },
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                // Left the channel on purpose: a later join starts its numbering afresh.
                if let Some(channel) = push.data.into_iter().next().and_then(bytes_of) {
                    windows.retain(|(_, c), _| *c != channel);
                }
            }
            _ => {}
        }
    }
}

/// Delivers one frame without waiting for any member (see [`Inbound::deliver_now`]).
fn deliver(
    shared: &Shared,
    inbound: &Inbound,
    windows: &mut HashMap<(Arc<str>, Bytes), Window>,
    channel: Bytes,
    frame: Frame,
    fingerprint: u32,
) {
    let Frame {
        origin,
        position,
        sent_at_us,
        body,
        signed,
    } = frame;
    let body = match body {
        Body::Heartbeat { interval } => {
            if shared.seen(origin.clone(), interval) {
                // A hub met (again): it learns this one's members; one that was counted out
                // lists its own, which every hub dropped.
                shared.announce_members(inbound);
                if lock(&shared.counted_out).remove(&origin) {
                    shared.presence_sync(Sync::Request);
                }
            }
            return;
        }
        Body::Delivery { .. } | Body::Presence { .. } | Body::PresenceSync(_) => body,
        Body::Entry { room, message } => {
            // Numbered by the room's history, not by the sender: ordered and deduplicated
            // by the hub on its offset.
            let position = RoomPosition::new(history::epoch_text(position.stream), position.seq);
            shared.saw(&room, &position);
            add(&shared.counters.received, 1);
            metrics::counter!(m::RECEIVED).increment(1);
            let latency = now_us().saturating_sub(sent_at_us);
            metrics::histogram!(m::LATENCY).record(latency as f64 / 1e6);
            inbound.deliver_entry(&room, position, message);
            return;
        }
    };
    let key = (origin.clone(), channel);
    let verdict = match windows.get_mut(&key) {
        Some(window) => window.check(position, fingerprint, signed),
        None => {
            // Bounded memory: forgetting a sender only means starting its numbering afresh.
            if windows.len() >= MAX_NUMBERED_CHANNELS {
                windows.clear();
            }
            windows.insert(key, Window::new(position, fingerprint));
            Verdict::Restart
        }
    };
    match verdict {
        Verdict::Duplicate | Verdict::Stale => {
            add(&shared.counters.duplicates, 1);
            metrics::counter!(m::DUPLICATES).increment(1);
            return;
        }
        Verdict::Take { lost } if lost > 0 => {
            add(&shared.counters.gaps, 1);
            metrics::counter!(m::GAPS).increment(1);
            tracing::warn!(%origin, lost, "messages from another instance were lost");
        }
        Verdict::Take { .. } | Verdict::Restart => {}
    }
    match body {
        Body::Presence { room, id, key } => match key {
            Some(key) => inbound.presence_joined(&origin, &room, &id, &key),
            None => inbound.presence_left(&origin, &room, &id),
        },
        Body::PresenceSync(Sync::Request) => shared.announce_members(inbound),
        Body::PresenceSync(Sync::Begin) => inbound.presence_snapshot_begins(&origin),
        Body::PresenceSync(Sync::End) => inbound.presence_snapshot_ends(&origin),
        Body::Delivery { target, message } => {
            add(&shared.counters.received, 1);
            metrics::counter!(m::RECEIVED).increment(1);
            let latency = now_us().saturating_sub(sent_at_us);
            metrics::histogram!(m::LATENCY).record(latency as f64 / 1e6);
            inbound.deliver_now(Envelope::new(origin, target, message));
        }
        Body::Heartbeat { .. } | Body::Entry { .. } => {}
    }
}

/// The single publisher: sends queued deliveries in order, many per round trip.
async fn publish_queued(
    shared: Arc<Shared>,
    mut manager: Conn,
    mut queue: mpsc::Receiver<(String, Bytes)>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let sent = batch.len();
        let commands = batch
            .drain(..)
            .map(|(channel, frame)| {
                let publish = manager.publish(&channel, &frame);
                (channel, publish)
            })
            .collect();
        let (failed, error) = manager.exec_placed(commands, PIPELINE_TIMEOUT).await;
        let delivered = sent.saturating_sub(failed) as u64;
        add(&shared.counters.published, delivered);
        metrics::counter!(m::PUBLISHED).increment(delivered);
        if let Some(error) = error {
            shared.publish_failed(failed as u64);
            // On a cluster one shard failing is not a lost Redis: the shard watcher judges.
            if !manager.is_cluster() {
                shared.set_down(&error);
            }
        }
    }
}

/// Applies presence changes in order, many per round trip; failures are logged (the lists
/// heal as members join and leave, and dead instances' entries are dropped when read).
async fn apply_presence(mut manager: Conn, mut changes: mpsc::Receiver<PresenceChange>) {
    let mut batch = Vec::with_capacity(BATCH);
    while changes.recv_many(&mut batch, BATCH).await > 0 {
        let commands = batch
            .drain(..)
            .map(|change| match change {
                PresenceChange::Add { key, id, value } => {
                    let command = redis::Cmd::hset(&key, id, value);
                    (key, command)
                }
                PresenceChange::Remove { key, id } => {
                    let command = redis::Cmd::hdel(&key, id);
                    (key, command)
                }
            })
            .collect();
        if let (_, Some(error)) = manager.exec_placed(commands, PIPELINE_TIMEOUT).await {
            tracing::warn!(%error, "presence changes not recorded");
        }
    }
}

/// Several times per heartbeat interval, while Redis answers: the members of hubs that
/// missed three heartbeats leave the presence count (within three intervals and a quarter of
/// their last heartbeat). Only once this instance has been up for three intervals, so that
/// it has heard every live hub; never while Redis is away, when silence proves nothing.
async fn count_out(shared: Arc<Shared>, inbound: Inbound) {
    let mut up_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(shared.heartbeat / 4).await;
        if !shared.up.load(Ordering::Acquire) {
            up_since = None;
            continue;
        }
        let since = *up_since.get_or_insert_with(Instant::now);
        if since.elapsed() > shared.heartbeat * 3 {
            inbound.presence_origins_alive(&shared.live_nodes());
        }
    }
}

/// Heartbeats while Redis answers; probes it every 200 ms while it does not, and on its
/// return subscribes the rooms again and counts the reconnect. On a cluster it only
/// heartbeats: [`watch_shards`] says whether the cluster answers.
async fn heartbeat(shared: Arc<Shared>, origin: Arc<str>, mut manager: Conn) {
    let all = shared.all_channel();
    let node_channel = shared.node_channel(node_of(&origin));
    let cluster = manager.is_cluster();
    // Heartbeats in a row that got no answer in time.
    let mut slow = 0u32;
    loop {
        if cluster || shared.up.load(Ordering::Acquire) {
            let frame = wire::encode(
                &all,
                &origin,
                Position { stream: 0, seq: 0 },
                now_us(),
                &Body::Heartbeat {
                    interval: shared.heartbeat,
                },
                shared.key(),
                shared.max_payload,
            );
            match frame {
                Ok(frame) => {
                    let publish = manager.publish(&all, &frame);
                    let sent =
                        tokio::time::timeout(COMMAND_TIMEOUT, publish.exec_async(&mut manager))
                            .await;
                    match sent {
                        Ok(Ok(())) => {
                            slow = 0;
                            shared.seen(origin.clone(), shared.heartbeat);
                        }
                        Ok(Err(error)) if cluster => {
                            tracing::debug!(%error, "heartbeat not sent");
                        }
                        Err(_) if cluster => tracing::debug!("heartbeat timed out"),
                        Ok(Err(error)) => shared.set_down(&error),
                        // One slow answer on a busy machine is not a lost Redis; two in a
                        // row are.
                        Err(_) => {
                            slow += 1;
                            if slow >= 2 {
                                shared.set_down(&"heartbeat timed out twice");
                            }
                        }
                    }
                }
                // Only an origin longer than the format allows; nothing to send.
                Err(error) => tracing::error!(%error, "cannot encode a heartbeat"),
            }
            shared.live_nodes();
            tokio::time::sleep(if cluster || shared.up.load(Ordering::Acquire) {
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
                if resubscribe(&shared, &mut manager, [all.clone(), node_channel.clone()]).await {
                    shared.up.store(true, Ordering::Release);
                    // Presence changes may have been lost both ways meanwhile: every hub
                    // lists its members again, this one too.
                    shared.presence_sync(Sync::Request);
                    if let Some(inbound) = shared.inbound.get() {
                        shared.announce_members(inbound);
                    }
                    metrics::counter!(m::RECONNECTS).increment(1);
                    tracing::info!("Redis is back: cross-instance delivery resumed");
                    continue;
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

/// Subscribes again to every room this instance has members in and to `fixed` (the
/// broadcast and node channels); whether Redis confirmed them all.
async fn resubscribe(shared: &Shared, manager: &mut Conn, fixed: [String; 2]) -> bool {
    let mut channels: Vec<String> = lock(&shared.interests)
        .iter()
        .map(|room| shared.room_channel(room))
        .collect();
    channels.extend(fixed);
    let mut subscribed = shared.subscribing.lock().await;
    let result = tokio::time::timeout(COMMAND_TIMEOUT, manager.subscribe(&channels)).await;
    let done = matches!(result, Ok(Ok(())));
    if done {
        subscribed.extend(lock(&shared.interests).iter().cloned());
    }
    done
}

/// On a cluster, probes its shards every 200 ms: `Degraded` while some master does not
/// answer (the rooms on its slots wait for a replica to take over), `Down` when none does.
/// When the masters change (a failover) or every shard answers again, the channels are
/// subscribed again: the subscriptions held by a dead master are gone with it, and the
/// client moves subscriptions only when it refreshes its slot map, which a failover
/// without a `MOVED` answer does not make it do.
async fn watch_shards(
    shared: Arc<Shared>,
    origin: Arc<str>,
    mut prober: connection::Prober,
    mut manager: Conn,
) {
    let fixed = [shared.all_channel(), shared.node_channel(node_of(&origin))];
    let mut masters: Vec<String> = Vec::new();
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let shards = match prober.probe(COMMAND_TIMEOUT).await {
            Ok(shards) if shards.unreachable < shards.masters.len() => shards,
            Ok(_) => {
                shared.set_down(&"no master of the cluster answers");
                continue;
            }
            Err(error) => {
                shared.set_down(&error);
                continue;
            }
        };
        let healthy = shards.unreachable == 0;
        let was_healthy =
            shared.up.load(Ordering::Acquire) && !shared.degraded.load(Ordering::Acquire);
        if !healthy && was_healthy {
            tracing::warn!(
                unreachable = shards.unreachable,
                "a Redis Cluster shard does not answer: its rooms wait for its failover"
            );
        }
        if shards.masters == masters && healthy == was_healthy {
            continue;
        }
        // Subscribed wherever the channels' slots are served now (a replica serves sharded
        // channels too, so this also helps while the failover is under way).
        let resubscribed = resubscribe(&shared, &mut manager, fixed.clone()).await;
        let ok = healthy && resubscribed;
        shared.degraded.store(!ok, Ordering::Release);
        shared.up.store(true, Ordering::Release);
        if ok && !was_healthy {
            metrics::counter!(m::RECONNECTS).increment(1);
            tracing::info!("every Redis Cluster shard answers: delivery resumed");
        }
        // Until every channel is confirmed, subscribed again on the next probe.
        masters = if resubscribed {
            shards.masters
        } else {
            Vec::new()
        };
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

/// The URL (or each of a cluster's) without its password, for logs and errors.
fn redact(url: &str) -> String {
    let one = |url: &str| match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
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
    fn every_bad_setting_is_refused_by_build_with_its_option_and_value() {
        assert!(Settings::builder().build().is_ok());
        let size = |option, value, max| ConfigError::Size {
            option,
            value,
            min: 1,
            max,
        };
        let short = |option, value, min| ConfigError::ShortDuration { option, value, min };
        let prefix = |value: &str| ConfigError::Prefix {
            value: value.to_owned(),
        };
        for (bad, refusal) in [
            (Settings::builder().prefix(""), prefix("")),
            (Settings::builder().prefix("a:b"), prefix("a:b")),
            (Settings::builder().prefix("{a}"), prefix("{a}")),
            (
                Settings::builder().prefix("a".repeat(65)),
                prefix(&"a".repeat(65)),
            ),
            (
                Settings::builder().heartbeat(Duration::from_millis(9)),
                short("heartbeat", Duration::from_millis(9), MIN_HEARTBEAT),
            ),
            (
                Settings::builder().epoch_ttl(Duration::ZERO),
                short("epoch_ttl", Duration::ZERO, MIN_EPOCH_TTL),
            ),
            (
                Settings::builder().queue_capacity(0),
                size("queue_capacity", 0, MAX_QUEUE_MESSAGES),
            ),
            (
                Settings::builder().max_payload(MAX_PAYLOAD + 1),
                size("max_payload", MAX_PAYLOAD + 1, MAX_PAYLOAD),
            ),
        ] {
            assert_eq!(bad.build().unwrap_err(), refusal);
        }
    }

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
        assert!(again.stream > first.stream);
        // Two processes start their streams at different random points.
        assert_ne!(
            Numbering::default().peek("a"),
            Numbering::default().peek("a")
        );
    }

    #[test]
    fn numbers_repeat_only_as_duplicates() {
        let at = |seq| Position { stream: 7, seq };
        let mut window = Window::new(at(1), 1);
        assert_eq!(window.check(at(2), 2, false), Verdict::Take { lost: 0 });
        assert_eq!(window.check(at(2), 2, false), Verdict::Duplicate);
        assert_eq!(window.check(at(5), 5, false), Verdict::Take { lost: 2 });
        // Late, but not seen yet: taken.
        assert_eq!(window.check(at(4), 4, false), Verdict::Take { lost: 0 });
        assert_eq!(window.check(at(4), 40, true), Verdict::Duplicate);
        assert_eq!(
            window.check(Position { stream: 8, seq: 1 }, 1, false),
            Verdict::Restart
        );
    }

    #[test]
    fn a_forged_number_does_not_silence_the_sender() {
        let at = |seq| Position { stream: 7, seq };
        let mut window = Window::new(at(10), 10);
        assert!(matches!(
            window.check(at(u64::MAX), 666, false),
            Verdict::Take { .. }
        ));
        // The real sender's next numbers are far below: numbering restarts, nothing dropped.
        for seq in 11..20 {
            assert_ne!(window.check(at(seq), seq as u32, false), Verdict::Duplicate);
        }
        // A forged jump inside the window, even onto a real number, silences nothing.
        let mut window = Window::new(at(10), 10);
        window.check(at(13), 666, false);
        for seq in 11..20 {
            assert_eq!(
                window.check(at(seq), seq as u32, false),
                Verdict::Take { lost: 0 },
                "{seq}"
            );
        }
        // Signed frames cannot be forged: far behind or an older stream is a replay.
        let mut window = Window::new(at(1000), 1);
        assert_eq!(window.check(at(1), 1, true), Verdict::Stale);
        assert_eq!(
            window.check(Position { stream: 6, seq: 1 }, 1, true),
            Verdict::Stale
        );
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:secret@h:1/"), "redis://***@h:1/");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
        assert_eq!(
            redact("redis://:a@h:1,redis://:b@h:2"),
            "redis://***@h:1,redis://***@h:2"
        );
    }
}
