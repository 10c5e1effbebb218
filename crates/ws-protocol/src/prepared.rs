//! [`PreparedMessage`]: a message encoded once and sent to many connections.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::{
    MAX_HEADER, Message, SendError,
    deflate::{compress_once, worth_compressing},
    output::encode_header,
};

/// A message encoded once and sent to many connections (gorilla/websocket's `PreparedMessage`
/// idea), with [`Connection::send_prepared`](crate::Connection::send_prepared).
///
/// The bytes are made lazily, once per distinct set of parameters, and shared (`Bytes`)
/// between connections: the plain frame; the compressed payload (and its frame) per
/// compression level and window size, for connections without server-side context takeover. A
/// connection with context takeover compresses the message itself (its compressor's state is
/// its own). Client connections share the compressed payload but mask it themselves, since
/// every frame needs its own masking key.
///
/// Cheap to clone and to share between threads (an `Arc` inside).
///
/// ```
/// use ws_protocol::{Config, Connection, Message, PreparedMessage};
/// use bytes::Buf;
///
/// let hello = PreparedMessage::new(Message::text("hello, everyone"));
/// let mut connections: Vec<Connection> = (0..3).map(|_| Connection::new(Config::server())).collect();
/// for connection in &mut connections {
///     connection.send_prepared(&hello).unwrap();
///     assert_eq!(connection.output().chunk(), b"\x81\x0fhello, everyone");
/// }
/// ```
#[derive(Clone)]
pub struct PreparedMessage {
    inner: Arc<Inner>,
}

/// How a server connection frames the data messages it can share with other connections:
/// plain, or compressed with one level and window (no server context takeover) above a
/// threshold. From [`Connection::shared_framing`](crate::Connection::shared_framing), for
/// [`PreparedMessage::frame`].
///
/// Eight bytes: every connection's writer for other tasks keeps one (ws-upgrader's
/// `DirectWriter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedFraming {
    /// Whether permessage-deflate is on; the three fields below count only then.
    compress: bool,
    level: u8,
    window_bits: u8,
    /// Payloads shorter than this go out plain.
    threshold: u32,
}

impl SharedFraming {
    pub(crate) const PLAIN: SharedFraming = SharedFraming {
        compress: false,
        level: 0,
        window_bits: 0,
        threshold: 0,
    };

    /// Compressed with this (level, window bits) above `threshold`; `None` for a level that
    /// is not one (over 255), which then is not shared.
    pub(crate) fn compressed(key: (u32, u8), threshold: usize) -> Option<SharedFraming> {
        Some(SharedFraming {
            compress: true,
            level: u8::try_from(key.0).ok()?,
            window_bits: key.1,
            threshold: u32::try_from(threshold).unwrap_or(u32::MAX),
        })
    }

    /// The compression key and threshold, when compressed.
    fn compression(self) -> Option<((u32, u8), usize)> {
        self.compress.then(|| {
            let threshold = usize::try_from(self.threshold).unwrap_or(usize::MAX);
            ((u32::from(self.level), self.window_bits), threshold)
        })
    }
}

struct Inner {
    message: Message,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    plain_frame: Option<Bytes>,
    /// (level, window bits) -> compressed payload, and its unmasked frame once made.
    compressed: Vec<((u32, u8), Bytes, Option<Bytes>)>,
    /// How many times the payload was compressed for a shared parameter set.
    compressions: usize,
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("message", &self.inner.message)
            .finish_non_exhaustive()
    }
}

impl PreparedMessage {
    /// Prepares `message`; nothing is encoded until a connection sends it. A small payload is
    /// copied ([`Message::detach`]): a prepared message may wait in many queues, and a payload
    /// read from a peer may be a slice of a block that it would keep whole.
    pub fn new(message: Message) -> Self {
        PreparedMessage {
            inner: Arc::new(Inner {
                message: message.detach(),
                cache: Mutex::new(Cache::default()),
            }),
        }
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.inner.message
    }

    /// How many times the payload has been compressed to be shared: at most once per distinct
    /// set of parameters (compression level, window size), however many connections sent it.
    /// Connections with server context takeover compress with their own state and are not
    /// counted. For tests and measurements.
    pub fn compressions(&self) -> usize {
        self.cache().compressions
    }

    /// The whole frame of this data message for server connections that frame it as
    /// `framing` ([`Connection::shared_framing`](crate::Connection::shared_framing)): the bytes
    /// [`send_prepared`](crate::Connection::send_prepared) queues on such a connection, made
    /// once and shared. `None` for a control message or a close, which are not shared.
    ///
    /// ```
    /// use ws_protocol::{Config, Connection, Message, PreparedMessage};
    /// use bytes::Buf;
    ///
    /// let hello = PreparedMessage::new(Message::text("hello"));
    /// let mut connection = Connection::new(Config::server());
    /// let framing = connection.shared_framing().unwrap();
    /// let frame = hello.frame(framing).unwrap().unwrap();
    /// connection.send_prepared(&hello).unwrap();
    /// assert_eq!(connection.output().chunk(), &frame[..]);
    /// ```
    pub fn frame(&self, framing: SharedFraming) -> Option<Result<Bytes, SendError>> {
        let message = &self.inner.message;
        if !message.is_data() {
            return None;
        }
        Some(match framing.compression() {
            Some((key, threshold)) if message.len() >= threshold => self
                .server_frame(Some(key), |compressed, payload| {
                    worth_compressing(compressed, payload, threshold)
                }),
            _ => self.server_frame(None, |_, _| false),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Borrowed, not cloned: it runs once per receiver of a broadcast.
    fn opcode_and_payload(&self) -> (u8, &[u8]) {
        match &self.inner.message {
            Message::Text(text) => (0x1, text.as_bytes()),
            Message::Binary(data) | Message::Ping(data) | Message::Pong(data) => (0x2, data),
            Message::Close(_) => (0x2, &[]),
        }
    }

    /// The compressed payload for this level and window, made once (client connections, which
    /// mask it themselves).
    pub(crate) fn compressed(&self, key: (u32, u8)) -> Result<Bytes, SendError> {
        let mut cache = self.cache();
        let index = self.compressed_index(&mut cache, key)?;
        Ok(cache.compressed[index].1.clone())
    }

    /// The whole unmasked frame for a server connection: plain (`key` is `None`), or around
    /// the payload compressed with this level and window, unless `worth` finds that the
    /// compressed payload is not worth sending (then plain). Each frame is made once and
    /// shared; one lock per connection, since a broadcast calls this once per receiver.
    pub(crate) fn server_frame(
        &self,
        key: Option<(u32, u8)>,
        worth: impl FnOnce(&[u8], &[u8]) -> bool,
    ) -> Result<Bytes, SendError> {
        let (opcode, payload) = self.opcode_and_payload();
        let mut cache = self.cache();
        let compressed_index = match key {
            Some(key) => Some(self.compressed_index(&mut cache, key)?),
            None => None,
        };
        let Cache {
            plain_frame,
            compressed,
            ..
        } = &mut *cache;
        if let Some(index) = compressed_index {
            let (_, bytes, frame_slot) = &mut compressed[index];
            if worth(bytes, payload) {
                return Ok(frame_slot
                    .get_or_insert_with(|| frame(0xc0 | opcode, bytes))
                    .clone());
            }
        }
        Ok(plain_frame
            .get_or_insert_with(|| frame(0x80 | opcode, payload))
            .clone())
    }

    /// Where the payload compressed with `key` is in the cache, compressing it the first time.
    fn compressed_index(&self, cache: &mut Cache, key: (u32, u8)) -> Result<usize, SendError> {
        if let Some(index) = cache.compressed.iter().position(|(k, ..)| *k == key) {
            return Ok(index);
        }
        let (_, payload) = self.opcode_and_payload();
        let compressed =
            Bytes::from(compress_once(payload, key.0, key.1).map_err(SendError::Compress)?);
        cache.compressed.push((key, compressed, None));
        cache.compressions += 1;
        Ok(cache.compressed.len() - 1)
    }
}

fn frame(first_byte: u8, payload: &[u8]) -> Bytes {
    let mut header = [0u8; MAX_HEADER];
    let len = encode_header(&mut header, first_byte, None, payload.len());
    let mut bytes = Vec::with_capacity(len + payload.len());
    bytes.extend_from_slice(&header[..len]);
    bytes.extend_from_slice(payload);
    Bytes::from(bytes)
}
