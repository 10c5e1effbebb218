//! The envelope as it travels through Redis: a small binary frame, versioned so a later
//! format can be told apart, every field checked on the way in, optionally signed.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version ([`VERSION`]) |
//! | 1 | flags: bit 0 set when a signature follows the payload |
//! | 1 | kind: 0 heartbeat, 1 all, 2 room, 3 connection, 4 room history entry, 5 presence join, 6 presence leave, 7 presence sync |
//! | 1 | opcode: 0 none (heartbeat, presence), 1 text, 2 binary, 8 close, 9 ping, 10 pong |
//! | 8 | stream: which numbering the sequence number belongs to, big endian (history entry: the room history's epoch) |
//! | 8 | sequence number per origin and channel within the stream, big endian (history entry: its offset in the room's history) |
//! | 8 | send time, microseconds since the Unix epoch, big endian |
//! | 1 + n | origin (the sending hub), length-prefixed UTF-8, 1 to [`MAX_ORIGIN`] bytes |
//! | 2 + n | target (room name or connection id; empty otherwise), length-prefixed UTF-8, at most [`MAX_TARGET`] bytes |
//! | 4 + n | payload, length-prefixed (close: code, 2 bytes, then the reason; heartbeat: interval in ms, 4 bytes; presence: the connection id, length-prefixed (2 bytes), then for a join its presence key, UTF-8, 1 to [`MAX_TARGET`] bytes; presence sync: 1 byte, 0 "list your members", 1 "my list begins", 2 "my list ends") |
//! | 32 | when signed: HMAC-SHA256 of the channel name (2-byte length first) and every byte above |
//!
//! A frame is refused (and counted by the caller) when any field is outside these rules, when
//! bytes follow it, when a close code is not one a peer may send (RFC 6455 §7.4), a close
//! reason is longer than 123 bytes, a ping or pong payload longer than 125, or a text payload
//! not UTF-8, or a presence change names a connection of another node than its origin's.
//!
//! Presence kinds (5 to 7) came after the first version-2 readers, which drop them as an
//! unknown kind (counted) and take everything else: an added kind keeps the version, so
//! instances of both builds can run side by side during a rolling upgrade; a change to any
//! existing field's meaning takes a new version.

use std::{sync::Arc, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use hmac::Mac as _;
use ws_context::{CloseFrame, ConnectionId, MAX_CLOSE_REASON, Message, Target, Utf8Bytes};

/// The format version this crate writes and reads.
pub(crate) const VERSION: u8 = 2;
/// Longest origin, in bytes.
pub(crate) const MAX_ORIGIN: usize = 128;
/// Longest room name or connection id, in bytes.
pub(crate) const MAX_TARGET: usize = 1024;
/// Length of the signature.
const TAG: usize = 32;
/// Fixed part of the header, before the origin.
const HEADER: usize = 28;

const FLAG_SIGNED: u8 = 1;

const KIND_HEARTBEAT: u8 = 0;
const KIND_ALL: u8 = 1;
const KIND_ROOM: u8 = 2;
const KIND_CONNECTION: u8 = 3;
const KIND_ENTRY: u8 = 4;
const KIND_JOIN: u8 = 5;
const KIND_LEAVE: u8 = 6;
const KIND_SYNC: u8 = 7;

const OP_NONE: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// The shared secret's keyed HMAC state, cloned for each frame.
pub(crate) type Key = hmac::Hmac<sha2::Sha256>;

/// A key from a shared secret (any length works with HMAC).
pub(crate) fn key(secret: &[u8]) -> Key {
    // HMAC takes keys of any length; this cannot fail.
    <Key as hmac::KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// "This hub is alive; expect the next one within `interval`."
    Heartbeat { interval: Duration },
    /// A delivery for the receiving instance's connections.
    Delivery { target: Target, message: Message },
    /// A room message recorded in the room's shared history; the frame's position is its
    /// epoch (`stream`) and offset (`seq`). Published and stored as the same bytes.
    Entry { room: Arc<str>, message: Message },
    /// A connection of the sender's node joined a room with a presence key (`Some`), or
    /// left it (`None`).
    Presence {
        room: Arc<str>,
        id: ConnectionId,
        key: Option<Arc<str>>,
    },
    /// A step of presence synchronisation between hubs.
    PresenceSync(Sync),
}

/// A step of presence synchronisation: a hub asks every other to list its members (after it
/// may have missed changes), or frames its own list, so that receivers drop its members it
/// no longer lists (changes they may have missed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// "Every hub: list your members."
    Request,
    /// "My list of members begins."
    Begin,
    /// "My list of members ends."
    End,
}

/// Where a frame sits in its sender's numbering of one channel. A sender starts a new stream
/// (a larger number, from a random start per process) when it forgets a channel's count, and
/// receivers start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) stream: u64,
    pub(crate) seq: u64,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) origin: Arc<str>,
    pub(crate) position: Position,
    pub(crate) sent_at_us: u64,
    pub(crate) body: Body,
    /// Whether its signature was checked (only when a key is set).
    pub(crate) signed: bool,
}

/// Why a frame was not taken; it is dropped and counted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("frame ends early: {0}")]
    Truncated(&'static str),
    #[error("{0} bytes follow the frame")]
    Trailing(usize),
    #[error("unknown {field} {value}")]
    Unknown { field: &'static str, value: u16 },
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("unsigned frame, and a shared secret is set")]
    Unsigned,
    #[error("signature does not match")]
    BadSignature,
}

impl WireError {
    /// The `reason` label of the invalid-frame counter.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            WireError::Unsigned => "unsigned",
            WireError::BadSignature => "bad_signature",
            WireError::TooLong { .. } => "too_long",
            _ => "malformed",
        }
    }
}

/// Encodes a frame for `channel`, signed when `key` is set. Refuses what a receiver would
/// refuse, so nothing is published only to be dropped on the other side.
pub(crate) fn encode(
    channel: &str,
    origin: &str,
    position: Position,
    sent_at_us: u64,
    body: &Body,
    key: Option<&Key>,
    max_payload: usize,
) -> Result<Bytes, WireError> {
    let (kind, target, opcode, payload): (u8, &str, u8, Bytes) = match body {
        Body::Heartbeat { interval } => {
            let ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
            (
                KIND_HEARTBEAT,
                "",
                OP_NONE,
                Bytes::copy_from_slice(&ms.to_be_bytes()),
            )
        }
        Body::PresenceSync(step) => {
            let byte = match step {
                Sync::Request => 0u8,
                Sync::Begin => 1,
                Sync::End => 2,
            };
            (KIND_SYNC, "", OP_NONE, Bytes::copy_from_slice(&[byte]))
        }
        Body::Presence { room, id, key } => {
            if room.is_empty() {
                return Err(WireError::Invalid("empty target"));
            }
            check_presence(origin, id.as_str(), key.as_deref())?;
            let key = key.as_deref().unwrap_or("");
            let mut payload = BytesMut::with_capacity(2 + id.as_str().len() + key.len());
            payload.put_u16(id.as_str().len() as u16);
            payload.put_slice(id.as_str().as_bytes());
            payload.put_slice(key.as_bytes());
            let kind = if body_is_join(body) {
                KIND_JOIN
            } else {
                KIND_LEAVE
            };
            (kind, &**room, OP_NONE, payload.freeze())
        }
        Body::Delivery { .. } | Body::Entry { .. } => {
            let (kind, target, message) = match body {
                Body::Entry { room, message } => (KIND_ENTRY, &**room, message),
                Body::Delivery {
                    target: Target::Room(room),
                    message,
                } => (KIND_ROOM, &**room, message),
                Body::Delivery {
                    target: Target::Connection(id),
                    message,
                } => (KIND_CONNECTION, id.as_str(), message),
                // `publish` routes only the three targets it knows; `All` is the rest.
                Body::Delivery { message, .. } => (KIND_ALL, "", message),
                Body::Heartbeat { .. } | Body::Presence { .. } | Body::PresenceSync(_) => {
                    return Err(WireError::Invalid("not a message"));
                }
            };
            if kind == KIND_ENTRY && target.is_empty() {
                return Err(WireError::Invalid("empty target"));
            }
            let (opcode, payload) = match message {
                Message::Text(text) => (OP_TEXT, text.as_bytes().clone()),
                Message::Binary(data) => (OP_BINARY, data.clone()),
                Message::Ping(data) => (OP_PING, data.clone()),
                Message::Pong(data) => (OP_PONG, data.clone()),
                // A frame that only reports (1005, 1006) travels without its code.
                Message::Close(Some(frame)) if frame.is_sendable() => {
                    let mut close = BytesMut::with_capacity(2 + frame.reason().len());
                    close.put_u16(frame.code());
                    close.put_slice(frame.reason().as_bytes());
                    (OP_CLOSE, close.freeze())
                }
                Message::Close(_) => (OP_CLOSE, Bytes::new()),
            };
            (kind, target, opcode, payload)
        }
    };
    check_len("origin", origin.len(), MAX_ORIGIN)?;
    if origin.is_empty() {
        return Err(WireError::Invalid("empty origin"));
    }
    check_len("target", target.len(), MAX_TARGET)?;
    check_len("payload", payload.len(), max_payload)?;
    check_payload(opcode, &payload)?;
    let mut out =
        BytesMut::with_capacity(HEADER + 7 + origin.len() + target.len() + payload.len() + TAG);
    out.put_u8(VERSION);
    out.put_u8(if key.is_some() { FLAG_SIGNED } else { 0 });
    out.put_u8(kind);
    out.put_u8(opcode);
    out.put_u64(position.stream);
    out.put_u64(position.seq);
    out.put_u64(sent_at_us);
    out.put_u8(origin.len() as u8);
    out.put_slice(origin.as_bytes());
    out.put_u16(target.len() as u16);
    out.put_slice(target.as_bytes());
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
    if let Some(key) = key {
        let tag = sign(key, channel.as_bytes(), &out);
        out.put_slice(&tag);
    }
    Ok(out.freeze())
}

fn body_is_join(body: &Body) -> bool {
    matches!(body, Body::Presence { key: Some(_), .. })
}

/// A presence change's fields: an id of the origin's node (a hub speaks only for its own
/// connections), and a key of 1 to [`MAX_TARGET`] bytes for a join.
fn check_presence(origin: &str, id: &str, key: Option<&str>) -> Result<(), WireError> {
    check_len("connection id", id.len(), MAX_TARGET)?;
    let node = |text: &str| text.split(['-', '/']).next().unwrap_or("").to_owned();
    if id.is_empty() || node(id).is_empty() || node(id) != node(origin) {
        return Err(WireError::Invalid("presence of another node's connection"));
    }
    if let Some(key) = key {
        check_len("presence key", key.len(), MAX_TARGET)?;
        if key.is_empty() {
            return Err(WireError::Invalid("empty presence key"));
        }
    }
    Ok(())
}

/// A presence payload: the connection id (2-byte length first), then the key (a join) or
/// nothing (a leave).
fn presence(origin: &str, room: String, mut payload: Bytes, join: bool) -> Result<Body, WireError> {
    if room.is_empty() {
        return Err(WireError::Invalid("empty target"));
    }
    let id = text(&mut payload, "connection id", 2, MAX_TARGET)?;
    let key = if join {
        let key =
            String::from_utf8(payload.to_vec()).map_err(|_| WireError::Utf8("presence key"))?;
        Some(Arc::from(key))
    } else if payload.is_empty() {
        None
    } else {
        return Err(WireError::Trailing(payload.len()));
    };
    check_presence(origin, &id, key.as_deref())?;
    Ok(Body::Presence {
        room: room.into(),
        id: ConnectionId::from(id.as_str()),
        key,
    })
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
    if len > max {
        return Err(WireError::TooLong { field, len, max });
    }
    Ok(())
}

/// The rules a peer's frame of this opcode obeys (RFC 6455 §5.5, §7.4).
fn check_payload(opcode: u8, payload: &[u8]) -> Result<(), WireError> {
    match opcode {
        OP_PING | OP_PONG => check_len("control payload", payload.len(), 125),
        OP_CLOSE if payload.is_empty() => Ok(()),
        OP_CLOSE if payload.len() < 2 => Err(WireError::Truncated("close code")),
        OP_CLOSE => close_frame(payload).map(|_| ()),
        OP_TEXT => std::str::from_utf8(payload)
            .map(|_| ())
            .map_err(|_| WireError::Utf8("text payload")),
        _ => Ok(()),
    }
}

/// A close payload of at least 2 bytes as a frame: a code a peer may receive (the rule of
/// `CloseFrame::new`) and a UTF-8 reason of at most 123 bytes.
fn close_frame(payload: &[u8]) -> Result<CloseFrame, WireError> {
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    check_len("close reason", payload.len() - 2, MAX_CLOSE_REASON)?;
    let reason = std::str::from_utf8(&payload[2..]).map_err(|_| WireError::Utf8("close reason"))?;
    CloseFrame::new(code, reason).map_err(|_| WireError::Unknown {
        field: "close code",
        value: code,
    })
}

pub(crate) fn sign(key: &Key, channel: &[u8], frame: &[u8]) -> [u8; TAG] {
    let mut mac = key.clone();
    let len = u16::try_from(channel.len()).unwrap_or(u16::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(channel);
    mac.update(frame);
    mac.finalize().into_bytes().into()
}

/// Decodes and checks a frame that arrived on `channel`. With a key, only frames signed with
/// it for this channel are taken.
pub(crate) fn decode(
    channel: &[u8],
    mut frame: Bytes,
    key: Option<&Key>,
    max_payload: usize,
) -> Result<Frame, WireError> {
    if frame.remaining() < HEADER {
        return Err(WireError::Truncated("header"));
    }
    let whole = frame.clone();
    let version = frame.get_u8();
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let flags = frame.get_u8();
    if flags & !FLAG_SIGNED != 0 {
        return Err(WireError::Unknown {
            field: "flags",
            value: flags.into(),
        });
    }
    let signed = flags & FLAG_SIGNED != 0;
    let kind = frame.get_u8();
    let opcode = frame.get_u8();
    let position = Position {
        stream: frame.get_u64(),
        seq: frame.get_u64(),
    };
    let sent_at_us = frame.get_u64();
    let origin = text(&mut frame, "origin", 1, MAX_ORIGIN)?;
    if origin.is_empty() {
        return Err(WireError::Invalid("empty origin"));
    }
    let target = text(&mut frame, "target", 2, MAX_TARGET)?;
    if frame.remaining() < 4 {
        return Err(WireError::Truncated("payload length"));
    }
    let len = frame.get_u32() as usize;
    check_len("payload", len, max_payload)?;
    if frame.remaining() < len {
        return Err(WireError::Truncated("payload"));
    }
    let payload = frame.split_to(len);
    let rest = frame.remaining();
    match (signed, key) {
        (true, _) if rest < TAG => return Err(WireError::Truncated("signature")),
        (true, _) if rest > TAG => return Err(WireError::Trailing(rest - TAG)),
        (false, _) if rest > 0 => return Err(WireError::Trailing(rest)),
        (false, Some(_)) => return Err(WireError::Unsigned),
        (true, Some(key)) => {
            let mut mac = key.clone();
            let len = u16::try_from(channel.len()).unwrap_or(u16::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(channel);
            mac.update(&whole[..whole.len() - TAG]);
            mac.verify_slice(&frame[..])
                .map_err(|_| WireError::BadSignature)?;
        }
        // Signed, but this instance has no secret to check it with: taken as unsigned.
        (true, None) | (false, None) => {}
    }
    check_payload(opcode, &payload)?;
    let body = if kind == KIND_SYNC {
        if opcode != OP_NONE || !target.is_empty() {
            return Err(WireError::Invalid(
                "presence sync with an opcode or a target",
            ));
        }
        Body::PresenceSync(match payload[..] {
            [0] => Sync::Request,
            [1] => Sync::Begin,
            [2] => Sync::End,
            _ => return Err(WireError::Invalid("presence sync step")),
        })
    } else if kind == KIND_JOIN || kind == KIND_LEAVE {
        if opcode != OP_NONE {
            return Err(WireError::Invalid("presence change with an opcode"));
        }
        presence(&origin, target, payload, kind == KIND_JOIN)?
    } else if kind == KIND_HEARTBEAT {
        if opcode != OP_NONE || !target.is_empty() || payload.len() != 4 {
            return Err(WireError::Invalid(
                "heartbeat with a target, opcode or odd payload",
            ));
        }
        let ms = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        if !(10..=3_600_000).contains(&ms) {
            return Err(WireError::Invalid(
                "heartbeat interval outside 10 ms to 1 h",
            ));
        }
        Body::Heartbeat {
            interval: Duration::from_millis(u64::from(ms)),
        }
    } else {
        let target = match kind {
            KIND_ENTRY if !target.is_empty() => Target::Room(target.into()),
            KIND_ALL if target.is_empty() => Target::All,
            KIND_ALL => return Err(WireError::Invalid("broadcast with a target")),
            KIND_ROOM if !target.is_empty() => Target::Room(target.into()),
            KIND_CONNECTION if !target.is_empty() => {
                Target::Connection(ConnectionId::from(target.as_str()))
            }
            KIND_ROOM | KIND_CONNECTION | KIND_ENTRY => {
                return Err(WireError::Invalid("empty target"));
            }
            value => {
                return Err(WireError::Unknown {
                    field: "kind",
                    value: value.into(),
                });
            }
        };
        let message = match opcode {
            OP_TEXT => Message::Text(
                Utf8Bytes::try_from_bytes(payload).map_err(|_| WireError::Utf8("text payload"))?,
            ),
            OP_BINARY => Message::Binary(payload),
            OP_PING => Message::Ping(payload),
            OP_PONG => Message::Pong(payload),
            OP_CLOSE if payload.is_empty() => Message::Close(None),
            OP_CLOSE => Message::Close(Some(close_frame(&payload)?)),
            value => {
                return Err(WireError::Unknown {
                    field: "opcode",
                    value: value.into(),
                });
            }
        };
        match (kind, target) {
            (KIND_ENTRY, Target::Room(room)) => Body::Entry { room, message },
            (_, target) => Body::Delivery { target, message },
        }
    };
    Ok(Frame {
        origin: origin.into(),
        position,
        sent_at_us,
        body,
        signed: signed && key.is_some(),
    })
}

/// A length-prefixed UTF-8 field (`prefix` bytes of length, big endian).
fn text(
    frame: &mut Bytes,
    field: &'static str,
    prefix: usize,
    max: usize,
) -> Result<String, WireError> {
    if frame.remaining() < prefix {
        return Err(WireError::Truncated(field));
    }
    let len = if prefix == 1 {
        usize::from(frame.get_u8())
    } else {
        usize::from(frame.get_u16())
    };
    check_len(field, len, max)?;
    if frame.remaining() < len {
        return Err(WireError::Truncated(field));
    }
    let bytes = frame.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn round_trip(body: Body, key: Option<&Key>) {
        let position = Position { stream: 3, seq: 42 };
        let bytes = encode("ch", "abc/1", position, 7, &body, key, MAX).unwrap();
        let frame = decode(b"ch", bytes, key, MAX).unwrap();
        assert_eq!(
            frame,
            Frame {
                origin: "abc/1".into(),
                position,
                sent_at_us: 7,
                body,
                signed: key.is_some(),
            }
        );
    }

    #[test]
    fn every_kind_and_opcode_round_trips_signed_or_not() {
        let secret = key(b"s3cret");
        for key in [None, Some(&secret)] {
            round_trip(
                Body::Heartbeat {
                    interval: Duration::from_millis(2000),
                },
                key,
            );
            for message in [
                Message::text("héllo"),
                Message::binary(vec![0u8, 1, 2]),
                Message::Ping(Bytes::from_static(b"p")),
                Message::Pong(Bytes::new()),
                Message::Close(None),
                Message::Close(Some(CloseFrame::new(4001, "kicked").unwrap())),
            ] {
                for target in [
                    Target::All,
                    Target::Room("lobby".into()),
                    Target::Connection(ConnectionId::from("00ff-3")),
                ] {
                    round_trip(
                        Body::Delivery {
                            target,
                            message: message.clone(),
                        },
                        key,
                    );
                }
                round_trip(
                    Body::Entry {
                        room: "lobby".into(),
                        message: message.clone(),
                    },
                    key,
                );
            }
            for step in [Sync::Request, Sync::Begin, Sync::End] {
                round_trip(Body::PresenceSync(step), key);
            }
            for presence_key in [Some("ann".into()), None] {
                round_trip(
                    Body::Presence {
                        room: "lobby".into(),
                        id: ConnectionId::from("abc-00ff"),
                        key: presence_key,
                    },
                    key,
                );
            }
        }
    }

    fn room_text(key: Option<&Key>) -> Bytes {
        encode(
            "ch",
            "o",
            Position { stream: 1, seq: 1 },
            1,
            &Body::Delivery {
                target: Target::Room("r".into()),
                message: Message::text("x"),
            },
            key,
            MAX,
        )
        .unwrap()
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let good = room_text(None);
        for cut in 0..good.len() {
            assert!(
                decode(b"ch", good.slice(..cut), None, MAX).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(
            decode(b"ch", longer.into(), None, MAX).unwrap_err(),
            WireError::Trailing(1)
        );
        let mut other_version = good.to_vec();
        other_version[0] = 1;
        assert_eq!(
            decode(b"ch", other_version.into(), None, MAX).unwrap_err(),
            WireError::Version(1)
        );
        let mut bad_kind = good.to_vec();
        bad_kind[2] = 9;
        assert!(matches!(
            decode(b"ch", bad_kind.into(), None, MAX),
            Err(WireError::Unknown { field: "kind", .. })
        ));
        let mut bad_opcode = good.to_vec();
        bad_opcode[3] = 3;
        assert!(matches!(
            decode(b"ch", bad_opcode.into(), None, MAX),
            Err(WireError::Unknown {
                field: "opcode",
                ..
            })
        ));
        let mut bad_text = good.to_vec();
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(
            decode(b"ch", bad_text.into(), None, MAX).unwrap_err(),
            WireError::Utf8("text payload")
        );
        assert!(matches!(
            decode(b"ch", good.clone(), None, 0),
            Err(WireError::TooLong {
                field: "payload",
                ..
            })
        ));
    }

    #[test]
    fn close_codes_and_control_payloads_are_checked_both_ways() {
        // Our side cannot make a frame with a code no peer may receive; one that only reports
        // (1005, 1006) travels without its code.
        for local in [CloseFrame::no_status(), CloseFrame::abnormal("gone")] {
            let body = Body::Delivery {
                target: Target::Connection(ConnectionId::from("n-1")),
                message: Message::Close(Some(local)),
            };
            let bytes = encode(
                "ch",
                "o",
                Position { stream: 1, seq: 1 },
                0,
                &body,
                None,
                MAX,
            )
            .unwrap();
            let Body::Delivery { message, .. } = decode(b"ch", bytes, None, MAX).unwrap().body
            else {
                panic!("not a delivery");
            };
            assert_eq!(message, Message::Close(None));
        }
        // Another instance (or anyone who can publish) can: such frames are refused.
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, u16::MAX] {
            let valid = Body::Delivery {
                target: Target::Connection(ConnectionId::from("n-1")),
                message: Message::Close(Some(CloseFrame::new(4001, "").unwrap())),
            };
            let mut bytes = encode(
                "ch",
                "o",
                Position { stream: 1, seq: 1 },
                0,
                &valid,
                None,
                MAX,
            )
            .unwrap()
            .to_vec();
            // Unsigned, the close payload ends the frame: here it is the code alone.
            let at = bytes.len() - 2;
            bytes[at..].copy_from_slice(&code.to_be_bytes());
            assert!(decode(b"ch", bytes.into(), None, MAX).is_err(), "{code}");
        }
        let ping = Body::Delivery {
            target: Target::All,
            message: Message::Ping(Bytes::from(vec![0u8; 126])),
        };
        assert!(
            encode(
                "ch",
                "o",
                Position { stream: 1, seq: 1 },
                0,
                &ping,
                None,
                MAX
            )
            .is_err()
        );
    }

    #[test]
    fn presence_changes_are_checked_both_ways() {
        let join = |origin: &str, id: &str, key: Option<&str>| {
            encode(
                "ch",
                origin,
                Position { stream: 1, seq: 1 },
                1,
                &Body::Presence {
                    room: "lobby".into(),
                    id: ConnectionId::from(id),
                    key: key.map(Arc::from),
                },
                None,
                MAX,
            )
        };
        // Only the origin's own node's connections, a key of 1 byte or more for a join.
        assert!(join("abc/1", "abd-1", Some("ann")).is_err());
        assert!(join("abc/1", "-1", Some("ann")).is_err());
        assert!(join("abc/1", "abc-1", Some("")).is_err());
        assert!(join("abc/1", "abc-1", Some(&"k".repeat(MAX_TARGET + 1))).is_err());
        let good = join("abc/1", "abc-1", Some("ann")).unwrap();
        for cut in 0..good.len() {
            assert!(decode(b"ch", good.slice(..cut), None, MAX).is_err());
        }
        // Another node's id, written by hand: the id field starts after the header, the
        // origin, the room and the payload's length.
        let mut forged = good.to_vec();
        let id_at = HEADER + 1 + "abc/1".len() + 2 + "lobby".len() + 4 + 2;
        forged[id_at + 2] = b'd';
        assert!(matches!(
            decode(b"ch", Bytes::from(forged), None, MAX),
            Err(WireError::Invalid(_))
        ));
        // A leave with a key, a join with an opcode, a key that is not UTF-8.
        let leave = join("abc/1", "abc-1", None).unwrap();
        let mut with_key = leave.to_vec();
        let len_at = HEADER + 1 + "abc/1".len() + 2 + "lobby".len();
        with_key[len_at + 3] += 1;
        with_key.push(b'x');
        assert!(decode(b"ch", Bytes::from(with_key), None, MAX).is_err());
        let mut with_opcode = good.to_vec();
        with_opcode[3] = OP_TEXT;
        assert!(decode(b"ch", Bytes::from(with_opcode), None, MAX).is_err());
        // A sync step out of range, or with a target.
        let sync = encode(
            "ch",
            "abc/1",
            Position { stream: 1, seq: 1 },
            1,
            &Body::PresenceSync(Sync::End),
            None,
            MAX,
        )
        .unwrap();
        let mut step = sync.to_vec();
        let last = step.len() - 1;
        step[last] = 3;
        assert!(decode(b"ch", Bytes::from(step), None, MAX).is_err());
        let mut bad_key = good.to_vec();
        let last = bad_key.len() - 1;
        bad_key[last] = 0xff;
        assert!(matches!(
            decode(b"ch", Bytes::from(bad_key), None, MAX),
            Err(WireError::Utf8(_))
        ));
    }

    #[test]
    fn a_secret_refuses_unsigned_altered_and_moved_frames() {
        let secret = key(b"s3cret");
        assert_eq!(
            decode(b"ch", room_text(None), Some(&secret), MAX).unwrap_err(),
            WireError::Unsigned
        );
        let signed = room_text(Some(&secret));
        let mut altered = signed.to_vec();
        let at = altered.len() - TAG - 1;
        altered[at] = b'y';
        assert_eq!(
            decode(b"ch", altered.into(), Some(&secret), MAX).unwrap_err(),
            WireError::BadSignature
        );
        // The same frame replayed on another channel.
        assert_eq!(
            decode(b"other", signed.clone(), Some(&secret), MAX).unwrap_err(),
            WireError::BadSignature
        );
        assert_eq!(
            decode(b"ch", signed.clone(), Some(&key(b"other")), MAX).unwrap_err(),
            WireError::BadSignature
        );
        // Without a secret, a signed frame is still read (nothing to check it with).
        assert!(decode(b"ch", signed, None, MAX).is_ok());
    }
}
