//! The envelope as it travels through Redis: a small binary frame, versioned so a later
//! format can be told apart.
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version ([`VERSION`]) |
//! | 1 | kind: 0 heartbeat, 1 all, 2 room, 3 connection |
//! | 1 | opcode: 0 none (heartbeat), 1 text, 2 binary, 8 close, 9 ping, 10 pong |
//! | 4 | stream: which numbering the sequence number belongs to, big endian |
//! | 8 | sequence number per origin and channel within the stream, big endian |
//! | 8 | send time, microseconds since the Unix epoch, big endian |
//! | 2 + n | origin (the sending hub), length-prefixed UTF-8 |
//! | 2 + n | target (room name or connection id; empty otherwise), length-prefixed UTF-8 |
//! | rest | payload (close: code, 2 bytes, then the reason; heartbeat: interval in ms, 4 bytes) |

use std::{sync::Arc, time::Duration};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use ws_context::{CloseCodeError, CloseFrame, ConnectionId, Message, Target, Utf8Bytes};

/// The format version this crate writes and reads.
pub(crate) const VERSION: u8 = 1;

const KIND_HEARTBEAT: u8 = 0;
const KIND_ALL: u8 = 1;
const KIND_ROOM: u8 = 2;
const KIND_CONNECTION: u8 = 3;

const OP_NONE: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// What a frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// "This hub is alive; expect the next one within `interval`."
    Heartbeat { interval: Duration },
    /// A delivery for the receiving instance's connections.
    Delivery { target: Target, message: Message },
}

/// Where a frame sits in its sender's numbering of one channel. A sender that forgets a
/// channel's count (to bound its memory) starts a new stream, and receivers start afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) stream: u32,
    pub(crate) seq: u64,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) origin: Arc<str>,
    pub(crate) position: Position,
    pub(crate) sent_at_us: u64,
    pub(crate) body: Body,
}

/// Why a frame from Redis was not understood; it is dropped and counted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    #[error("frame ends early: {0}")]
    Truncated(&'static str),
    #[error("unknown {field} {value}")]
    Unknown { field: &'static str, value: u8 },
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    /// A close with a code no peer may receive: another instance's bug, or not ours.
    #[error("close envelope: {0}")]
    CloseCode(#[from] CloseCodeError),
}

pub(crate) fn encode(origin: &str, position: Position, sent_at_us: u64, body: &Body) -> Bytes {
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
        Body::Delivery { target, message } => {
            let (kind, target) = match target {
                Target::Room(room) => (KIND_ROOM, &**room),
                Target::Connection(id) => (KIND_CONNECTION, id.as_str()),
                // `publish` routes only the three targets it knows; `All` is the rest.
                _ => (KIND_ALL, ""),
            };
            let (opcode, payload) = match message {
                Message::Text(text) => (OP_TEXT, text.as_bytes().clone()),
                Message::Binary(data) => (OP_BINARY, data.clone()),
                Message::Ping(data) => (OP_PING, data.clone()),
                Message::Pong(data) => (OP_PONG, data.clone()),
                // A frame that only reports (1005, 1006) travels as a close without a code,
                // as it would go on the wire.
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
    let origin = short(origin);
    let target = short(target);
    let mut out = BytesMut::with_capacity(27 + origin.len() + target.len() + payload.len());
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u8(opcode);
    out.put_u32(position.stream);
    out.put_u64(position.seq);
    out.put_u64(sent_at_us);
    out.put_u16(origin.len() as u16);
    out.put_slice(origin);
    out.put_u16(target.len() as u16);
    out.put_slice(target);
    out.put_slice(&payload);
    out.freeze()
}

/// At most `u16::MAX` bytes: room names and ids are far shorter; a longer one is cut rather
/// than corrupting the frame.
fn short(text: &str) -> &[u8] {
    &text.as_bytes()[..text.len().min(usize::from(u16::MAX))]
}

pub(crate) fn decode(mut frame: Bytes) -> Result<Frame, WireError> {
    if frame.remaining() < 23 {
        return Err(WireError::Truncated("header"));
    }
    let version = frame.get_u8();
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = frame.get_u8();
    let opcode = frame.get_u8();
    let position = Position {
        stream: frame.get_u32(),
        seq: frame.get_u64(),
    };
    let sent_at_us = frame.get_u64();
    let origin = text(&mut frame, "origin")?;
    let target = text(&mut frame, "target")?;
    let payload = frame;
    let body = if kind == KIND_HEARTBEAT {
        if payload.len() < 4 {
            return Err(WireError::Truncated("heartbeat interval"));
        }
        let ms = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        Body::Heartbeat {
            interval: Duration::from_millis(u64::from(ms)),
        }
    } else {
        let target = match kind {
            KIND_ALL => Target::All,
            KIND_ROOM => Target::Room(target.into()),
            KIND_CONNECTION => Target::Connection(ConnectionId::from(target.as_str())),
            value => {
                return Err(WireError::Unknown {
                    field: "kind",
                    value,
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
            OP_CLOSE if payload.len() < 2 => return Err(WireError::Truncated("close code")),
            OP_CLOSE => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = std::str::from_utf8(&payload[2..])
                    .map_err(|_| WireError::Utf8("close reason"))?;
                // Checked as any close frame is made: a code no peer may receive drops the
                // frame (counted by the reader), and the reason is cut to 123 bytes.
                Message::Close(Some(CloseFrame::new(code, reason)?))
            }
            value => {
                return Err(WireError::Unknown {
                    field: "opcode",
                    value,
                });
            }
        };
        Body::Delivery { target, message }
    };
    Ok(Frame {
        origin: origin.into(),
        position,
        sent_at_us,
        body,
    })
}

fn text(frame: &mut Bytes, field: &'static str) -> Result<String, WireError> {
    if frame.remaining() < 2 {
        return Err(WireError::Truncated(field));
    }
    let len = usize::from(frame.get_u16());
    if frame.remaining() < len {
        return Err(WireError::Truncated(field));
    }
    let bytes = frame.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Utf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: Body) {
        let position = Position { stream: 3, seq: 42 };
        let bytes = encode("abc/1", position, 7, &body);
        let frame = decode(bytes).unwrap();
        assert_eq!(
            frame,
            Frame {
                origin: "abc/1".into(),
                position,
                sent_at_us: 7,
                body
            }
        );
    }

    #[test]
    fn every_kind_and_opcode_round_trips() {
        round_trip(Body::Heartbeat {
            interval: Duration::from_millis(2000),
        });
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
                round_trip(Body::Delivery {
                    target,
                    message: message.clone(),
                });
            }
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let good = encode(
            "o",
            Position { stream: 1, seq: 1 },
            1,
            &Body::Delivery {
                target: Target::Room("r".into()),
                message: Message::text("x"),
            },
        );
        for cut in 0..good.len() - 1 {
            assert!(decode(good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut other_version = good.to_vec();
        other_version[0] = 2;
        assert_eq!(
            decode(other_version.into()).unwrap_err(),
            WireError::Version(2)
        );
        let mut bad_kind = good.to_vec();
        bad_kind[1] = 9;
        assert!(matches!(
            decode(bad_kind.into()),
            Err(WireError::Unknown { field: "kind", .. })
        ));
        let mut bad_text = good.to_vec();
        *bad_text.last_mut().unwrap() = 0xff;
        assert_eq!(
            decode(bad_text.into()).unwrap_err(),
            WireError::Utf8("text payload")
        );
    }

    /// Issue 12: a close envelope is checked as any close frame: a code no peer may receive
    /// is an error (the reader drops and counts it), a long reason is cut to 123 bytes.
    #[test]
    fn close_envelopes_with_codes_a_peer_may_not_receive_are_errors() {
        let close = |code: u16, reason: &str| {
            let valid = CloseFrame::new(4001, "").unwrap();
            let mut bytes = encode(
                "o",
                Position { stream: 1, seq: 1 },
                1,
                &Body::Delivery {
                    target: Target::Connection(ConnectionId::from("n-1")),
                    message: Message::Close(Some(valid)),
                },
            )
            .to_vec();
            // The close payload ends the frame: the code, then the reason.
            let at = bytes.len() - 2;
            bytes[at..].copy_from_slice(&code.to_be_bytes());
            bytes.extend_from_slice(reason.as_bytes());
            decode(bytes.into())
        };
        for code in [1005, 1006, 1015] {
            assert_eq!(
                close(code, "x").unwrap_err(),
                WireError::CloseCode(CloseCodeError::LocalOnly(code))
            );
        }
        for code in [0, 1004, 2999, 5000] {
            assert_eq!(
                close(code, "x").unwrap_err(),
                WireError::CloseCode(CloseCodeError::Invalid(code))
            );
        }
        let Body::Delivery { message, .. } = close(4002, &"r".repeat(200)).unwrap().body else {
            panic!("not a delivery");
        };
        assert_eq!(
            message,
            Message::Close(Some(CloseFrame::new(4002, "r".repeat(123)).unwrap()))
        );
        // A frame that only reports travels without its code.
        let bytes = encode(
            "o",
            Position { stream: 1, seq: 1 },
            1,
            &Body::Delivery {
                target: Target::All,
                message: Message::Close(Some(CloseFrame::abnormal("gone"))),
            },
        );
        let Body::Delivery { message, .. } = decode(bytes).unwrap().body else {
            panic!("not a delivery");
        };
        assert_eq!(message, Message::Close(None));
    }
}
