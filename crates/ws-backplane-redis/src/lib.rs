//! A Redis pub/sub [`Backplane`](ws_context::Backplane) for `ws-context`'s
//! [`ConnectionHub`](ws_context::ConnectionHub): rooms, broadcasts, send-to-id and
//! close-by-id reach every instance of an app connected to the same Redis. Handlers do not
//! change; `gofr-app` plugs it in with its `redis` feature and `REDIS_URL`.
//!
//! ```no_run
//! use axum::Router;
//! use ws_backplane_redis::RedisBackplane;
//! use ws_context::{ConnectionHub, Context, Endpoint, Message};
//!
//! async fn chat(ctx: Context) -> Result<(), ws_context::BindError> {
//!     let text: String = ctx.bind()?;
//!     ctx.hub().send_to_room("lobby", Message::text(text)).await;
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let backplane = RedisBackplane::new();
//! let hub = ConnectionHub::with_backplane(backplane.clone());
//! backplane.connect("redis://127.0.0.1:6379").await?;
//! let endpoint = Endpoint::new(chat).hub(hub).on_connect(|conn: ws_context::Connection| async move {
//!     conn.hub().join(conn.id(), "lobby").await;
//!     Ok(())
//! });
//! let app: Router = Router::new().route("/ws", endpoint.into_route()?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Channels
//!
//! With the default prefix `gofrws`:
//!
//! - `{gofrws:<room>}:room`: a room's deliveries. An instance subscribes on its first local
//!   member and unsubscribes after its last leaves, so a room whose members are all on one
//!   instance causes no traffic to the others. A join waits for the subscription. The
//!   braces are a Redis Cluster hash tag, shared with the room's history keys.
//! - `gofrws:all`: broadcasts and heartbeats.
//! - `gofrws:node:<node>`: send-to-id and close-by-id. A connection id starts with its
//!   instance's node id, so it routes without a lookup.
//!
//! The prefix ([`SettingsBuilder::prefix`]; gofr-app takes `APP_NAME`) keeps apps on one Redis
//! apart: instances of one app share it, and pub/sub ignores database numbers.
//!
//! On a Redis Cluster the channels are sharded; see [Redis Cluster](#redis-cluster).
//!
//! # Guarantee
//!
//! At most once across instances, no duplicates, in order per sender and channel. Local
//! members are served first and never wait on Redis. Each frame carries a format version,
//! its origin hub, a sequence number per origin and channel, its kind, target, opcode,
//! payload and send time; the receiver drops its own frames and duplicates, and counts gaps.
//!
//! # History
//!
//! With history limits on the hub ([`ConnectionHub::set_history_limits`](ws_context::ConnectionHub::set_history_limits)),
//! the backplane keeps each room's messages in a Redis stream, `{gofrws:<room>}:history`, at
//! most the limit's length (`MAXLEN ~`) and age (trimmed on every append and every read,
//! and the stream expires with its last message), numbered by an epoch
//! (`{gofrws:<room>}:epoch`, 16 hex digits, new whenever Redis lost the history; kept
//! [`SettingsBuilder::epoch_ttl`] after the room's last activity) and an offset
//! (`{gofrws:<room>}:offset`). A room message is made for the room's next position and
//! handed to one Lua script that checks that position, `INCR`s the offset, `XADD`s and
//! `PUBLISH`es the same (signed) frame, atomically; when another sender took the position,
//! the message is made again for the next one (the loser holds the room's next turn for
//! 50 ms, so two busy senders alternate). Every instance, the sender's included, delivers
//! the room's messages as they come on the channel, in offset order, dropping any it has
//! delivered; a gap (messages lost while Redis dropped the connection) is read back from the
//! stream. [`join_since`](ws_context::ConnectionHub::join_since) holds the member's live
//! messages, reads the missed ones (`XREVRANGE`, once the room's subscription is in place),
//! and queues both, each once, by offset. Recovery reads at most twice the length limit back.
//!
//! # Presence
//!
//! [`ConnectionHub::presence`](ws_context::ConnectionHub::presence) asks the backplane: each
//! room has a hash `{gofrws:<room>}:presence` (connection id → the member's hub origin, a tab,
//! its info), updated in order by one task as members join and leave (a full queue drops the
//! change and logs it). Reading it leaves out, and removes, the members of hubs that missed
//! three heartbeats, so a killed instance's members are gone within three heartbeats.
//!
//! # Integrity
//!
//! Every frame is checked before delivery: kind, opcode, close code, lengths, and that it
//! came on its target's channel; the rest is dropped and counted. Without a secret, anyone
//! who can `PUBLISH` on the Redis can still inject well-formed frames under the prefix; with
//! [`SettingsBuilder::secret`], frames are signed with HMAC-SHA256 (over the channel and the
//! content) and unsigned or altered ones are dropped. A forged sequence number cannot
//! silence a sender: a number far from the last restarts the count, and only the same bytes
//! under the same number are a duplicate.
//!
//! # When Redis is down
//!
//! Local rooms keep working. Cross-instance publishes fail at once and are counted,
//! [`status`](ws_context::Backplane::status) is `Down` (gofr-app's health shows
//! `DEGRADED`), and the connection is retried. Once Redis answers, the rooms are subscribed
//! again and delivery resumes; what was lost meanwhile shows as gaps.
//!
//! # Redis Cluster
//!
//! [`connect`](RedisBackplane::connect) with several node URLs separated by commas
//! (`redis://10.0.0.1:7000,redis://10.0.0.2:7000,...`; any of the cluster's nodes, it finds
//! the rest) uses the redis crate's cluster client, which follows `MOVED` and keeps a
//! connection per node. The channels are then sharded (`SSUBSCRIBE`/`SPUBLISH`, Redis 7):
//! a channel lives on the shard of its slot, hashed as keys are, so a room's channel, history
//! stream, epoch, offset and presence hash, all under the hash tag `{<prefix>:<room>}`, sit on
//! one shard, the append script's `SPUBLISH` included, and a room message costs one shard, not
//! a fan-out to every node as plain `PUBLISH` does on a cluster. The broadcast channel and
//! each instance's node channel are sharded channels too, each on the shard of its name.
//! Publishes and presence changes are pipelined per key (a pipeline stays in one slot), the
//! shards at once.
//!
//! A task probes the shards every 200 ms (`CLUSTER SLOTS`, then a `PING` to each master, on
//! connections of its own: the cluster client, asked for a node it has no connection to,
//! reconnects to every node, and messages on the subscriptions are lost meanwhile):
//! while some master does not answer, [`status`](ws_context::Backplane::status) is
//! `Degraded` (rooms on the other shards work as usual; those on the missing one fail until
//! a replica takes over); when none answers, `Down`. When the masters change (a failover) or
//! all answer again, every channel is subscribed again, wherever its slot is served now: the
//! subscriptions a dead master held are gone with it. Room messages missed meanwhile are
//! read back from the stream like any gap.
//!
//! # Live nodes
//!
//! Every hub publishes a heartbeat (every 2 s by default); another hub is dropped from
//! [`nodes`](ws_context::Backplane::nodes) after three missed heartbeats.
//!
//! # Metrics
//!
//! Recorded through the `metrics` facade; [`describe_metrics`] lists them.
#![deny(missing_docs)]

mod backplane;
mod connection;
#[doc(hidden)]
pub mod fuzzing;
mod history;
mod metrics;
mod wire;

pub use crate::backplane::{
    BackplaneStats, ConfigError, DEFAULT_EPOCH_TTL, DEFAULT_HEARTBEAT, DEFAULT_MAX_PAYLOAD,
    DEFAULT_PREFIX, DEFAULT_QUEUE_MESSAGES, MAX_PAYLOAD, MAX_PREFIX_BYTES, MAX_QUEUE_MESSAGES,
    MIN_EPOCH_TTL, MIN_HEARTBEAT, RedisBackplane, RedisBackplaneError, Settings, SettingsBuilder,
};
pub use crate::metrics::describe_metrics;

/// The README's examples, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
