//! permessage-deflate (RFC 7692): negotiation of the `Sec-WebSocket-Extensions` header, and the
//! compression of messages.
//!
//! The server side calls [`negotiate`] with the client's offers and sends back the header value
//! it returns; the client side sends [`client_offer`] and checks the answer with
//! [`accept_response`]. Either way the resulting [`DeflateParams`] go into
//! [`Config::deflate`](crate::Config::deflate).
//!
//! # Memory
//!
//! Without context takeover (the default: the server answers `server_no_context_takeover;
//! client_no_context_takeover`, as gorilla/websocket does) a connection keeps no zlib state:
//! each message borrows a compressor or decompressor from a per-thread pool (keyed by window
//! bits and level), resets it and gives it back. With context takeover the connection owns its
//! compressor and decompressor, made at its first compressed message and kept for its life: by
//! zlib's formulas (not measured here) about 2^(w+2) bytes + 128 KiB for a compressor with
//! window bits w (256 KiB at 15, 130 KiB at 9) and 2^w bytes + about 7 KiB for a decompressor
//! (39 KiB: this crate always inflates with a 15-bit window).
//!
//! ```
//! use ws_protocol::deflate::{DeflatePolicy, negotiate};
//!
//! let (params, answer) = negotiate(
//!     ["permessage-deflate; client_max_window_bits"],
//!     &DeflatePolicy::default(),
//! )
//! .unwrap();
//! assert_eq!(answer, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
//! assert!(params.server_no_context_takeover);
//! ```

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{ProtocolError, Role};

/// What this end is willing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// The zlib compression level, 0-9 (default 1: fast, most of the gain on JSON).
    pub level: u32,
    /// Payloads shorter than this go out uncompressed (default 32 bytes); without context
    /// takeover, so does a longer one whose compressed form is not smaller. 0 compresses every
    /// message, even one that grows (what a conformance suite may expect).
    pub threshold: usize,
    /// Whether to keep compression context between messages (default false: ask for
    /// `server_no_context_takeover; client_no_context_takeover`, and keep no zlib state between
    /// messages). True gives a better ratio on many similar small messages at a per-connection
    /// memory cost (see the module docs).
    pub context_takeover: bool,
    /// 9..=15 (default 15): the largest server LZ77 window used. A client's
    /// `server_max_window_bits` shrinks it further. zlib's raw deflate has no 8-bit window, so a
    /// connection whose peer demands 8 is sent stored deflate blocks (valid for any window,
    /// but not smaller than the message).
    pub max_window_bits: u8,
}

impl Default for DeflatePolicy {
    fn default() -> Self {
        DeflatePolicy {
            level: 1,
            threshold: 32,
            context_takeover: false,
            max_window_bits: 15,
        }
    }
}

/// The parameters agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after every message.
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, 8..=15 (8: the server sends stored blocks, see
    /// [`DeflatePolicy::max_window_bits`]).
    pub server_max_window_bits: u8,
    /// The client's LZ77 window, 8..=15 (8: the client sends stored blocks).
    pub client_max_window_bits: u8,
    /// Compression level of this end, 0-9.
    pub level: u32,
    /// Payloads shorter than this are sent uncompressed (see [`DeflatePolicy::threshold`]).
    pub threshold: usize,
}

impl DeflateParams {
    /// Parameters without context takeover, window 15 both ways, with `policy`'s level and
    /// threshold: what [`negotiate`] agrees to for a plain `permessage-deflate` offer.
    pub fn no_context_takeover(policy: &DeflatePolicy) -> Self {
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: policy.level.min(9),
            threshold: policy.threshold,
        }
    }
}

/// The server's answer to a client's permessage-deflate answer did not follow the offer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// The header is not a single, well-formed permessage-deflate extension.
    #[error("malformed permessage-deflate response: {0}")]
    Malformed(&'static str),
    /// The response is well-formed but sets something the offer did not allow.
    #[error("permessage-deflate response not allowed by our offer: {0}")]
    NotAllowed(&'static str),
}

/// One parsed permessage-deflate offer or response.
#[derive(Debug, Default, Clone, Copy)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: the parameter without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Parses one extension (`name; param; param=value`) strictly: an unknown or repeated
/// parameter, or a bad value, rejects it.
fn parse_extension(extension: &str) -> Result<Offer, &'static str> {
    let mut parts = extension.split(';');
    let name = parts.next().unwrap_or("").trim();
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return Err("not permessage-deflate");
    }
    let mut offer = Offer::default();
    for part in parts {
        let part = part.trim();
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.trim(), Some(unquote(value.trim())?)),
            None => (part, None),
        };
        match key {
            "server_no_context_takeover" | "client_no_context_takeover" => {
                if value.is_some() {
                    return Err("a no_context_takeover parameter with a value");
                }
                let flag = if key.starts_with("server") {
                    &mut offer.server_no_context_takeover
                } else {
                    &mut offer.client_no_context_takeover
                };
                if *flag {
                    return Err("repeated parameter");
                }
                *flag = true;
            }
            "server_max_window_bits" => {
                let value = value.ok_or("server_max_window_bits without a value")?;
                if offer.server_max_window_bits.is_some() {
                    return Err("repeated parameter");
                }
                offer.server_max_window_bits = Some(window_bits(value)?);
            }
            "client_max_window_bits" => {
                if offer.client_max_window_bits.is_some() {
                    return Err("repeated parameter");
                }
                offer.client_max_window_bits = Some(value.map(window_bits).transpose()?);
            }
            "" => return Err("empty parameter"),
            _ => return Err("unknown parameter"),
        }
    }
    Ok(offer)
}

/// A parameter value: a token, or a quoted string holding one (RFC 7692 §7.1).
fn unquote(value: &str) -> Result<&str, &'static str> {
    let inner = match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or("unterminated quoted value")?,
        None => value,
    };
    if inner.is_empty() {
        return Err("empty value");
    }
    Ok(inner)
}

/// 8..=15 written as a decimal without leading zeros.
fn window_bits(value: &str) -> Result<u8, &'static str> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return Err("window bits not a number");
    }
    match value.parse::<u8>() {
        Ok(bits @ 8..=15) => Ok(bits),
        _ => Err("window bits outside 8..=15"),
    }
}

/// Server side: the first acceptable permessage-deflate offer among the
/// `Sec-WebSocket-Extensions` header values (each may hold several comma-separated offers),
/// with the response header value to send; `None` when no offer is acceptable.
///
/// Offers are parsed strictly: one with an unknown or repeated parameter or a bad value is
/// skipped. `server_max_window_bits=8` is accepted, and honoured by sending stored blocks (zlib
/// cannot compress with an 8-bit window; an LZ77 stream without back-references fits any
/// window). Without context takeover in the
/// policy the answer always holds `server_no_context_takeover; client_no_context_takeover`
/// (valid per RFC 7692 §7.1.1); `server_max_window_bits=N` is added when the client asked for
/// one (N is the smaller of its value and the policy's).
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    policy: &DeflatePolicy,
) -> Option<(DeflateParams, String)> {
    let max_bits = policy.max_window_bits.clamp(9, 15);
    for header in offers {
        for extension in header.split(',') {
            let Ok(offer) = parse_extension(extension) else {
                continue;
            };
            let server_bits = offer
                .server_max_window_bits
                .map_or(max_bits, |b| b.min(max_bits));
            let params = DeflateParams {
                server_no_context_takeover: offer.server_no_context_takeover
                    || !policy.context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover
                    || !policy.context_takeover,
                server_max_window_bits: server_bits,
                client_max_window_bits: offer.client_max_window_bits.flatten().unwrap_or(15),
                level: policy.level.min(9),
                threshold: policy.threshold,
            };
            let mut answer = String::from("permessage-deflate");
            if params.server_no_context_takeover {
                answer.push_str("; server_no_context_takeover");
            }
            if params.client_no_context_takeover {
                answer.push_str("; client_no_context_takeover");
            }
            if offer.server_max_window_bits.is_some() {
                answer.push_str("; server_max_window_bits=");
                answer.push_str(&server_bits.to_string());
            }
            return Some((params, answer));
        }
    }
    None
}

/// Client side: the `Sec-WebSocket-Extensions` value to offer.
pub fn client_offer(policy: &DeflatePolicy) -> String {
    let mut offer = String::from("permessage-deflate");
    if !policy.context_takeover {
        offer.push_str("; server_no_context_takeover; client_no_context_takeover");
    }
    let max_bits = policy.max_window_bits.clamp(9, 15);
    if max_bits < 15 {
        offer.push_str("; server_max_window_bits=");
        offer.push_str(&max_bits.to_string());
    }
    offer.push_str("; client_max_window_bits");
    offer
}

/// Client side: the parameters in the server's answer to [`client_offer`], or why the answer
/// is not one the offer allowed (the client must then fail the connection, RFC 7692 §5).
pub fn accept_response(
    header: &str,
    policy: &DeflatePolicy,
) -> Result<DeflateParams, NegotiationError> {
    if header.contains(',') {
        return Err(NegotiationError::Malformed(
            "more than one extension in the answer",
        ));
    }
    let answer = parse_extension(header).map_err(NegotiationError::Malformed)?;
    if !policy.context_takeover && !answer.server_no_context_takeover {
        return Err(NegotiationError::NotAllowed(
            "server_no_context_takeover missing from the answer",
        ));
    }
    let offered_bits = policy.max_window_bits.clamp(9, 15);
    let server_bits = match answer.server_max_window_bits {
        Some(bits) if bits > offered_bits => {
            return Err(NegotiationError::NotAllowed(
                "server_max_window_bits above the offered value",
            ));
        }
        Some(bits) => bits,
        None if offered_bits < 15 => {
            return Err(NegotiationError::NotAllowed(
                "server_max_window_bits missing from the answer",
            ));
        }
        None => 15,
    };
    let client_bits = match answer.client_max_window_bits {
        None => 15,
        Some(None) => {
            return Err(NegotiationError::Malformed(
                "client_max_window_bits without a value in an answer",
            ));
        }
        Some(Some(bits)) => bits,
    };
    Ok(DeflateParams {
        server_no_context_takeover: answer.server_no_context_takeover,
        client_no_context_takeover: answer.client_no_context_takeover || !policy.context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
        level: policy.level.min(9),
        threshold: policy.threshold,
    })
}

// ---------------------------------------------------------------------------------------------
// Compression of messages.

/// The trailer that a sync flush ends with, stripped on send and put back on receive (RFC 7692
/// §7.2.1, §7.2.2).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Window bits used to inflate: a decompressor with a larger window reads any stream made with
/// a smaller one, so 15 accepts whatever the peer chose.
const INFLATE_BITS: u8 = 15;

/// Compressors and decompressors kept per thread, at most this many of each.
const POOL_MAX: usize = 4;

thread_local! {
    static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSORS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a reset compressor of this level and window from the thread's pool, resets it
/// and gives it back.
fn with_pooled_compressor<R>(level: u32, bits: u8, f: impl FnOnce(&mut Compress) -> R) -> R {
    let pooled = COMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        let found = pool.iter().position(|(l, b, _)| *l == level && *b == bits);
        found.map(|i| pool.swap_remove(i).2)
    });
    let mut compressor = pooled.unwrap_or_else(|| new_compressor(level, bits));
    let result = f(&mut compressor);
    compressor.reset();
    COMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push((level, bits, compressor));
        }
    });
    result
}

fn with_pooled_decompressor<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    let pooled = DECOMPRESSORS.with(|pool| pool.borrow_mut().pop());
    let mut decompressor = pooled.unwrap_or_else(new_decompressor);
    let result = f(&mut decompressor);
    decompressor.reset(false);
    DECOMPRESSORS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(decompressor);
        }
    });
    result
}

fn new_compressor(level: u32, bits: u8) -> Compress {
    Compress::new_with_window_bits(Compression::new(level.min(9)), false, bits.clamp(9, 15))
}

fn new_decompressor() -> Decompress {
    Decompress::new_with_window_bits(false, INFLATE_BITS)
}

/// Whether a message goes out as `compressed` rather than as `payload`, without context
/// takeover: only if that saves bytes, unless `threshold` is 0 (compress everything). RFC
/// 7692 lets each message say whether it is compressed, and without context takeover the
/// peer's inflater has no state that a plain message would leave behind.
pub(crate) fn worth_compressing(compressed: &[u8], payload: &[u8], threshold: usize) -> bool {
    threshold == 0 || compressed.len() < payload.len()
}

/// Compresses one message with a pooled compressor (no context takeover): the payload of an
/// RSV1 frame.
pub(crate) fn compress_once(payload: &[u8], level: u32, bits: u8) -> Result<Vec<u8>, String> {
    with_pooled_compressor(level, bits, |c| deflate_message(c, payload))
}

/// Raw deflate with a sync flush, the trailing `00 00 ff ff` removed.
fn deflate_message(compressor: &mut Compress, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let before = compressor.total_in();
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .map_err(|e| e.to_string())?;
        consumed += (compressor.total_in() - before) as usize;
        if consumed == payload.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    Ok(out)
}

/// Inflates one message's payload (the trailer appended) into a buffer that never grows past
/// `limit + 1` bytes: more output than `limit` is [`ProtocolError::MessageTooBig`].
fn inflate_message(
    decompressor: &mut Decompress,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let ceiling = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::new();
    let mut first_step = data.len().saturating_mul(4).clamp(256, 64 * 1024);
    for input in [data, &SYNC_TAIL[..]] {
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= ceiling {
                    return Err(ProtocolError::MessageTooBig { limit });
                }
                let step = first_step.max(out.capacity()).min(ceiling - out.len());
                first_step = 0;
                out.reserve_exact(step);
            }
            let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
            let status = decompressor
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|e| ProtocolError::Inflate(e.to_string()))?;
            consumed += (decompressor.total_in() - in_before) as usize;
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig { limit });
            }
            if status == Status::StreamEnd {
                // BFINAL was set: the stream is over, and what follows is padding (RFC 7692
                // §7.2.3.4 has a byte of it). The decompressor starts afresh for the next message.
                decompressor.reset(false);
                return Ok(finish(out));
            }
            let progressed =
                decompressor.total_in() != in_before || decompressor.total_out() != out_before;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if !progressed && out.len() < out.capacity() {
                return Err(ProtocolError::Inflate("the deflate stream is stuck".into()));
            }
        }
    }
    Ok(finish(out))
}

/// Gives back spare capacity when it is more than a quarter of the message.
fn finish(mut out: Vec<u8>) -> Vec<u8> {
    if out.capacity() - out.len() > out.len() / 4 {
        out.shrink_to_fit();
    }
    out
}

/// One connection's compression state.
pub(crate) struct Codec {
    pub(crate) params: DeflateParams,
    /// Window bits and level of the compressor this end sends with.
    send_bits: u8,
    send_level: u32,
    /// Whether this end keeps its compression context between messages.
    send_takeover: bool,
    /// Whether the peer keeps its context (so our decompressor must, too).
    receive_takeover: bool,
    /// Owned only with context takeover, made at first use.
    compressor: Option<Box<Compress>>,
    decompressor: Option<Box<Decompress>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("params", &self.params)
            .field("compressor", &self.compressor.is_some())
            .field("decompressor", &self.decompressor.is_some())
            .finish()
    }
}

impl Codec {
    pub(crate) fn new(params: DeflateParams, role: Role) -> Self {
        let (send_bits, send_takeover, receive_takeover) = match role {
            Role::Server => (
                params.server_max_window_bits,
                !params.server_no_context_takeover,
                !params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                !params.client_no_context_takeover,
                !params.server_no_context_takeover,
            ),
        };
        // An 8-bit window (which zlib cannot compress with) is kept by sending stored blocks:
        // level 0 never refers back, so any window decodes it.
        let send_level = if send_bits < 9 {
            0
        } else {
            params.level.min(9)
        };
        Codec {
            params,
            send_bits: send_bits.clamp(9, 15),
            send_level,
            send_takeover,
            receive_takeover,
            compressor: None,
            decompressor: None,
        }
    }

    /// The key under which a prepared message can share its compressed bytes with other
    /// connections: `None` when this connection keeps context (it must compress itself).
    pub(crate) fn shared_key(&self) -> Option<(u32, u8)> {
        (!self.send_takeover).then_some((self.send_level, self.send_bits))
    }

    pub(crate) fn compress(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        if self.send_takeover {
            let (level, bits) = (self.send_level, self.send_bits);
            let compressor = self
                .compressor
                .get_or_insert_with(|| Box::new(new_compressor(level, bits)));
            deflate_message(compressor, payload)
        } else {
            compress_once(payload, self.send_level, self.send_bits)
        }
    }

    pub(crate) fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, ProtocolError> {
        if self.receive_takeover {
            let decompressor = self
                .decompressor
                .get_or_insert_with(|| Box::new(new_decompressor()));
            inflate_message(decompressor, data, limit)
        } else {
            with_pooled_decompressor(|d| inflate_message(d, data, limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7692_hello_compresses_to_the_example_bytes() {
        let bytes = compress_once(b"Hello", 1, 15).unwrap();
        assert_eq!(bytes, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        let back = with_pooled_decompressor(|d| inflate_message(d, &bytes, 100)).unwrap();
        assert_eq!(back, b"Hello");
    }

    #[test]
    fn empty_message_compresses_to_one_zero_byte() {
        assert_eq!(compress_once(b"", 1, 15).unwrap(), [0x00]);
    }

    #[test]
    fn strict_parsing_skips_bad_offers() {
        let policy = DeflatePolicy::default();
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate([bad], &policy), None, "{bad}");
        }
        let (params, answer) = negotiate(
            ["permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=\"10\"; client_max_window_bits"],
            &policy,
        )
        .unwrap();
        assert_eq!(params.server_max_window_bits, 10);
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
    }

    #[test]
    fn client_offer_round_trips_through_the_server() {
        for context_takeover in [false, true] {
            for max_window_bits in [9, 12, 15] {
                let policy = DeflatePolicy {
                    context_takeover,
                    max_window_bits,
                    ..DeflatePolicy::default()
                };
                let offer = client_offer(&policy);
                let (server, answer) = negotiate([offer.as_str()], &policy).unwrap();
                let client = accept_response(&answer, &policy).unwrap();
                assert_eq!(
                    server.server_no_context_takeover,
                    client.server_no_context_takeover
                );
                assert_eq!(
                    server.client_no_context_takeover,
                    client.client_no_context_takeover
                );
                assert_eq!(server.server_max_window_bits, client.server_max_window_bits);
                assert_eq!(server.server_no_context_takeover, !context_takeover);
            }
        }
    }

    #[test]
    fn answers_the_offer_did_not_allow_are_refused() {
        let policy = DeflatePolicy {
            max_window_bits: 10,
            ..DeflatePolicy::default()
        };
        for answer in [
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10, foo",
        ] {
            assert!(accept_response(answer, &policy).is_err(), "{answer}");
        }
    }
}
