//! The bodies of the cargo-fuzz targets in `fuzz/`, kept here so that a stable test
//! (`tests/fuzz_corpus.rs`) replays the corpus through the same code, and [`replay`], which
//! every crate with fuzz targets uses for that. Not part of the API: each function panics when
//! an invariant breaks, which is what a fuzzer reports.

use bytes::{Buf, BufMut};

use crate::{
    Config, Connection, InboundBudget, Message, Role,
    deflate::{self, DeflateParams, DeflatePolicy},
};

const MAX_MESSAGE: usize = 64 * 1024;
const MAX_FRAME: usize = 32 * 1024;

/// Target `frames`: arbitrary bytes into a server connection with small limits, all at once
/// and cut at points chosen by the first two bytes, read with `receive`, with `receive_direct`
/// inside data frames' payloads, and as buffers handed over (`receive_owned`); all must give
/// the same messages and the same error, and return their budget.
pub fn frames(data: &[u8]) {
    run_frames(data, None);
}

/// Target `frames_deflate`: as [`frames`], with permessage-deflate negotiated; the first byte
/// chooses context takeover.
pub fn frames_deflate(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let takeover = choice & 1 == 1;
    let params = DeflateParams {
        server_no_context_takeover: !takeover,
        client_no_context_takeover: !takeover,
        ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
    };
    run_frames(rest, Some(params));
}

fn run_frames(data: &[u8], deflate: Option<DeflateParams>) {
    let (steps, bytes) = data.split_at(data.len().min(2));
    let budget = InboundBudget::new(1 << 20);
    let config = Config {
        role: Role::Server,
        max_message_size: MAX_MESSAGE,
        max_frame_size: MAX_FRAME,
        deflate,
        budget: Some(budget.clone()),
    };
    let whole = feed(
        Connection::new(config.clone()),
        bytes,
        &[usize::MAX],
        Path::Receive,
    );
    assert_eq!(budget.in_use(), 0, "budget not returned");
    let steps: Vec<usize> = steps.iter().map(|&s| usize::from(s % 64) + 1).collect();
    for path in [Path::Receive, Path::Direct, Path::Owned] {
        let cut = feed(Connection::new(config.clone()), bytes, &steps, path);
        assert_eq!(budget.in_use(), 0, "budget not returned");
        assert_eq!(
            whole, cut,
            "cutting the input changed what was read ({path:?})"
        );
    }
}

/// Keeps what one call of [`feed`] read; after an error, fails the connection and gives the
/// close code.
fn keep(
    connection: &mut Connection,
    messages: &mut Vec<Message>,
    result: Result<Option<Message>, crate::ProtocolError>,
) -> Result<(), u16> {
    match result {
        Ok(message) => {
            messages.extend(message);
            assert!(connection.buffered() <= MAX_MESSAGE + 125);
            Ok(())
        }
        Err(error) => {
            connection.fail(&error);
            Err(error.close_code())
        }
    }
}

/// How [`feed`] hands the chunks over.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// `receive`.
    Receive,
    /// `receive_direct` for the chunks inside a data frame's payload, else `receive`.
    Direct,
    /// Each chunk as a buffer of its own, `receive_owned`.
    Owned,
}

/// Feeds `bytes` in chunks whose sizes cycle through `steps`, along `path`; the messages read
/// and the close code of the error that stopped reading, if any.
fn feed(
    mut connection: Connection,
    mut bytes: &[u8],
    steps: &[usize],
    path: Path,
) -> (Vec<Message>, Option<u16>) {
    let mut messages = Vec::new();
    let mut steps = steps.iter().cycle();
    while !bytes.is_empty() {
        let step = (*steps.next().unwrap_or(&1)).min(bytes.len());
        if path == Path::Direct
            && let Some((n, result)) = connection.receive_direct(step, |buf| {
                let n = buf.remaining_mut().min(bytes.len());
                buf.put_slice(&bytes[..n]);
                n
            })
        {
            bytes = &bytes[n..];
            if let Err(code) = keep(&mut connection, &mut messages, result) {
                return (messages, Some(code));
            }
            continue;
        }
        let (mut chunk, rest) = bytes.split_at(step);
        bytes = rest;
        if path == Path::Owned {
            let mut buffer = chunk.to_vec();
            loop {
                let (result, rest) = connection.receive_owned(buffer);
                if let Err(code) = keep(&mut connection, &mut messages, result) {
                    return (messages, Some(code));
                }
                if rest.is_empty() {
                    break;
                }
                buffer = rest.to_vec();
            }
            let output = connection.output();
            output.advance(output.remaining());
            continue;
        }
        loop {
            match connection.receive(&mut chunk) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => {
                    connection.fail(&error);
                    return (messages, Some(error.close_code()));
                }
            }
            assert!(connection.buffered() <= MAX_MESSAGE + 125);
        }
        assert!(chunk.is_empty(), "Ok(None) left input behind");
        assert!(connection.buffered() <= MAX_MESSAGE + 125);
        let output = connection.output();
        output.advance(output.remaining());
    }
    (messages, None)
}

/// Target `inflate`: `data` as the compressed payload of one binary message (whole, and cut in
/// two fragments), with a 4 KiB message limit: it inflates to at most the limit, or fails with
/// 1009 (too big) or 1007 (corrupt), with either context takeover setting.
pub fn inflate(data: &[u8]) {
    const LIMIT: usize = 4096;
    for takeover in [false, true] {
        for fragments in [1, 2] {
            let params = DeflateParams {
                client_no_context_takeover: !takeover,
                ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
            };
            let mut connection = Connection::new(Config {
                max_message_size: LIMIT,
                max_frame_size: 1 << 20,
                deflate: Some(params),
                ..Config::server()
            });
            let cut = if fragments == 1 {
                data.len()
            } else {
                data.len() / 2
            };
            let mut wire = Vec::new();
            let first = if fragments == 1 { 0xc2 } else { 0x42 };
            push_frame(&mut wire, first, &data[..cut]);
            if fragments == 2 {
                push_frame(&mut wire, 0x80, &data[cut..]);
            }
            let mut input = &wire[..];
            match connection.receive(&mut input) {
                Ok(Some(Message::Binary(payload))) => assert!(payload.len() <= LIMIT),
                Ok(Some(other)) => panic!("unexpected message {other:?}"),
                Ok(None) => {}
                Err(error) => {
                    assert!(matches!(error.close_code(), 1007 | 1009), "{error}");
                    assert_eq!(connection.buffered(), 0);
                }
            }
            assert!(connection.buffered() <= LIMIT + 125);
        }
    }
}

/// A masked client frame with a zero key (the payload unchanged).
fn push_frame(wire: &mut Vec<u8>, first_byte: u8, payload: &[u8]) {
    wire.push(first_byte);
    match payload.len() {
        len @ 0..=125 => wire.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            wire.push(0x80 | 126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            wire.push(0x80 | 127);
            wire.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    wire.extend_from_slice(&[0; 4]);
    wire.extend_from_slice(payload);
}

/// Target `negotiate`: `data` as `Sec-WebSocket-Extensions` values (one per line), for the
/// server and as a server's answer for the client. Whatever the server agrees to, a client
/// that allows it accepts, with the same parameters.
pub fn negotiate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let permissive = DeflatePolicy {
        context_takeover: true,
        ..DeflatePolicy::default()
    };
    for policy in [DeflatePolicy::default(), permissive] {
        let _ = deflate::accept_response(&text, &policy);
        if let Some((server, answer)) = deflate::negotiate(text.split('\n'), &policy) {
            assert!((8..=15).contains(&server.server_max_window_bits));
            assert!((8..=15).contains(&server.client_max_window_bits));
            check_answer(&answer, &server);
        }
    }
}

/// Checks a server's deflate `answer` (its parameters `server`) as a client allowing
/// everything takes it: accepted, with the same context takeover both ways and a server
/// window at least as wide. Shared with the upgrader's handshake target.
pub fn check_answer(answer: &str, server: &DeflateParams) {
    let permissive = DeflatePolicy {
        context_takeover: true,
        ..DeflatePolicy::default()
    };
    let client = deflate::accept_response(answer, &permissive)
        .unwrap_or_else(|e| panic!("our answer {answer:?} refused: {e}"));
    assert_eq!(
        client.server_no_context_takeover,
        server.server_no_context_takeover
    );
    assert_eq!(
        client.client_no_context_takeover,
        server.client_no_context_takeover
    );
    assert!(client.server_max_window_bits >= server.server_max_window_bits);
}

/// Runs every input of a fuzz target's corpus and crashes (`fuzz/corpus/<target>/` and
/// `fuzz/artifacts/<target>/` of this repository) through `run`, failing with the file that
/// panics: what the fuzzer found stays fixed on stable. A checkout without `fuzz/` passes.
pub fn replay(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut count = 0;
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for path in entries.flatten().map(|entry| entry.path()) {
            if !path.is_file() {
                continue;
            }
            let data =
                std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{} fails", path.display());
            count += 1;
        }
    }
    if root.join("corpus").join(target).is_dir() {
        assert!(count > 0, "empty corpus for {target}");
    }
}
