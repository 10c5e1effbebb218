//! The connection: bytes in, messages out; messages in, bytes out.
//!
//! # Reading
//!
//! [`Connection::receive`] parses from the front of the caller's bytes. A frame header is kept
//! (at most 14 bytes) when it is cut by the end of the input; the payload is unmasked while it
//! is copied into the message's buffer, which is reserved once at the size the header declares
//! (after the limits are checked). A single-frame message whose bytes are all in the input is
//! copied once into an exactly sized buffer (a small one into the thread's block: `block`) and
//! returned: nothing is kept.
//!
//! [`Connection::receive_direct`] is the other way in, for large payloads: the transport
//! writes the rest of a data frame straight into that message buffer (never past the frame),
//! which is then unmasked and checked in place; no copy at all. [`Connection::receive_owned`]
//! takes a buffer the transport filled and makes it the message's when a data message starts
//! there (its payload then starts after the header: `data_start`).
//!
//! # The closing handshake
//!
//! [`CloseState`] changes only in `Connection::transition`, which holds the state table.

use std::mem;

use bytes::{Buf as _, BufMut, Bytes};

use crate::{
    CloseFrame, Config, InboundBudget, Message, ProtocolError, Role, SMALL_PAYLOAD_MAX, SendError,
    Utf8Bytes,
    block::small_payload,
    deflate::{Codec, worth_compressing},
    mask::MaskKeys,
    mask::apply_mask,
    output::Output,
    prepared::{PreparedMessage, SharedFraming},
};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask. A transport that
/// reads up to the next frame's header reads at most this many bytes past a payload.
pub const MAX_HEADER: usize = 14;

/// Where the closing handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseState {
    /// No close frame sent or received.
    Open,
    /// Our close frame is queued; the peer's has not arrived. No more frames may be sent.
    CloseSent,
    /// The peer's close frame arrived and ours is not queued yet. A [`Connection`] passes
    /// through this state only inside `receive`: it queues its answer at once.
    CloseReceived,
    /// Both close frames are exchanged (ours queued): write out the output, then close the
    /// transport (a server closes first, RFC 6455 §7.1.1).
    Closed,
}

/// What moves the closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseEvent {
    /// Our close frame is queued (sent by the user, an echo, or by `fail`).
    Sent,
    /// The peer's close frame was read.
    Received,
}

/// The header of the frame being read, and how far its payload has come.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes not read yet.
    remaining: usize,
    /// Payload bytes read so far (the mask's rotation).
    offset: usize,
}

/// What the payload bytes just taken in did to the frame being read.
enum Progress {
    /// The frame has more to come.
    Incomplete,
    /// A data frame that does not end its message ended.
    FrameDone,
    /// A message or control frame completed.
    Complete(Message),
}

/// The data message being assembled.
#[derive(Debug, Clone, Copy)]
struct Assembling {
    text: bool,
    compressed: bool,
}

/// One WebSocket connection's protocol state: bytes in, messages out; messages in, bytes out.
///
/// No I/O happens here: feed what the transport read to [`receive`](Connection::receive),
/// write what [`output`](Connection::output) holds.
pub struct Connection {
    role: Role,
    max_message_size: usize,
    max_frame_size: usize,
    codec: Option<Codec>,
    budget: Option<InboundBudget>,
    /// Bytes reserved from `budget` now.
    reserved: usize,

    /// A frame header cut by the end of the input.
    header: [u8; MAX_HEADER],
    header_len: u8,
    frame: Option<Frame>,
    message: Option<Assembling>,
    /// The data message's payload so far (compressed, if it is), from `data_start` on.
    data: Vec<u8>,
    /// Where the payload starts in `data`: after the first frame's header (at most 14 bytes)
    /// when the buffer was the caller's ([`Connection::receive_owned`]), else 0.
    data_start: u8,
    /// How much of `data` is checked UTF-8 (uncompressed text); the rest, at most 3 bytes, is
    /// the start of a character.
    utf8_checked: usize,
    /// A control frame's payload cut by the end of the input.
    control: Vec<u8>,
    /// False after an error, `fail`, or the peer's close: input is then consumed and ignored.
    reading: bool,

    close: CloseState,
    output: Output,
    mask_keys: Option<MaskKeys>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("close", &self.close)
            .field("buffered", &self.buffered())
            .field("message_in_progress", &self.message.is_some())
            .field("output", &self.output.len())
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection in the [`Open`](CloseState::Open) state.
    pub fn new(config: Config) -> Self {
        Connection {
            role: config.role,
            max_message_size: config.max_message_size,
            max_frame_size: config.max_frame_size,
            codec: config.deflate.map(|params| Codec::new(params, config.role)),
            budget: config.budget,
            reserved: 0,
            header: [0; MAX_HEADER],
            header_len: 0,
            frame: None,
            message: None,
            data: Vec::new(),
            data_start: 0,
            utf8_checked: 0,
            control: Vec::new(),
            reading: true,
            close: CloseState::Open,
            output: Output::default(),
            mask_keys: (config.role == Role::Client).then(MaskKeys::new),
        }
    }

    /// Parses from the front of `input`, advancing it past what was consumed.
    ///
    /// Returns `Ok(Some(message))` when a message or control frame completes (the rest of
    /// `input` is left for the next call), `Ok(None)` once all of `input` was consumed without
    /// completing one: the bytes of an unfinished header (at most 14) or message are then kept
    /// inside, and nothing else. Pings are answered (a pong queued in the output) and still
    /// returned; a close frame from the peer is echoed (queued) if ours is not out, and
    /// returned; after it, input is consumed and ignored (the peer may send nothing after its
    /// close, RFC 6455 §5.5.1, and a connection that has exchanged both close frames has no
    /// way left to complain).
    ///
    /// After an error the connection stops reading (its buffers are freed, its budget returned);
    /// the caller is expected to call [`fail`](Connection::fail).
    pub fn receive(&mut self, input: &mut &[u8]) -> Result<Option<Message>, ProtocolError> {
        let result = self.receive_inner(input);
        if result.is_err() {
            self.stop_reading();
        }
        result
    }

    fn receive_inner(&mut self, input: &mut &[u8]) -> Result<Option<Message>, ProtocolError> {
        if !self.reading {
            *input = &input[input.len()..];
            return Ok(None);
        }
        loop {
            if self.frame.is_none() {
                let Some(frame) = self.read_header(input)? else {
                    self.hold()?;
                    return Ok(None);
                };
                if let Some(message) = self.start_frame(frame, input)? {
                    return Ok(Some(message));
                }
            }
            let Some(frame) = self.frame.as_ref() else {
                continue;
            };
            let n = frame.remaining.min(input.len());
            let (chunk, rest) = input.split_at(n);
            *input = rest;
            let buffer = if frame.opcode >= OP_CLOSE {
                &mut self.control
            } else {
                &mut self.data
            };
            let start = buffer.len();
            buffer.extend_from_slice(chunk);
            match self.payload_arrived(start)? {
                Progress::Incomplete => return Ok(None),
                Progress::FrameDone => {}
                Progress::Complete(message) => return Ok(Some(message)),
            }
        }
    }

    /// How many payload bytes of the data frame being read are still to come: 0 between
    /// frames, inside a control frame, and once reading stopped. This is how many bytes
    /// [`receive_direct`](Self::receive_direct) can take at most; a driver uses it to choose
    /// between reading into its own buffer and reading straight into the message's.
    pub fn payload_remaining(&self) -> usize {
        // No frame is kept once reading stops.
        match &self.frame {
            Some(frame) if frame.opcode < OP_CLOSE => frame.remaining,
            _ => 0,
        }
    }

    /// Lets `read` write the next payload bytes of the data frame being read straight into the
    /// message's buffer (at most `max` of them, never past the frame's end), then treats them
    /// as [`receive`](Self::receive) treats payload: unmasked in place, UTF-8 checked as it
    /// arrives (uncompressed text), the frame and the message completed when they end. Returns
    /// what `read` returned with what `receive` would have: `Ok(Some(message))` when the
    /// message completed, `Ok(None)` when more is to come (or `read` wrote nothing), or an
    /// error, after which reading stops as with `receive`.
    ///
    /// `None`, without calling `read`, when no data frame's payload is being read
    /// ([`payload_remaining`](Self::payload_remaining) is 0): the next bytes start a frame
    /// (or finish a control frame) and go to `receive`.
    ///
    /// This saves a copy for large messages: `receive` copies from the caller's buffer into
    /// the message's, while a transport read into the [`BufMut`] lands where the message
    /// will be returned from. The buffer was sized and counted against the limits and the
    /// [`InboundBudget`] when the frame's header was read; the `BufMut` is its spare capacity,
    /// not zeroed, so a reader that fills it safely (`tokio_util::io::poll_read_buf`, or
    /// [`BufMut::put_slice`]) costs one pass over the bytes.
    ///
    /// ```
    /// use bytes::{Buf, BufMut};
    /// use ws_protocol::{Config, Connection, Message};
    ///
    /// let mut client = Connection::new(Config::client());
    /// client.send(Message::binary(vec![7u8; 10_000])).unwrap();
    /// let output = client.output();
    /// let wire = output.copy_to_bytes(output.remaining());
    ///
    /// let mut server = Connection::new(Config::server());
    /// // The first read: the header and the start of the payload.
    /// let mut input = &wire[..100];
    /// assert_eq!(server.receive(&mut input).unwrap(), None);
    /// assert_eq!(server.payload_remaining(), wire.len() - 100);
    /// // The rest, written into the message's buffer by the "transport".
    /// let mut rest = &wire[100..];
    /// let (written, message) = server
    ///     .receive_direct(usize::MAX, |buf| {
    ///         let n = buf.remaining_mut().min(rest.len());
    ///         buf.put_slice(&rest[..n]);
    ///         rest = &rest[n..];
    ///         n
    ///     })
    ///     .unwrap();
    /// assert_eq!(written, wire.len() - 100);
    /// assert_eq!(message.unwrap(), Some(Message::binary(vec![7u8; 10_000])));
    /// assert!(server.receive_direct(usize::MAX, |_| ()).is_none());
    /// ```
    pub fn receive_direct<T>(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut dyn BufMut) -> T,
    ) -> Option<(T, Result<Option<Message>, ProtocolError>)> {
        let limit = self.payload_remaining().min(max);
        if limit == 0 {
            return None;
        }
        let start = self.data.len();
        // `Limit` keeps the reader inside the frame (the next frame's header must not land in
        // the payload) and inside the capacity reserved for it (so the `Vec` never grows).
        let value = read(&mut (&mut self.data).limit(limit));
        if self.data.len() == start {
            return Some((value, Ok(None)));
        }
        Some((value, self.take_in(start)))
    }

    /// Whether the next bytes start a frame, no message being assembled: the state in which
    /// [`receive_owned`](Self::receive_owned) can make the caller's buffer the message's.
    pub fn between_messages(&self) -> bool {
        self.reading && self.frame.is_none() && self.header_len == 0 && self.message.is_none()
    }

    /// [`receive`](Self::receive) for bytes the caller read into a buffer of its own, handed
    /// over: when they start an uncompressed data message
    /// ([`between_messages`](Self::between_messages)),
    /// that buffer becomes the message's, its payload unmasked and checked in place, and the
    /// message is returned from it without a copy (its header stays in the allocation, before
    /// the payload). A buffer with the capacity for the whole frame (header included) makes a
    /// large message cost one transport read and no copy; a shorter one is grown to the size
    /// the header declares (one copy of what it holds). Anything else (a control frame, a
    /// header cut short, an error) is read as `receive` reads it.
    ///
    /// Returns what `receive` would, and the bytes it did not take in (the start of the next
    /// frames, to hand over next; empty after an error, when reading stops as with `receive`).
    ///
    /// ```
    /// use bytes::Buf;
    /// use ws_protocol::{Config, Connection, Message};
    ///
    /// let mut client = Connection::new(Config::client());
    /// client.send(Message::binary(vec![7u8; 10_000])).unwrap();
    /// client.send(Message::text("next")).unwrap();
    /// let output = client.output();
    /// let wire = output.copy_to_bytes(output.remaining());
    ///
    /// let mut server = Connection::new(Config::server());
    /// assert!(server.between_messages());
    /// // What a transport read into a buffer of the caller's.
    /// let (message, rest) = server.receive_owned(wire.to_vec());
    /// assert_eq!(message.unwrap(), Some(Message::binary(vec![7u8; 10_000])));
    /// let (message, rest) = server.receive_owned(rest.to_vec());
    /// assert_eq!(message.unwrap(), Some(Message::text("next")));
    /// assert!(rest.is_empty());
    /// ```
    pub fn receive_owned(
        &mut self,
        mut buffer: Vec<u8>,
    ) -> (Result<Option<Message>, ProtocolError>, Bytes) {
        let header = if self.between_messages() {
            self.parse_header(&buffer).ok().flatten()
        } else {
            None
        };
        // Compressed payloads are inflated into a buffer of their own anyway.
        let Some((frame, used)) =
            header.filter(|(frame, _)| matches!(frame.opcode, OP_TEXT | OP_BINARY) && !frame.rsv1)
        else {
            // Read as `receive` reads it. What is left is copied out rather than shared, so a
            // few bytes never keep a large buffer alive.
            let mut input = &buffer[..];
            let result = self.receive(&mut input);
            if result.is_err() {
                return (result, Bytes::new());
            }
            return (result, Bytes::copy_from_slice(input));
        };
        let end = used + frame.remaining;
        let rest = match buffer.get(end..) {
            Some(rest) if !rest.is_empty() => Bytes::copy_from_slice(rest),
            _ => Bytes::new(),
        };
        buffer.truncate(end);
        if buffer.capacity() < end {
            // The caller guessed short: the one copy of this path.
            buffer.reserve_exact(end - buffer.len());
        }
        self.message = Some(Assembling {
            text: frame.opcode == OP_TEXT,
            compressed: frame.rsv1,
        });
        self.data = buffer;
        // `used` is a header's length, at most 14.
        self.data_start = used as u8;
        self.utf8_checked = used;
        self.frame = Some(frame);
        let result = self.take_in(used);
        if result.is_err() {
            return (result, Bytes::new());
        }
        (result, rest)
    }

    /// [`payload_arrived`](Self::payload_arrived) for a caller outside `receive`: what
    /// `receive` would return, reading stopped after an error.
    fn take_in(&mut self, start: usize) -> Result<Option<Message>, ProtocolError> {
        let result = match self.payload_arrived(start) {
            Ok(Progress::Incomplete) => Ok(None),
            Ok(Progress::FrameDone) => self.hold().map(|()| None),
            Ok(Progress::Complete(message)) => Ok(Some(message)),
            Err(error) => Err(error),
        };
        if result.is_err() {
            self.stop_reading();
        }
        result
    }

    /// Takes in the payload bytes of the current frame appended to its buffer from `start` on:
    /// unmasks them, checks text, and finishes the frame (and the message) when they end it.
    fn payload_arrived(&mut self, start: usize) -> Result<Progress, ProtocolError> {
        let Some(frame) = self.frame.as_mut() else {
            return Err(ProtocolError::Protocol("payload without a frame"));
        };
        let control = frame.opcode >= OP_CLOSE;
        let buffer = if control {
            &mut self.control
        } else {
            &mut self.data
        };
        let n = buffer.len() - start;
        if let Some(key) = frame.mask {
            apply_mask(&mut buffer[start..], key, frame.offset);
        }
        // Callers append at most `remaining` bytes (`receive` splits, `receive_direct` limits).
        frame.remaining -= n;
        frame.offset += n;
        let Frame {
            opcode,
            fin,
            remaining,
            ..
        } = *frame;
        if !control && self.message.is_some_and(|m| m.text && !m.compressed) {
            self.check_utf8()?;
        }
        if remaining > 0 {
            self.hold()?;
            return Ok(Progress::Incomplete);
        }
        self.frame = None;
        if control {
            let payload = Bytes::from(mem::take(&mut self.control));
            self.hold()?;
            return self.on_control(opcode, payload).map(Progress::Complete);
        }
        if fin {
            return self.finish_message().map(Progress::Complete);
        }
        Ok(Progress::FrameDone)
    }

    /// Reads a frame header from `input`, or keeps what there is of it.
    fn read_header(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtocolError> {
        if self.header_len == 0 {
            if let Some((frame, used)) = self.parse_header(input)? {
                *input = &input[used..];
                return Ok(Some(frame));
            }
            // Incomplete, so shorter than a header.
            self.header[..input.len()].copy_from_slice(input);
            self.header_len = input.len() as u8;
            *input = &input[input.len()..];
            return Ok(None);
        }
        let kept = usize::from(self.header_len);
        let take = (MAX_HEADER - kept).min(input.len());
        let mut header = self.header;
        header[kept..kept + take].copy_from_slice(&input[..take]);
        match self.parse_header(&header[..kept + take])? {
            Some((frame, used)) => {
                *input = &input[used - kept..];
                self.header_len = 0;
                Ok(Some(frame))
            }
            None => {
                self.header = header;
                self.header_len = (kept + take) as u8;
                *input = &input[take..];
                Ok(None)
            }
        }
    }

    /// Parses and checks a header at the start of `bytes`: the frame and the header's length,
    /// or `None` when `bytes` ends inside it. Rules are checked as soon as their bytes are in.
    fn parse_header(&self, bytes: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & FIN != 0;
        let rsv1 = b0 & RSV1 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let short_len = b1 & 0x7f;
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::Protocol(
                "RSV2 or RSV3 set without an extension that defines them",
            ));
        }
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(ProtocolError::Protocol("unmasked frame from a client"));
            }
            (Role::Client, true) => {
                return Err(ProtocolError::Protocol("masked frame from a server"));
            }
            _ => {}
        }
        match opcode {
            OP_CONTINUATION => {
                if self.message.is_none() {
                    return Err(ProtocolError::Protocol(
                        "continuation frame without a message to continue",
                    ));
                }
                if rsv1 {
                    return Err(ProtocolError::Protocol("RSV1 set on a continuation frame"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(ProtocolError::Protocol(
                        "new data frame before the fragmented message ended",
                    ));
                }
                if rsv1 && self.codec.is_none() {
                    return Err(ProtocolError::Protocol(
                        "RSV1 set without permessage-deflate negotiated",
                    ));
                }
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if rsv1 {
                    return Err(ProtocolError::Protocol("RSV1 set on a control frame"));
                }
                if !fin {
                    return Err(ProtocolError::Protocol("fragmented control frame"));
                }
                if short_len > 125 {
                    return Err(ProtocolError::Protocol(
                        "control frame payload longer than 125 bytes",
                    ));
                }
            }
            _ => return Err(ProtocolError::Protocol("reserved opcode")),
        }
        let (len, mut used) = match short_len {
            126 => match bytes.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(b) => {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(b);
                    let len = u64::from_be_bytes(word);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::Protocol(
                            "64-bit payload length with the most significant bit set",
                        ));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            len => (u64::from(len), 2),
        };
        if opcode < OP_CLOSE {
            if len > self.max_frame_size as u64 {
                return Err(ProtocolError::FrameTooBig {
                    limit: self.max_frame_size,
                });
            }
            // `data` may hold a header before the payload: checked exactly only when needed.
            let max = self.max_message_size as u64;
            if len.saturating_add(self.data.len() as u64) > max
                && len.saturating_add(self.payload_len() as u64) > max
            {
                return Err(ProtocolError::MessageTooBig {
                    limit: self.max_message_size,
                });
            }
        }
        let mask = if masked {
            let Some(key) = bytes.get(used..used + 4) else {
                return Ok(None);
            };
            used += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        let frame = Frame {
            opcode,
            fin,
            rsv1,
            mask,
            // Checked against the limits above (usize) or at most 125.
            remaining: len as usize,
            offset: 0,
        };
        Ok(Some((frame, used)))
    }

    /// Starts reading a frame's payload. A frame that is a whole message (or a control frame)
    /// with its payload all in `input` is finished here and returned.
    fn start_frame(
        &mut self,
        frame: Frame,
        input: &mut &[u8],
    ) -> Result<Option<Message>, ProtocolError> {
        let len = frame.remaining;
        let whole = input.len() >= len;
        if frame.opcode >= OP_CLOSE {
            if whole {
                if self.message.is_some() {
                    // Between fragments: this call ends with the message unfinished.
                    self.hold()?;
                }
                let payload = Bytes::from(take_payload(input, len, frame.mask));
                return self.on_control(frame.opcode, payload).map(Some);
            }
            self.control.reserve_exact(len);
            self.frame = Some(frame);
            return Ok(None);
        }
        if frame.opcode != OP_CONTINUATION {
            let text = frame.opcode == OP_TEXT;
            if frame.fin && whole {
                // The fast path: copied once, nothing kept; a small payload into the thread's
                // block, a larger one into a buffer of its exact size.
                if len <= SMALL_PAYLOAD_MAX && !frame.rsv1 {
                    let (payload, rest) = input.split_at(len);
                    *input = rest;
                    return message_from(text, small_payload(payload, frame.mask)).map(Some);
                }
                let payload = take_payload(input, len, frame.mask);
                return self.complete(text, frame.rsv1, payload).map(Some);
            }
            self.message = Some(Assembling {
                text,
                compressed: frame.rsv1,
            });
        }
        let needed = self.data.len() + len;
        if needed > self.data.capacity() {
            // The first frame's buffer is exactly what its header declares. Later fragments
            // grow it at least twofold (up to the message limit), so that a message in many
            // small fragments is not copied once per fragment.
            let capacity = if self.payload_len() == 0 {
                needed
            } else {
                needed.max(
                    self.data
                        .capacity()
                        .saturating_mul(2)
                        .min(self.max_message_size),
                )
            };
            if !whole {
                // The payload will be kept across calls: reserve before allocating.
                self.reserve_to(capacity + self.control.capacity())?;
            }
            self.data.reserve_exact(capacity - self.data.len());
        }
        self.frame = Some(frame);
        Ok(None)
    }

    /// Checks the text that arrived since the last check; a character cut at the end is left
    /// for the next bytes. Fails at the first byte that no continuation can make valid.
    fn check_utf8(&mut self) -> Result<(), ProtocolError> {
        let unchecked = &self.data[self.utf8_checked..];
        match simdutf8::compat::from_utf8(unchecked) {
            Ok(_) => self.utf8_checked = self.data.len(),
            Err(error) if error.error_len().is_none() => {
                self.utf8_checked += error.valid_up_to();
            }
            Err(_) => return Err(ProtocolError::InvalidUtf8),
        }
        Ok(())
    }

    /// The last frame of a fragmented message is in: the message.
    fn finish_message(&mut self) -> Result<Message, ProtocolError> {
        let Some(Assembling { text, compressed }) = self.message.take() else {
            return Err(ProtocolError::Protocol("no message to finish"));
        };
        let payload = mem::take(&mut self.data);
        let start = usize::from(mem::replace(&mut self.data_start, 0));
        let checked = mem::replace(&mut self.utf8_checked, 0);
        self.hold()?;
        if text && !compressed && checked != payload.len() {
            return Err(ProtocolError::InvalidUtf8);
        }
        if start > 0 {
            // The buffer was the caller's (`receive_owned`, never compressed): the payload
            // follows the first frame's header, a pointer move away.
            let mut payload = Bytes::from(payload);
            payload.advance(start);
            return message_from(text, payload);
        }
        self.complete(text, compressed, payload)
    }

    /// The data message's payload bytes so far.
    fn payload_len(&self) -> usize {
        self.data.len() - usize::from(self.data_start)
    }

    /// A whole message's payload: inflated when compressed, checked when text.
    fn complete(
        &mut self,
        text: bool,
        compressed: bool,
        payload: Vec<u8>,
    ) -> Result<Message, ProtocolError> {
        let payload = if compressed {
            let limit = self.max_message_size;
            match self.codec.as_mut() {
                Some(codec) => codec.inflate(&payload, limit)?,
                None => {
                    return Err(ProtocolError::Protocol(
                        "compressed message without permessage-deflate",
                    ));
                }
            }
        } else {
            payload
        };
        message_from(text, Bytes::from(payload))
    }

    /// A complete control frame: pings answered, closes checked and echoed.
    fn on_control(&mut self, opcode: u8, payload: Bytes) -> Result<Message, ProtocolError> {
        match opcode {
            OP_PING => {
                if self.close == CloseState::Open {
                    self.write_frame(OP_PONG, false, &payload);
                }
                Ok(Message::Ping(payload))
            }
            OP_PONG => Ok(Message::Pong(payload)),
            _ => {
                let frame = parse_close(&payload)?;
                self.transition(CloseEvent::Received);
                if self.close == CloseState::CloseReceived {
                    // Echo the code (no reason); a close without a code is echoed empty.
                    let echo = frame
                        .as_ref()
                        .and_then(|f| CloseFrame::new(f.code(), "").ok());
                    self.write_frame(OP_CLOSE, false, &close_payload(echo.as_ref()));
                    self.transition(CloseEvent::Sent);
                }
                Ok(Message::Close(frame))
            }
        }
    }

    /// The closing handshake's transitions, all of them:
    ///
    /// | state           | event               | next            | also                     |
    /// |-----------------|---------------------|-----------------|--------------------------|
    /// | `Open`          | our close queued    | `CloseSent`     | sending stops            |
    /// | `Open`          | peer's close read   | `CloseReceived` | reading stops; the caller queues the echo at once |
    /// | `CloseReceived` | our close queued    | `Closed`        | sending stops            |
    /// | `CloseSent`     | peer's close read   | `Closed`        | reading stops            |
    /// | `CloseSent`, `Closed` | our close queued | unchanged    | (not reachable: `send` refuses) |
    /// | `Closed`        | peer's close read   | unchanged       | (not reachable: reading stopped) |
    ///
    /// `fail` queues our close (the first row) and stops reading as well.
    fn transition(&mut self, event: CloseEvent) {
        use CloseState::*;
        self.close = match (self.close, event) {
            (Open, CloseEvent::Sent) => CloseSent,
            (Open, CloseEvent::Received) => CloseReceived,
            (CloseReceived, CloseEvent::Sent) | (CloseSent, CloseEvent::Received) => Closed,
            (state, _) => state,
        };
        if event == CloseEvent::Received {
            self.reading = false;
        }
    }

    /// Encodes a message into the output: one frame, compressed when deflate is on and the
    /// payload is at least the threshold. A [`Message::Close`] moves to
    /// [`CloseSent`](CloseState::CloseSent) (a close frame with code 1005, "no status", is sent
    /// without a code); after our close every send is [`SendError::Closed`].
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        if self.close != CloseState::Open {
            return Err(SendError::Closed);
        }
        match message {
            Message::Text(text) => self.send_data(OP_TEXT, text.as_bytes()),
            Message::Binary(data) => self.send_data(OP_BINARY, &data),
            Message::Ping(data) => self.send_control(OP_PING, &data),
            Message::Pong(data) => self.send_control(OP_PONG, &data),
            Message::Close(frame) => {
                let payload = close_payload(frame.as_ref());
                self.send_control(OP_CLOSE, &payload)?;
                self.transition(CloseEvent::Sent);
                Ok(())
            }
        }
    }

    /// [`send`](Connection::send) for a message encoded once for every connection with the same
    /// parameters (see [`PreparedMessage`]). The bytes written are those `send` would write.
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<(), SendError> {
        if self.close != CloseState::Open {
            return Err(SendError::Closed);
        }
        if let Some(framing) = self.shared_framing()
            && let Some(frame) = message.frame(framing)
        {
            self.output.push_encoded(&frame?);
            return Ok(());
        }
        let (opcode, payload) = match message.message() {
            Message::Text(text) => (OP_TEXT, text.as_bytes()),
            Message::Binary(data) => (OP_BINARY, data),
            other => return self.send(other.clone()),
        };
        // A client (each frame masked with its own key) or a compressor with context takeover.
        if let Some(codec) = self.codec.as_mut()
            && payload.len() >= codec.params.threshold
        {
            let threshold = codec.params.threshold;
            match codec.shared_key() {
                Some(key) => {
                    let compressed = message.compressed(key)?;
                    let worth = worth_compressing(&compressed, payload, threshold);
                    let sent = if worth { &compressed } else { payload };
                    self.write_frame(opcode, worth, sent);
                }
                None => {
                    let compressed =
                        Bytes::from(codec.compress(payload).map_err(SendError::Compress)?);
                    self.write_frame(opcode, true, &compressed);
                }
            }
            return Ok(());
        }
        self.write_frame(opcode, false, payload);
        Ok(())
    }

    /// How this connection frames a prepared data message when it can share the frame with
    /// other connections ([`PreparedMessage::frame`]): `None` for a client (each of its frames
    /// has its own masking key) and with server context takeover (its compressor's state is
    /// its own). Fixed for the connection's life.
    pub fn shared_framing(&self) -> Option<SharedFraming> {
        if self.role == Role::Client {
            return None;
        }
        match &self.codec {
            None => Some(SharedFraming::PLAIN),
            Some(codec) => SharedFraming::compressed(codec.shared_key()?, codec.params.threshold),
        }
    }

    fn send_data(&mut self, opcode: u8, payload: &Bytes) -> Result<(), SendError> {
        if let Some(codec) = self.codec.as_mut()
            && payload.len() >= codec.params.threshold
        {
            let compressed = Bytes::from(codec.compress(payload).map_err(SendError::Compress)?);
            // With context takeover the compressor's state already holds this message, so
            // the peer's must too: it goes out compressed whatever its size.
            let takeover = codec.shared_key().is_none();
            if takeover || worth_compressing(&compressed, payload, codec.params.threshold) {
                self.write_frame(opcode, true, &compressed);
            } else {
                self.write_frame(opcode, false, payload);
            }
        } else {
            self.write_frame(opcode, false, payload);
        }
        Ok(())
    }

    fn send_control(&mut self, opcode: u8, payload: &Bytes) -> Result<(), SendError> {
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong(payload.len()));
        }
        self.write_frame(opcode, false, payload);
        Ok(())
    }

    fn write_frame(&mut self, opcode: u8, rsv1: bool, payload: &Bytes) {
        let first_byte = FIN | if rsv1 { RSV1 } else { 0 } | opcode;
        let mask = self.mask_keys.as_mut().map(MaskKeys::next_key);
        self.output.push_frame(first_byte, mask, payload);
    }

    /// After [`receive`](Connection::receive) returned `error`: queues the close frame for it
    /// (its [close code](ProtocolError::close_code), its message as the reason, cut to fit) if
    /// ours is not out yet, and stops reading. This is "Fail the WebSocket Connection" (RFC 6455
    /// §7.1.7): write the output, then close the transport; the peer's close frame will not be
    /// read, so the state stays [`CloseSent`](CloseState::CloseSent).
    pub fn fail(&mut self, error: &ProtocolError) {
        self.stop_reading();
        if matches!(self.close, CloseState::Open | CloseState::CloseReceived) {
            // Every error's code may be sent; were one not, the peer would get 1011.
            let frame = CloseFrame::new(error.close_code(), error.to_string())
                .unwrap_or_else(CloseFrame::from);
            self.write_frame(OP_CLOSE, false, &close_payload(Some(&frame)));
            self.transition(CloseEvent::Sent);
        }
    }

    /// Where the closing handshake stands.
    pub fn close_state(&self) -> CloseState {
        self.close
    }

    /// The bytes waiting to be written.
    pub fn output(&mut self) -> &mut Output {
        &mut self.output
    }

    /// Bytes held for an unfinished frame or message: the capacity of the buffers that hold
    /// its payload (a cut header's at most 14 bytes are not counted). This is what the
    /// [`InboundBudget`] counts between calls.
    pub fn buffered(&self) -> usize {
        self.data.capacity() + self.control.capacity()
    }

    /// Whether [`receive`](Self::receive) would complete a frame from `input`. When it would
    /// not, `receive` takes all of `input` in and returns `Ok(None)` (or an error): the start
    /// of a frame, kept inside as any unfinished frame is. A driver holding bytes read past the
    /// message `receive` returned can then hand them over at once rather than keep a copy for
    /// the next call. Conservative: a header that breaks a rule counts as complete (`receive`
    /// reports it when called).
    ///
    /// ```
    /// use ws_protocol::{Config, Connection};
    ///
    /// let conn = Connection::new(Config::client());
    /// // An unmasked binary frame of 4 bytes, its header and 2 bytes of its payload so far.
    /// assert!(!conn.completes_frame(&[0x82, 4, 1, 2]));
    /// assert!(conn.completes_frame(&[0x82, 4, 1, 2, 3, 4]));
    /// ```
    pub fn completes_frame(&self, input: &[u8]) -> bool {
        if !self.reading {
            return false;
        }
        if let Some(frame) = &self.frame {
            return input.len() >= frame.remaining;
        }
        if self.header_len > 0 {
            return true;
        }
        match self.parse_header(input) {
            Ok(Some((frame, used))) => input.len() - used >= frame.remaining,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Whether a data message has started and not finished.
    pub fn message_in_progress(&self) -> bool {
        self.message.is_some()
    }

    /// Payload bytes of the unfinished data message received so far (0 between messages). It
    /// grows with every byte of the message, control frames aside, so a driver can tell a
    /// message that progresses from one that stalled ([`buffered`](Self::buffered) counts
    /// capacity, which grows in steps).
    pub fn message_received(&self) -> usize {
        if self.message.is_some() {
            self.payload_len()
        } else {
            0
        }
    }

    /// Whether permessage-deflate is on for this connection.
    pub fn compression(&self) -> bool {
        self.codec.is_some()
    }

    /// Keeps the budget's reservation equal to what is held now.
    fn hold(&mut self) -> Result<(), ProtocolError> {
        self.reserve_to(self.buffered())
    }

    fn reserve_to(&mut self, total: usize) -> Result<(), ProtocolError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if total > self.reserved {
            if !budget.try_reserve(total - self.reserved) {
                return Err(ProtocolError::BudgetExhausted);
            }
        } else if total < self.reserved {
            budget.release(self.reserved - total);
        }
        self.reserved = total;
        Ok(())
    }

    /// Drops everything held for reading and returns the budget.
    fn stop_reading(&mut self) {
        self.reading = false;
        self.frame = None;
        self.message = None;
        self.header_len = 0;
        self.data = Vec::new();
        self.data_start = 0;
        self.control = Vec::new();
        self.utf8_checked = 0;
        let _ = self.reserve_to(0);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.reserve_to(0);
    }
}

/// A whole data message from its (inflated) payload; text is checked.
fn message_from(text: bool, payload: Bytes) -> Result<Message, ProtocolError> {
    if text {
        Utf8Bytes::try_from_bytes(payload)
            .map(Message::Text)
            .map_err(|_| ProtocolError::InvalidUtf8)
    } else {
        Ok(Message::Binary(payload))
    }
}

/// Takes `len` payload bytes off `input` into an exactly sized, unmasked buffer.
fn take_payload(input: &mut &[u8], len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
    let (payload, rest) = input.split_at(len);
    *input = rest;
    let mut payload = payload.to_vec();
    if let Some(key) = mask {
        apply_mask(&mut payload, key, 0);
    }
    payload
}

/// A received close frame's payload: empty, or a code a peer may send and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::Protocol("close frame with a 1-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::BadClosePayload)?;
            // `CloseFrame::new` takes exactly the codes a peer may send.
            CloseFrame::new(code, reason)
                .map(Some)
                .map_err(|_| ProtocolError::BadCloseCode(code))
        }
    }
}

/// A close frame's payload: nothing for `None` or a frame that only reports (1005, 1006), else
/// the code and the reason (which `CloseFrame` keeps within 123 bytes).
fn close_payload(frame: Option<&CloseFrame>) -> Bytes {
    let Some(frame) = frame.filter(|f| f.is_sendable()) else {
        return Bytes::new();
    };
    let mut payload = Vec::with_capacity(2 + frame.reason().len());
    payload.extend_from_slice(&frame.code().to_be_bytes());
    payload.extend_from_slice(frame.reason().as_bytes());
    Bytes::from(payload)
}
