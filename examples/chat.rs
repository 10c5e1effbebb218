//! A browser chat served by the app itself: `/` is one static page with a few lines of plain
//! JavaScript, and `/ws/{room}` joins the room named in the path. Every message a member
//! sends goes to everyone in that room as JSON `{"from": ..., "text": ..., "at": ...,
//! "pos": ...}` (`from` is the `name` query parameter or the connection id, `at`
//! milliseconds since the Unix epoch, `pos` the message's position in the room's history,
//! an opaque string).
//!
//! # Coming back without missing anything
//!
//! Joining a room without `since`, the first message is the room's position at join,
//! `{"from": "server", "joined": true, "pos": "...", "at": ...}` (no `text`), before any
//! room message: a client that keeps it (then each message's `pos`) can recover even if it
//! received nothing before it dropped.
//!
//! Connecting to `/ws/{room}?since=POS`, with the last `pos` received, first delivers every
//! room message after it, in order, then the live ones: none missing, none twice; this
//! works across instances too (`REDIS_URL`: the history is in Redis Streams), on whichever
//! instance the client comes back to. When that is not possible (the position is older
//! than the last 256 messages or 5 minutes, or the history was lost: a restart of the
//! single instance, or of a Redis without persistence) the first message is
//! `{"from": "server", "text": "...", "recovered": false, "at": ...}`, then the position
//! at join as above, and the client should reload what it shows. The page does this after
//! every drop. `WS_HISTORY_LEN` and `WS_HISTORY_AGE` change the 256 and the 5 minutes.
//!
//! # Who is online
//!
//! When a member arrives in the room or leaves it, on any instance, every member greeted
//! here gets `{"from": "server", "presence": "joined", "name": ..., "at": ...}` or `"presence":
//! "left"` (no `pos`: these are not room messages and are not recovered). Presence is per
//! name (the `name` query parameter, else the connection id): a second tab does not join
//! again, and a leave comes only once no connection with that name has been in the room for
//! 3 s (`WS_PRESENCE_LEAVE_DELAY`), so a reconnect makes no leave/join pair. A member gets
//! these lines only after its join line, and none about its own name; it asks `/who` for who
//! was there before it.
//!
//! A few commands, answered to the sender only (`/dm` and `/kick` only when they fail):
//!
//! - `/me`: your connection id (answered `{"from": "server", "text": "<id>", ...}`);
//! - `/who`: who is in the room, on every instance (answered `{"from": "server",
//!   "members": [...], ...}`, each member's `name` query parameter or its id);
//! - `/dm <id> <text>`: a private message to one connection;
//! - `/kick <id>`: closes that connection with code 4000.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example chat
//! ```
//!
//! and open <http://127.0.0.1:8000/> in two browser windows (`HTTP_PORT` changes the port;
//! metrics are on `METRICS_PORT`, 2121), or run `cargo xtask demo`, which also prints the URL.
//! Compression (permessage-deflate) is on: browsers offer it, so their frames are compressed;
//! `cargo xtask browser-test` checks that in headless Chromium.
//!
//! # Cluster mode
//!
//! With `REDIS_URL` set, every instance on that Redis shares the rooms, and `/dm` and
//! `/kick` reach a connection on any instance (`cargo xtask demo cluster` starts Redis and
//! two instances):
//!
//! ```not_rust
//! REDIS_URL=redis://127.0.0.1:6379/ HTTP_PORT=8001 METRICS_PORT=2122 cargo run --example chat
//! REDIS_URL=redis://127.0.0.1:6379/ HTTP_PORT=8002 METRICS_PORT=2123 cargo run --example chat
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{response::Html, routing::get};
use gofr_app::{
    App, CloseFrame, Connection, ConnectionHub, ConnectionId, Context, Error, Message,
    PresenceEventKind, RecoveryError, RoomPosition, WsUpgrader,
};

const PAGE: &str = include_str!("chat.html");
/// Longest message accepted, in characters.
const MAX_TEXT: usize = 2000;
/// Close code of `/kick`: 4000-4999 are the application's own.
const KICKED: u16 = 4000;

#[derive(serde::Serialize)]
struct ChatMessage<'a> {
    from: &'a str,
    text: &'a str,
    at: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<String>,
}

/// The connections whose first line (the join line, or what they recovered) is queued,
/// with their names: only these get presence lines, so that nothing comes before it.
#[derive(Clone, Default)]
struct Greeted(Arc<Mutex<HashMap<ConnectionId, String>>>);

impl Greeted {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Joins the room, then counts the member as greeted (see [`join_room`]).
async fn join_and_greet(conn: Connection, greeted: Greeted) -> Result<(), CloseFrame> {
    let name = join_room(&conn).await?;
    greeted.map().insert(conn.id().clone(), name);
    Ok(())
}

/// Tells every greeted member of a room here who arrives and who leaves, on any instance.
async fn announce_presence(hub: ConnectionHub, greeted: Greeted) {
    let mut events = hub.presence_events();
    while let Some(event) = events.recv().await {
        let what = match event.kind {
            PresenceEventKind::Joined => "joined",
            PresenceEventKind::Left => "left",
            _ => continue,
        };
        let line = serde_json::json!({
            "from": "server",
            "presence": what,
            "name": &*event.key,
            "at": now_ms(),
        })
        .to_string();
        // Not to the member the line is about: it knows it joined.
        let members: Vec<ConnectionId> = {
            let greeted = greeted.map();
            hub.room_members(&event.room)
                .into_iter()
                .filter(|id| greeted.get(id).is_some_and(|name| **name != *event.key))
                .collect()
        };
        for id in members {
            // A member whose queue is full misses the line rather than holding up the rest.
            if let Some(writer) = hub.get(&id) {
                let _ = writer.try_send(Message::text(line.clone()));
            }
        }
    }
}

/// Joins the room; with `?since=POS`, recovers what was missed since then first, or says
/// first that it cannot. Otherwise (or then) the first message is the position at join.
/// Returns the member's name.
async fn join_room(conn: &Connection) -> Result<String, CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    let hub = conn.hub();
    // What `/who` lists for this member, on any instance.
    let name = conn
        .query_param("name")
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| conn.id().to_string());
    hub.set_presence_info(conn.id(), name.clone());
    if let Some(since) = conn.query_param("since") {
        let recovered = match since.parse::<RoomPosition>() {
            Ok(since) => hub.join_since(conn.id(), &room, &since).await,
            Err(_) => Err(RecoveryError::EpochChanged),
        };
        match recovered {
            Ok(recovered) => {
                tracing::info!(room, missed = recovered.count, "rejoined");
                return Ok(name);
            }
            Err(RecoveryError::NotOpen) => return Ok(name),
            Err(error) => {
                let notice = serde_json::json!({
                    "from": "server",
                    "text": format!("missed messages cannot be recovered: {error}"),
                    "recovered": false,
                    "at": now_ms(),
                });
                let _ = conn.socket().json(&notice).await;
            }
        }
    }
    let joined = hub
        .join_at(conn.id(), &room, |pos| {
            let greeting = serde_json::json!({
                "from": "server",
                "joined": true,
                "pos": pos.to_string(),
                "at": now_ms(),
            });
            Message::text(greeting.to_string())
        })
        .await;
    if joined.is_ok() {
        tracing::info!(room, "joined");
    }
    Ok(name)
}

async fn chat(ctx: Context) -> Result<Option<serde_json::Value>, Error> {
    let text: String = ctx.bind()?;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return Err(Error::bad_request(format!(
            "a message has 1 to {MAX_TEXT} characters"
        )));
    }
    let from = ctx
        .query_param("name")
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| ctx.id().to_string());
    if let Some(command) = text.strip_prefix('/') {
        return run_command(&ctx, &from, command).await;
    }
    let room = ctx.path_param("room").unwrap_or("lobby");
    // The line is made once its position is known, so that it carries it.
    let mut failed = None;
    ctx.hub()
        .send_to_room_with(room, |pos| {
            let pos = pos.map(ToString::to_string);
            match line_at(&from, text, pos) {
                Ok(line) => Message::text(line),
                Err(error) => {
                    failed = Some(error);
                    Message::text("{}")
                }
            }
        })
        .await;
    match failed {
        Some(error) => Err(error),
        None => Ok(None),
    }
}

/// `/me`, `/who`, `/dm <id> <text>` and `/kick <id>`; the id may be on any instance.
async fn run_command(
    ctx: &Context,
    from: &str,
    command: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    match name {
        "me" => Ok(Some(serde_json::json!({
            "from": "server",
            "text": ctx.id().as_str(),
            "at": now_ms(),
        }))),
        "who" => {
            let room = ctx.path_param("room").unwrap_or("lobby");
            let members: Vec<String> = ctx
                .hub()
                .presence(room)
                .await
                .into_iter()
                .map(|member| member.info.to_string())
                .collect();
            Ok(Some(serde_json::json!({
                "from": "server",
                "members": members,
                "at": now_ms(),
            })))
        }
        "dm" => {
            let (to, text) = rest
                .split_once(' ')
                .ok_or_else(|| Error::bad_request("usage: /dm <id> <text>"))?;
            ctx.hub()
                .send_to(
                    &ConnectionId::from(to),
                    Message::text(line(from, text.trim())?),
                )
                .await
                .map_err(|_| Error::not_found(format!("no connection {to}")))?;
            Ok(None)
        }
        "kick" if !rest.is_empty() => {
            let reason = format!("removed by {from}");
            let kicked =
                CloseFrame::new(KICKED, reason).map_err(|e| Error::internal(e.to_string()))?;
            if ctx.hub().close(&ConnectionId::from(rest), kicked) {
                Ok(None)
            } else {
                Err(Error::not_found(format!("no connection {rest}")))
            }
        }
        _ => Err(Error::bad_request(
            "commands: /me, /who, /dm <id> <text>, /kick <id>",
        )),
    }
}

/// One chat line as JSON, stamped with the time.
fn line(from: &str, text: &str) -> Result<String, Error> {
    line_at(from, text, None)
}

/// One chat line as JSON, stamped with the time and, for a room, its position.
fn line_at(from: &str, text: &str, pos: Option<String>) -> Result<String, Error> {
    let at = now_ms();
    serde_json::to_string(&ChatMessage {
        from,
        text,
        at,
        pos,
    })
    .map_err(|e| Error::internal(e.to_string()))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut app = App::new();
    let greeted = Greeted::default();
    tokio::spawn(announce_presence(app.hub(), greeted.clone()));
    // Each room keeps its last 256 messages (5 minutes at most) for members that come back.
    app.hub().set_history_limits(
        gofr_app::context::DEFAULT_HISTORY_LEN,
        gofr_app::context::DEFAULT_HISTORY_AGE,
    );
    // Browsers offer permessage-deflate; chat text compresses well.
    app.override_websocket_upgrader(WsUpgrader::builder().compression().build()?);
    app.merge(axum::Router::new().route("/", get(|| async { Html(PAGE) })));
    let left = greeted.clone();
    app.websocket_with("/ws/{room}", chat, move |route| {
        route
            .on_connect(move |conn| join_and_greet(conn, greeted.clone()))
            .on_close(move |conn, _| {
                left.map().remove(conn.id());
                std::future::ready(())
            })
    });
    app.run().await?;
    Ok(())
}
