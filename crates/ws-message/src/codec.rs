//! GoFr's value rules: [`encode`] (a value into the message it becomes) and [`decode`] (a
//! message's data into the type asked for), with their errors.

use std::{
    any::{Any, TypeId},
    cell::RefCell,
};

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::{Message, Utf8Bytes};

/// Why a message could not be decoded into the type asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not JSON of the expected shape. The text says where and what was wrong.
    #[error("message is not valid JSON for {target}: {source}")]
    Json {
        /// The Rust type that was asked for.
        target: &'static str,
        /// serde_json's error, with line and column.
        source: serde_json::Error,
    },
    /// A binary message was bound into a string but is not UTF-8.
    #[error("binary message is not valid UTF-8 and cannot be bound into a string")]
    NotUtf8,
    /// Only text and binary messages carry data to bind.
    #[error("a {kind} frame carries no data to bind")]
    NotData {
        /// The kind of frame: "ping", "pong" or "close".
        kind: &'static str,
    },
}

/// Why a value could not be turned into a message.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {target} as JSON: {source}")]
pub struct EncodeError {
    target: &'static str,
    #[source]
    source: serde_json::Error,
}

impl EncodeError {
    /// Wraps a serde_json error met while encoding a `T`.
    pub fn from_json<T: ?Sized>(source: serde_json::Error) -> Self {
        EncodeError {
            target: std::any::type_name::<T>(),
            source,
        }
    }
}

/// Turns a value into the message GoFr users expect on the wire.
///
/// | value | message |
/// |---|---|
/// | `String`, `str`, `&'static str`, [`Utf8Bytes`] | text frame with the raw text |
/// | [`Bytes`], `Vec<u8>`, `[u8]`, `&'static [u8]` | binary frame with the raw bytes |
/// | [`Message`] | itself |
/// | `()`, `None`, anything that serializes to JSON `null` | nothing (`Ok(None)`) |
/// | any other `Serialize` value | text frame with its JSON |
///
/// GoFr sends every value as text and writes the literal `null` for a nil result; here bytes
/// stay binary and "nothing" writes nothing. The value is borrowed: its text or bytes are
/// copied (a [`Message`], [`Bytes`] or [`Utf8Bytes`] is shared, not copied);
/// [`encode_owned`] moves them instead. See [`Encode`] for which types it takes.
///
/// ```
/// use ws_message::{encode, Message};
///
/// let reply = String::from("hi");
/// assert_eq!(encode(&reply).unwrap(), Some(Message::text("hi")));
/// assert_eq!(encode("hi").unwrap(), Some(Message::text("hi")));
/// assert_eq!(encode(&vec![0u8, 159]).unwrap(), Some(Message::binary(vec![0u8, 159])));
/// assert_eq!(encode(&serde_json::json!({"n": 1})).unwrap(), Some(Message::text(r#"{"n":1}"#)));
/// assert_eq!(encode(&()).unwrap(), None);
/// ```
pub fn encode<T: Encode + ?Sized>(value: &T) -> Result<Option<Message>, EncodeError> {
    value.to_message()
}

/// [`encode`] for a value the caller gives up: a `String`, `Vec<u8>`, [`Bytes`],
/// [`Utf8Bytes`] or [`Message`] moves into the message instead of being copied. Handlers'
/// return values are written through it.
///
/// ```
/// use ws_message::{encode_owned, Message};
///
/// assert_eq!(encode_owned(String::from("hi")).unwrap(), Some(Message::text("hi")));
/// assert_eq!(encode_owned(42).unwrap(), Some(Message::text("42")));
/// ```
pub fn encode_owned<T: Serialize + 'static>(value: T) -> Result<Option<Message>, EncodeError> {
    let value = match cast::<T, Message>(value) {
        Ok(message) => return Ok(Some(message)),
        Err(value) => value,
    };
    let value = match cast::<T, String>(value) {
        Ok(text) => return Ok(Some(Message::text(text))),
        Err(value) => value,
    };
    let value = match cast::<T, Utf8Bytes>(value) {
        Ok(text) => return Ok(Some(Message::Text(text))),
        Err(value) => value,
    };
    let value = match cast::<T, Bytes>(value) {
        Ok(data) => return Ok(Some(Message::Binary(data))),
        Err(value) => value,
    };
    let value = match cast::<T, Vec<u8>>(value) {
        Ok(data) => return Ok(Some(Message::binary(data))),
        Err(value) => value,
    };
    // Nothing to move: the borrowed rules give the same message.
    encode(&value)
}

/// A value [`encode`] can take by reference: every sized `Serialize + 'static` type, `str`
/// and `[u8]`.
///
/// The rules tell `String` from other values by its type, which safe Rust can only ask of a
/// `'static` type; behind a reference that costs nothing in practice, since only the
/// referent must be `'static` (`&value` of a local `String` or struct is fine). A value that
/// borrows (`Event<'a>`) can be serialized with serde_json and written as text.
pub trait Encode: Serialize {
    /// The message this value becomes, by [`encode`]'s rules.
    #[doc(hidden)]
    fn to_message(&self) -> Result<Option<Message>, EncodeError>;
}

impl<T: Serialize + 'static> Encode for T {
    fn to_message(&self) -> Result<Option<Message>, EncodeError> {
        let any: &dyn Any = self;
        if let Some(message) = any.downcast_ref::<Message>() {
            return Ok(Some(message.clone()));
        }
        if let Some(text) = any.downcast_ref::<String>() {
            return Ok(Some(Message::text(text.clone())));
        }
        if let Some(text) = any.downcast_ref::<&'static str>() {
            return Ok(Some(Message::text(*text)));
        }
        if let Some(text) = any.downcast_ref::<Utf8Bytes>() {
            return Ok(Some(Message::Text(text.clone())));
        }
        if let Some(data) = any.downcast_ref::<Bytes>() {
            return Ok(Some(Message::Binary(data.clone())));
        }
        if let Some(data) = any.downcast_ref::<Vec<u8>>() {
            return Ok(Some(Message::binary(Bytes::copy_from_slice(data))));
        }
        if let Some(data) = any.downcast_ref::<&'static [u8]>() {
            return Ok(Some(Message::binary(Bytes::from_static(data))));
        }
        to_json_text(self).map_err(EncodeError::from_json::<T>)
    }
}

impl Encode for str {
    fn to_message(&self) -> Result<Option<Message>, EncodeError> {
        Ok(Some(Message::text(self.to_owned())))
    }
}

impl Encode for [u8] {
    fn to_message(&self) -> Result<Option<Message>, EncodeError> {
        Ok(Some(Message::binary(Bytes::copy_from_slice(self))))
    }
}

/// The largest scratch buffer a thread keeps between encodes.
const MAX_KEPT_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where values are serialized before they become a message, reused by every encode on
    /// the thread. The message then takes one allocation of the exact size; a fresh buffer
    /// would take up to three (the buffer, its growth, and the header `Bytes` adds to a
    /// buffer with spare room).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `value` as JSON text; `None` for `null`.
fn to_json_text<T: Serialize + ?Sized>(value: &T) -> Result<Option<Message>, serde_json::Error> {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let message = json_message(value, &mut buffer);
            if buffer.capacity() > MAX_KEPT_SCRATCH {
                *buffer = Vec::new();
            }
            message
        }
        // A `Serialize` impl that encodes while being encoded: this level gets its own buffer.
        Err(_) => json_message(value, &mut Vec::new()),
    })
}

fn json_message<T: Serialize + ?Sized>(
    value: &T,
    buffer: &mut Vec<u8>,
) -> Result<Option<Message>, serde_json::Error> {
    serde_json::to_writer(&mut *buffer, value)?;
    if buffer.as_slice() == b"null" {
        return Ok(None);
    }
    // serde_json writes UTF-8; checking it again is the price of staying free of `unsafe`.
    Utf8Bytes::try_from_bytes(Bytes::copy_from_slice(buffer))
        .map(|text| Some(Message::Text(text)))
        .map_err(serde::ser::Error::custom)
}

/// Decodes the data of a message into `T`: GoFr's `Bind`, with Rust's types.
///
/// | `T` | from a text frame | from a binary frame |
/// |---|---|---|
/// | `String`, [`Utf8Bytes`] | the raw text (no JSON quoting) | the bytes, if UTF-8 |
/// | [`Bytes`], `Vec<u8>` | the raw bytes | the raw bytes |
/// | [`Message`] | the message itself | the message itself |
/// | any other `DeserializeOwned` | JSON | JSON |
///
/// Decoding is pure: calling it twice gives the same value. `T: 'static` because the raw
/// targets are told apart by their type, which safe Rust asks only of `'static` types; a
/// `DeserializeOwned` type owns its data, so it is one (a type that borrows, such as
/// `Cow<'a, str>`, is not, and gains nothing from the message it cannot borrow from).
///
/// ```
/// use ws_message::{decode, Message};
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Point { x: i32, y: i32 }
///
/// let msg = Message::text(r#"{"x":1,"y":2}"#);
/// assert_eq!(decode::<Point>(&msg).unwrap(), Point { x: 1, y: 2 });
/// assert_eq!(decode::<String>(&msg).unwrap(), r#"{"x":1,"y":2}"#);
/// assert!(decode::<Point>(&Message::text("{")).is_err());
/// ```
pub fn decode<T: DeserializeOwned + 'static>(message: &Message) -> Result<T, DecodeError> {
    let payload = match message {
        Message::Text(text) => text.as_bytes(),
        Message::Binary(data) => data,
        Message::Ping(_) => return Err(DecodeError::NotData { kind: "ping" }),
        Message::Pong(_) => return Err(DecodeError::NotData { kind: "pong" }),
        Message::Close(_) => return Err(DecodeError::NotData { kind: "close" }),
    };
    let target = TypeId::of::<T>();
    if target == TypeId::of::<Message>() {
        return Ok(cast_ok(message.clone()));
    }
    if target == TypeId::of::<String>() || target == TypeId::of::<Utf8Bytes>() {
        let text = match message {
            Message::Text(text) => text.clone(),
            _ => Utf8Bytes::try_from_bytes(payload.clone()).map_err(|_| DecodeError::NotUtf8)?,
        };
        return Ok(match cast::<Utf8Bytes, T>(text) {
            Ok(text) => text,
            Err(text) => cast_ok(text.as_str().to_owned()),
        });
    }
    if target == TypeId::of::<Bytes>() {
        return Ok(cast_ok(payload.clone()));
    }
    if target == TypeId::of::<Vec<u8>>() {
        return Ok(cast_ok(payload.to_vec()));
    }
    // A text payload is known to be UTF-8: parsing it as `str` skips serde_json's own check.
    let parsed = match message {
        Message::Text(text) => serde_json::from_str(text.as_str()),
        _ => serde_json::from_slice(payload),
    };
    parsed.map_err(|source| DecodeError::Json {
        target: std::any::type_name::<T>(),
        source,
    })
}

/// Moves `value` into a `U` when `T` and `U` are the same type; gives it back otherwise.
/// A safe stand-in for specialization.
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    if let Some(same) = (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>()
        && let Some(value) = same.take()
    {
        return Ok(value);
    }
    match slot {
        Some(value) => Err(value),
        None => unreachable!("the slot is only emptied when the cast succeeds"),
    }
}

/// [`cast`] where the caller has compared the type ids already.
fn cast_ok<T: 'static, U: 'static>(value: T) -> U {
    match cast::<T, U>(value) {
        Ok(value) => value,
        Err(_) => unreachable!("caller checked TypeId equality"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Chat {
        from: String,
        text: String,
    }

    #[test]
    fn strings_and_bytes_are_raw() {
        assert_eq!(
            encode(&String::from("x")).unwrap(),
            Some(Message::text("x"))
        );
        assert_eq!(
            encode(&Bytes::from_static(b"\x00\xff")).unwrap(),
            Some(Message::binary(&b"\x00\xff"[..]))
        );
        assert_eq!(
            encode(&b"raw"[..]).unwrap(),
            Some(Message::binary(&b"raw"[..]))
        );
    }

    /// Every row of the rules table, borrowed and owned: the same message either way.
    #[test]
    fn borrowed_and_owned_values_give_the_same_message() {
        fn both<T: Serialize + Clone + 'static>(value: T) -> Option<Message> {
            let borrowed = encode(&value).unwrap();
            assert_eq!(borrowed, encode_owned(value.clone()).unwrap());
            borrowed
        }
        let text = Some(Message::text("hi"));
        let binary = Some(Message::binary(&b"\x00\xff"[..]));
        assert_eq!(both(String::from("hi")), text);
        assert_eq!(both("hi"), text);
        assert_eq!(both(Utf8Bytes::from("hi")), text);
        assert_eq!(both(Message::text("hi")), text);
        assert_eq!(
            both(Message::Ping(Bytes::from_static(b"p"))),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(both(Bytes::from_static(b"\x00\xff")), binary);
        assert_eq!(both(vec![0u8, 0xff]), binary);
        assert_eq!(both(&b"\x00\xff"[..]), binary);
        assert_eq!(both(()), None);
        assert_eq!(both(None::<String>), None);
        assert_eq!(both(vec![1i32, 2]), Some(Message::text("[1,2]")));
        assert_eq!(both(Vec::<i32>::new()), Some(Message::text("[]")));
        assert_eq!(
            both(serde_json::json!("hi")),
            Some(Message::text(r#""hi""#))
        );
        // Unsized referents: `str` and `[u8]` themselves.
        assert_eq!(encode("hi").unwrap(), text);
        assert_eq!(encode(&b"\x00\xff"[..]).unwrap(), binary);
    }

    /// Encodes its inner value while being encoded, as a `Serialize` impl may.
    struct Nested(u32);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let inner = encode(&self.0).map_err(serde::ser::Error::custom)?;
            let text = inner.as_ref().map_or("", |m| m.as_text().unwrap_or(""));
            serializer.serialize_str(text)
        }
    }

    #[test]
    fn an_encode_inside_an_encode_gets_its_own_buffer() {
        assert_eq!(
            encode(&vec![Nested(1), Nested(22)]).unwrap(),
            Some(Message::text(r#"["1","22"]"#))
        );
        // The thread's buffer is still usable afterwards, and holds nothing of the last value.
        assert_eq!(encode(&7).unwrap(), Some(Message::text("7")));
    }

    #[test]
    fn structs_numbers_and_maps_are_json_text() {
        let chat = Chat {
            from: "a".into(),
            text: "b".into(),
        };
        assert_eq!(
            encode(&chat).unwrap(),
            Some(Message::text(r#"{"from":"a","text":"b"}"#))
        );
        assert_eq!(encode(&42).unwrap(), Some(Message::text("42")));
        let map: HashMap<&str, i32> = [("k", 1)].into();
        assert_eq!(encode(&map).unwrap(), Some(Message::text(r#"{"k":1}"#)));
    }

    #[test]
    fn nothing_writes_nothing() {
        assert_eq!(encode(&()).unwrap(), None);
        assert_eq!(encode(&None::<Chat>).unwrap(), None);
        assert_eq!(encode(&serde_json::Value::Null).unwrap(), None);
    }

    #[test]
    fn decode_is_repeatable_and_typed() {
        let msg = Message::text(r#"{"from":"a","text":"b"}"#);
        let first: Chat = decode(&msg).unwrap();
        let second: Chat = decode(&msg).unwrap();
        assert_eq!(first, second);
        let err = decode::<Chat>(&Message::text(r#"{"from":1}"#)).unwrap_err();
        assert!(matches!(err, DecodeError::Json { .. }));
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn decode_raw_targets() {
        let bin = Message::binary(vec![0u8, 1, 2]);
        assert_eq!(
            decode::<Bytes>(&bin).unwrap(),
            Bytes::from_static(&[0, 1, 2])
        );
        assert_eq!(decode::<Vec<u8>>(&bin).unwrap(), vec![0, 1, 2]);
        assert_eq!(decode::<String>(&bin).unwrap(), "\u{0}\u{1}\u{2}");
        assert!(matches!(
            decode::<String>(&Message::binary(vec![0xffu8])),
            Err(DecodeError::NotUtf8)
        ));
        assert_eq!(decode::<String>(&Message::text("")).unwrap(), "");
        // A JSON array of numbers into a non-byte vector is still JSON.
        assert_eq!(
            decode::<Vec<i32>>(&Message::text("[1,2]")).unwrap(),
            vec![1, 2]
        );
        assert!(matches!(
            decode::<String>(&Message::Ping(Bytes::new())),
            Err(DecodeError::NotData { kind: "ping" })
        ));
    }

    #[test]
    fn map_numbers_keep_their_type() {
        let map: HashMap<String, serde_json::Value> =
            decode(&Message::text(r#"{"a":1,"b":1.5}"#)).unwrap();
        assert!(map["a"].is_i64());
        assert!(map["b"].is_f64());
    }
}
