//! Room history in Redis Streams, shared by every instance.
//!
//! Per room, three keys under one hash tag (`{<prefix>:<room>}`, so that on a Redis Cluster a
//! room's keys and channel share a slot):
//!
//! | key | what |
//! |---|---|
//! | `{<prefix>:<room>}:epoch` | the history's epoch, 16 hex digits, created with `SET NX` semantics by the first script that finds none |
//! | `{<prefix>:<room>}:offset` | the last offset given out |
//! | `{<prefix>:<room>}:history` | the stream: one entry per message, fields `o` (offset) and `f` (the frame, exactly as published) |
//! | `{<prefix>:<room>}:turn` | for a few milliseconds, the sender whose position was taken and who appends next |
//!
//! Three Lua scripts, each atomic:
//!
//! - append: if the epoch and the next offset are the ones the sender made its message for,
//!   `INCR` the offset, `XADD` (`MAXLEN ~`, then an exact `XTRIM MINID` for the age bound) and
//!   `PUBLISH` (`SPUBLISH` on a cluster) the same frame on the room's channel; otherwise
//!   say where the history is. Every
//!   reader therefore receives a room's messages in offset order, and the stream holds
//!   exactly what was published;
//! - position: the epoch (created if missing) and the last offset;
//! - since: trims what is older than the age bound, then the epoch, the last offset and the
//!   newest `last - since` entries (at most twice the length bound: further back is too old).
//!
//! When Redis loses the keys (a restart without persistence, `FLUSHALL`, an idle room past
//! the epoch's time to live), the next script creates a new random epoch: positions from the
//! old one are refused as [`EpochChanged`](ws_context::RecoveryError::EpochChanged).

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;
use redis::Value;
use sha1::Digest as _;

use crate::connection::Conn;

/// Records a message at the expected position and publishes it, or reports the position.
/// KEYS: epoch, offset, stream, turn. ARGV: expected epoch, expected offset, new epoch if
/// none, frame, channel, max length, max age (ms), epoch time to live (ms), sender, turn
/// (ms), the publish command (`PUBLISH`, or `SPUBLISH` on a Redis Cluster: the channel
/// shares the keys' hash tag, so the script stays on one shard).
///
/// A sender that finds its position taken claims the room's next turn (for a few
/// milliseconds): until it appends, others are refused, so two busy senders alternate
/// instead of one always winning the race.
const APPEND: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[8])
  redis.call('DEL', KEYS[2], KEYS[3])
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local turn = redis.call('GET', KEYS[4])
if epoch ~= ARGV[1] or current + 1 ~= tonumber(ARGV[2]) or (turn and turn ~= ARGV[9]) then
  if not turn then
    redis.call('SET', KEYS[4], ARGV[9], 'PX', ARGV[10])
  end
  return {0, epoch, current}
end
if turn then
  redis.call('DEL', KEYS[4])
end
local offset = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'o', offset, 'f', ARGV[4])
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[7])
if cutoff > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', cutoff)
end
redis.call('PEXPIRE', KEYS[3], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call(ARGV[11], ARGV[5], ARGV[4])
return {1, epoch, offset}
"#;

/// The epoch (created if missing) and the last offset. KEYS: epoch, offset, stream.
/// ARGV: new epoch if none, epoch time to live (ms).
const POSITION: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {epoch, tonumber(redis.call('GET', KEYS[2]) or '0')}
"#;

/// The entries after a position, once those older than the age bound are trimmed. KEYS:
/// epoch, offset, stream. ARGV: epoch, offset, most entries to read, max age (ms). Returns
/// {0} (epoch changed), {2, last} (too old) or {1, last, entries} with the entries newest
/// first.
const SINCE: &str = r#"
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
if cutoff > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', cutoff)
end
local epoch = redis.call('GET', KEYS[1])
if not epoch or epoch ~= ARGV[1] then
  return {0}
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local since = tonumber(ARGV[2])
if since > current then
  return {0}
end
local want = current - since
if want == 0 then
  return {1, current, {}}
end
if want > tonumber(ARGV[3]) then
  return {2, current}
end
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', want)
if #entries < want then
  return {2, current}
end
return {1, current, entries}
"#;

/// One of the scripts, run by its SHA-1 (`EVALSHA`), sent whole only when Redis does not
/// have it (first use, or after a restart).
#[derive(Debug)]
pub(crate) struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    fn new(text: &'static str) -> Script {
        let digest = sha1::Sha1::digest(text.as_bytes());
        let sha = digest.iter().map(|b| format!("{b:02x}")).collect();
        Script { text, sha }
    }

    pub(crate) fn append() -> &'static Script {
        static SCRIPT: OnceLock<Script> = OnceLock::new();
        SCRIPT.get_or_init(|| Script::new(APPEND))
    }

    pub(crate) fn position() -> &'static Script {
        static SCRIPT: OnceLock<Script> = OnceLock::new();
        SCRIPT.get_or_init(|| Script::new(POSITION))
    }

    pub(crate) fn since() -> &'static Script {
        static SCRIPT: OnceLock<Script> = OnceLock::new();
        SCRIPT.get_or_init(|| Script::new(SINCE))
    }

    /// Runs the script on the three keys of a room with these arguments.
    pub(crate) async fn run(
        &self,
        manager: &mut Conn,
        keys: &RoomKeys,
        args: &[Vec<u8>],
    ) -> redis::RedisResult<Value> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script)
                .arg(4)
                .arg(&keys.epoch)
                .arg(&keys.offset)
                .arg(&keys.stream)
                .arg(&keys.turn);
            for arg in args {
                cmd.arg(arg.as_slice());
            }
            cmd
        };
        match call("EVALSHA", &self.sha).query_async(manager).await {
            Err(error) if error.code() == Some("NOSCRIPT") => {
                call("EVAL", self.text).query_async(manager).await
            }
            other => other,
        }
    }
}

/// A room's keys (see the module docs).
#[derive(Debug)]
pub(crate) struct RoomKeys {
    pub(crate) epoch: String,
    pub(crate) offset: String,
    pub(crate) stream: String,
    pub(crate) turn: String,
}

impl RoomKeys {
    pub(crate) fn new(prefix: &str, room: &str) -> RoomKeys {
        let tag = hash_tag(prefix, room);
        RoomKeys {
            epoch: format!("{tag}:epoch"),
            offset: format!("{tag}:offset"),
            stream: format!("{tag}:history"),
            turn: format!("{tag}:turn"),
        }
    }
}

/// `{<prefix>:<room>}`: what a room's keys and channel start with.
pub(crate) fn hash_tag(prefix: &str, room: &str) -> String {
    format!("{{{prefix}:{room}}}")
}

/// A new random epoch, as 16 hex digits.
pub(crate) fn new_epoch() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    epoch_text(hasher.finish())
}

pub(crate) fn epoch_text(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// An epoch as this backplane writes it (16 hex digits); `None` for anything else.
pub(crate) fn epoch_number(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

/// What the append script answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppendReply {
    /// Recorded and published at (epoch, offset).
    At(String, u64),
    /// Not recorded: the history is at (epoch, offset).
    Moved(String, u64),
}

pub(crate) fn append_reply(value: Value) -> Option<AppendReply> {
    let mut items = array(value)?.into_iter();
    let done = integer(items.next()?)?;
    let epoch = text(items.next()?)?;
    let offset = u64::try_from(integer(items.next()?)?).ok()?;
    Some(if done == 1 {
        AppendReply::At(epoch, offset)
    } else {
        AppendReply::Moved(epoch, offset)
    })
}

pub(crate) fn position_reply(value: Value) -> Option<(String, u64)> {
    let mut items = array(value)?.into_iter();
    let epoch = text(items.next()?)?;
    let offset = u64::try_from(integer(items.next()?)?).ok()?;
    Some((epoch, offset))
}

/// What the since script answered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SinceReply {
    EpochChanged,
    TooOld,
    /// The last offset, and (offset, frame) oldest first.
    Entries(u64, Vec<(u64, Bytes)>),
}

pub(crate) fn since_reply(value: Value) -> Option<SinceReply> {
    let mut items = array(value)?.into_iter();
    match integer(items.next()?)? {
        0 => Some(SinceReply::EpochChanged),
        2 => Some(SinceReply::TooOld),
        1 => {
            let last = u64::try_from(integer(items.next()?)?).ok()?;
            let mut entries = Vec::new();
            for entry in array(items.next()?)? {
                let mut parts = array(entry)?.into_iter();
                let _id = parts.next()?;
                let mut fields = match parts.next()? {
                    Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    other => array(other)?,
                }
                .into_iter();
                let (mut offset, mut frame) = (None, None);
                while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                    match bytes(name)?.as_ref() {
                        b"o" => offset = text(value)?.parse::<u64>().ok(),
                        b"f" => frame = bytes(value),
                        _ => {}
                    }
                }
                entries.push((offset?, frame?));
            }
            entries.reverse();
            Some(SinceReply::Entries(last, entries))
        }
        _ => None,
    }
}

fn array(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

fn integer(value: Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(n),
        Value::BulkString(bytes) => std::str::from_utf8(&bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(bytes) => Some(bytes.into()),
        Value::SimpleString(text) => Some(text.into_bytes().into()),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::Int(n) => Some(n.to_string()),
        other => String::from_utf8(bytes(other)?.to_vec()).ok(),
    }
}

/// Milliseconds of a duration for a script argument (at least 1).
pub(crate) fn millis(duration: Duration) -> Vec<u8> {
    duration.as_millis().max(1).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_16_hex_digits_and_differ() {
        let (a, b) = (new_epoch(), new_epoch());
        assert_ne!(a, b);
        assert_eq!(epoch_number(&a).map(epoch_text), Some(a));
        assert_eq!(epoch_number("xyz"), None);
    }

    #[test]
    fn replies_that_are_not_the_scripts_are_refused_not_unwrapped() {
        assert_eq!(append_reply(Value::Nil), None);
        assert_eq!(append_reply(Value::Array(vec![Value::Int(1)])), None);
        assert_eq!(since_reply(Value::Array(vec![Value::Int(7)])), None);
        assert_eq!(
            since_reply(Value::Array(vec![
                Value::Int(1),
                Value::Int(2),
                Value::Array(vec![Value::Array(vec![
                    Value::BulkString(b"1-0".to_vec()),
                    Value::Array(vec![Value::BulkString(b"o".to_vec())]),
                ])]),
            ])),
            None
        );
        assert_eq!(
            since_reply(Value::Array(vec![Value::Int(0)])),
            Some(SinceReply::EpochChanged)
        );
    }

    #[test]
    fn keys_share_the_rooms_hash_tag() {
        let keys = RoomKeys::new("chat", "lobby");
        assert_eq!(keys.epoch, "{chat:lobby}:epoch");
        assert_eq!(keys.stream, "{chat:lobby}:history");
    }
}
