//! permessage-deflate (RFC 7692) checked byte by byte: a hand-made client offers it, compresses
//! with raw deflate (flate2) and decodes the server's frames.

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress};
use tokio::net::TcpStream;
use ws_upgrader::{Compression, WsUpgrader};

use crate::support::spawn_echo;
use test_support::{header, raw_request, read_frame, upgrade_request, write_frame};

const TEXT: u8 = 0x1;
/// RFC 7692 §7.2.1: the tail every flushed message ends with, stripped on the wire.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Raw-deflates one message with a sync flush and strips the tail.
fn deflate(compress: &mut Compress, data: &[u8]) -> Vec<u8> {
    let start = compress.total_in();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let consumed = usize::try_from(compress.total_in() - start).unwrap();
        if consumed == data.len() && out.len() < out.capacity() {
            assert!(out.ends_with(&TAIL));
            out.truncate(out.len() - TAIL.len());
            return out;
        }
        out.reserve(64 << 10);
        compress
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .unwrap();
    }
    panic!("deflate did not finish");
}

/// Inflates one message's payload (the tail appended back).
fn inflate(decompress: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let start = decompress.total_in();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let consumed = usize::try_from(decompress.total_in() - start).unwrap();
        if consumed == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(256 << 10);
        decompress
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .expect("the server's deflate stream decodes");
    }
    panic!("inflate did not finish");
}

fn compressor(window_bits: u8) -> Compress {
    Compress::new_with_window_bits(flate2::Compression::new(6), false, window_bits)
}

fn decompressor() -> Decompress {
    Decompress::new_with_window_bits(false, 15)
}

/// One message as it came on the wire: whether RSV1 (compressed) was set on its first frame,
/// and the payload bytes of all its frames.
async fn read_message(stream: &mut TcpStream) -> (bool, Vec<u8>) {
    let first = read_frame(stream).await;
    let compressed = first.rsv1;
    let mut payload = first.payload;
    let mut fin = first.fin;
    for _ in 0..100_000 {
        if fin {
            return (compressed, payload);
        }
        let next = read_frame(stream).await;
        assert!(!next.rsv1, "RSV1 only on the first frame (RFC 7692 §6.1)");
        payload.extend_from_slice(&next.payload);
        fin = next.fin;
    }
    panic!("message never ended");
}

/// Opens a connection offering `offer`; returns the stream and the extension the server chose.
async fn open(addr: std::net::SocketAddr, offer: Option<&str>) -> (TcpStream, Option<String>) {
    let extra = offer.map_or_else(String::new, |o| {
        format!("Sec-WebSocket-Extensions: {o}\r\n")
    });
    let (stream, status, headers) = raw_request(addr, &upgrade_request(addr, "/ws", &extra)).await;
    assert_eq!(status, 101);
    (
        stream,
        header(&headers, "sec-websocket-extensions").map(str::to_owned),
    )
}

async fn compressing_server(compression: Compression) -> std::net::SocketAddr {
    spawn_echo(
        WsUpgrader::builder()
            .compression_with(compression)
            .build()
            .unwrap(),
    )
    .await
}

fn json(min_len: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut len = 0;
    let mut i = 0u64;
    while len < min_len {
        let item = format!(
            r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":{},"score":{}}}"#,
            i.is_multiple_of(3),
            i * 7919 % 1000
        );
        len += item.len() + 1;
        items.push(item);
        i += 1;
    }
    format!("[{}]", items.join(",")).into_bytes()
}

#[tokio::test]
async fn one_mib_of_json_round_trips_compressed_both_ways() {
    let addr = spawn_echo(WsUpgrader::builder().compression().build().unwrap()).await;
    // As browsers send it: client_max_window_bits without a value.
    let (mut stream, extension) =
        open(addr, Some("permessage-deflate; client_max_window_bits")).await;
    let extension = extension.expect("permessage-deflate in the 101");
    assert!(extension.starts_with("permessage-deflate"), "{extension}");

    let message = json(1 << 20);
    let mut client = compressor(15);
    let sent = deflate(&mut client, &message);
    write_frame(&mut stream, true, true, TEXT, &sent).await;

    let (compressed, wire) = read_message(&mut stream).await;
    assert!(compressed, "the echo is compressed");
    assert_eq!(inflate(&mut decompressor(), &wire), message);
    assert!(
        wire.len() * 4 < message.len() && sent.len() * 4 < message.len(),
        "{} bytes of JSON took {} bytes to the server and {} back",
        message.len(),
        sent.len(),
        wire.len()
    );
}

#[tokio::test]
async fn deflate_is_negotiated_only_when_enabled_and_offered() {
    let plain = spawn_echo(WsUpgrader::new()).await;
    let (_, extension) = open(plain, Some("permessage-deflate")).await;
    assert_eq!(extension, None, "server without compression");

    let compressing = compressing_server(Compression::default()).await;
    let (mut stream, extension) = open(compressing, None).await;
    assert_eq!(extension, None, "client without the offer");
    let message = json(4096);
    write_frame(&mut stream, true, false, TEXT, &message).await;
    assert_eq!(read_message(&mut stream).await, (false, message));

    // An offer the server cannot accept is declined, not fatal.
    let (_, extension) = open(compressing, Some("permessage-deflate; unknown_param")).await;
    assert_eq!(extension, None);
}

/// Sends `message` twice; each echo must come compressed and inflate back to `message`, with
/// one decoder across both (`shared`, the server keeps its context) or a fresh one each time.
/// The two compressed payloads.
async fn echo_twice(
    stream: &mut TcpStream,
    message: &[u8],
    mut shared: Option<&mut Decompress>,
) -> [Vec<u8>; 2] {
    let mut echo = async || {
        write_frame(stream, true, false, TEXT, message).await;
        let (compressed, wire) = read_message(stream).await;
        assert!(compressed);
        let inflated = match shared.as_deref_mut() {
            Some(decoder) => inflate(decoder, &wire),
            None => inflate(&mut decompressor(), &wire),
        };
        assert_eq!(inflated, message);
        wire
    };
    [echo().await, echo().await]
}

#[tokio::test]
async fn no_context_takeover_by_default_and_takeover_when_chosen() {
    let message = json(2048);

    // Default: the server keeps no history either way (as gorilla), so every message decodes
    // on its own, with a fresh decoder, and the same message gives the same bytes.
    let addr = compressing_server(Compression::default()).await;
    let (mut stream, extension) = open(addr, Some("permessage-deflate")).await;
    assert_eq!(
        extension.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let frames = echo_twice(&mut stream, &message, None).await;
    assert_eq!(frames[0], frames[1], "no history carried over");

    // Context takeover chosen: the second copy refers back to the first, so it is much smaller.
    let takeover = Compression {
        context_takeover: true,
        ..Compression::default()
    };
    let addr = compressing_server(takeover).await;
    let (mut stream, extension) = open(addr, Some("permessage-deflate")).await;
    assert_eq!(extension.as_deref(), Some("permessage-deflate"));
    let frames = echo_twice(&mut stream, &message, Some(&mut decompressor())).await;
    let sizes = frames.map(|wire| wire.len());
    assert!(sizes[1] * 4 < sizes[0], "{sizes:?}");

    // ... unless the client asks for server_no_context_takeover.
    let (mut stream, extension) =
        open(addr, Some("permessage-deflate; server_no_context_takeover")).await;
    assert!(
        extension.unwrap().contains("server_no_context_takeover"),
        "the server agrees"
    );
    let frames = echo_twice(&mut stream, &message, None).await;
    assert_eq!(frames[0], frames[1], "no history carried over");
}

#[tokio::test]
async fn client_no_context_takeover_and_window_bits_are_honoured() {
    let addr = compressing_server(Compression {
        context_takeover: true,
        ..Compression::default()
    })
    .await;
    let message = json(4096);

    // The client resets its compressor for every message; the server must not expect history.
    let (mut stream, extension) =
        open(addr, Some("permessage-deflate; client_no_context_takeover")).await;
    assert!(extension.unwrap().contains("client_no_context_takeover"));
    let mut decoder = decompressor();
    for _ in 0..3 {
        let sent = deflate(&mut compressor(15), &message);
        write_frame(&mut stream, true, true, TEXT, &sent).await;
        let (_, wire) = read_message(&mut stream).await;
        assert_eq!(inflate(&mut decoder, &wire), message);
    }

    // A client window of 2^10 bytes: accepted (the server inflates with a window at least as
    // large, so it need not echo the parameter, RFC 7692 §7.1.2.2), and its messages decode.
    let (mut stream, extension) =
        open(addr, Some("permessage-deflate; client_max_window_bits=10")).await;
    let extension = extension.expect("the offer is accepted");
    assert!(
        !extension.contains("client_max_window_bits=9"),
        "never a window smaller than the client's: {extension}"
    );
    let mut client = compressor(10);
    let mut decoder = decompressor();
    for _ in 0..3 {
        let sent = deflate(&mut client, &message);
        write_frame(&mut stream, true, true, TEXT, &sent).await;
        let (_, wire) = read_message(&mut stream).await;
        assert_eq!(inflate(&mut decoder, &wire), message);
    }
}

#[tokio::test]
async fn threshold_and_level_reach_the_wire() {
    let addr = compressing_server(Compression {
        level: 6,
        threshold: 100,
        ..Compression::default()
    })
    .await;
    let (mut stream, _) = open(addr, Some("permessage-deflate")).await;
    let mut decoder = decompressor();
    let short = &json(200)[..99];
    write_frame(&mut stream, true, false, TEXT, short).await;
    assert_eq!(read_message(&mut stream).await, (false, short.to_vec()));
    let long = &json(200)[..100];
    write_frame(&mut stream, true, false, TEXT, long).await;
    let (compressed, wire) = read_message(&mut stream).await;
    assert!(compressed);
    assert_eq!(inflate(&mut decoder, &wire), long);

    // Level 9 shrinks it several times; level 0 stores, no smaller than the message, so it
    // goes out plain (above a threshold of 0, a message that does not shrink is sent as it is).
    let message = json(16 << 10);
    for level in [0, 9] {
        let addr = compressing_server(Compression {
            level,
            threshold: 1,
            ..Compression::default()
        })
        .await;
        let (mut stream, _) = open(addr, Some("permessage-deflate")).await;
        write_frame(&mut stream, true, false, TEXT, &message).await;
        let (compressed, wire) = read_message(&mut stream).await;
        if level == 0 {
            assert!(!compressed, "level 0");
            assert_eq!(wire, message);
        } else {
            assert!(compressed, "level {level}");
            assert_eq!(inflate(&mut decompressor(), &wire), message);
            assert!(wire.len() * 4 < message.len(), "level {level}");
        }
    }
}

/// The permessage-deflate offers of Autobahn 12.* and 13.1 to 13.7, as its client writes them.
const AUTOBAHN_OFFERS: [&str; 7] = [
    "permessage-deflate; client_no_context_takeover; client_max_window_bits",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_no_context_takeover",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_max_window_bits=9",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_max_window_bits=15",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_no_context_takeover; server_max_window_bits=9",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_no_context_takeover; server_max_window_bits=15",
    "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_no_context_takeover; server_max_window_bits=9, \
     permessage-deflate; client_no_context_takeover; client_max_window_bits; \
     server_no_context_takeover, \
     permessage-deflate; client_no_context_takeover; client_max_window_bits",
];

/// Justifies the kosoku crashes listed in `cargo xtask autobahn` (sub-cases .1 and .2 of
/// 12.* and 13.*): under each of those offers, with the echo example's compression settings,
/// 16- and 64-byte slices of JSON (as those sub-cases send) come back either uncompressed
/// (RSV1 clear, RFC 7692 §6.1) with exactly the bytes sent, or compressed and inflating to
/// exactly them; and the compressed messages that follow still inflate correctly with the
/// same decoder, so the uncompressed replies left the compression context in step.
#[tokio::test]
async fn short_replies_under_every_autobahn_offer_decode_to_the_message() {
    let addr = spawn_echo(WsUpgrader::builder().compression().build().unwrap()).await;
    let text = json(64 << 10);
    for offer in AUTOBAHN_OFFERS {
        let (mut stream, extension) = open(addr, Some(offer)).await;
        let extension = extension.expect("deflate negotiated");
        let no_takeover = extension.contains("server_no_context_takeover");
        let mut decoder = decompressor();
        let (mut uncompressed, mut compressed, mut at) = (0, 0, 0);
        for len in [16, 64, 4096, 16, 64, 16 << 10] {
            for _ in 0..20 {
                if at + len > text.len() {
                    at = 0;
                }
                let message = &text[at..at + len];
                at += len;
                write_frame(&mut stream, true, false, TEXT, message).await;
                let (rsv1, wire) = read_message(&mut stream).await;
                let decoded = match (rsv1, no_takeover) {
                    (false, _) => wire,
                    // Without takeover each message must inflate on its own.
                    (true, true) => inflate(&mut decompressor(), &wire),
                    (true, false) => inflate(&mut decoder, &wire),
                };
                assert_eq!(decoded, message, "offer {offer:?}, {len} bytes");
                if rsv1 {
                    compressed += 1;
                } else {
                    uncompressed += 1;
                }
            }
        }
        // The 16-byte replies take the uncompressed path kosoku trips on; the larger ones
        // are compressed around them.
        assert!(uncompressed >= 40, "{offer}: {uncompressed} uncompressed");
        assert!(compressed >= 40, "{offer}: {compressed} compressed");
    }
}
