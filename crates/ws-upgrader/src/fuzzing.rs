//! The body of the cargo-fuzz target `handshake` in `fuzz/`, kept here so that a stable test
//! (`tests/fuzz_corpus.rs`) replays the corpus through the same code. Not part of the API:
//! it panics when an invariant breaks, which is what a fuzzer reports.

use base64::Engine as _;
use http::{HeaderName, HeaderValue, Method, Request, header, request::Parts};
use sha1::{Digest as _, Sha1};

use crate::{Compression, WsUpgrader};

/// The subprotocols the server speaks when the first byte asks for them.
const PROTOCOLS: [&str; 3] = ["chat", "superchat", "v2.json"];

/// Target `handshake`: the first byte chooses the upgrader (bit 0 compression, bit 1 context
/// takeover, bit 2 subprotocols, bit 3 a POST, bits 4-6 the window) and the rest is header
/// lines, `name: value` (lines `http` refuses are skipped). The request goes through the
/// upgrader's checks: no panic, a refusal gives a response with its status, and an accepted
/// request has every header RFC 6455 §4.2.1 asks for and gets the right accept key, an offered
/// subprotocol of ours and a `Sec-WebSocket-Extensions` answer that is a header value a
/// client accepts.
pub fn handshake(data: &[u8]) {
    let Some((&choice, lines)) = data.split_first() else {
        return;
    };
    let mut builder = WsUpgrader::builder();
    if choice & 1 == 1 {
        builder = builder.compression_with(Compression {
            context_takeover: choice & 2 == 2,
            max_window_bits: 9 + (choice >> 4) % 7,
            ..Compression::default()
        });
    }
    if choice & 4 == 4 {
        builder = builder.subprotocols(PROTOCOLS);
    }
    let upgrader = builder.build().expect("valid options");
    let method = if choice & 8 == 8 {
        Method::POST
    } else {
        Method::GET
    };
    let mut parts = request(method, lines);
    // What hyper puts in every request it serves (here one that never completes).
    let on_upgrade = hyper::upgrade::on(Request::new(()));
    parts.extensions.insert(on_upgrade);
    let headers = parts.headers.clone();

    let pending = match upgrader.check(&mut parts) {
        Ok(pending) => pending,
        Err(rejection) => {
            let response = upgrader.reject(&rejection);
            assert_eq!(response.status(), rejection.status());
            return;
        }
    };
    assert_eq!(parts.method, Method::GET);
    let tokens = |name: HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    assert!(tokens(header::UPGRADE).iter().any(|t| t == "websocket"));
    assert!(tokens(header::CONNECTION).iter().any(|t| t == "upgrade"));
    assert_eq!(headers[header::SEC_WEBSOCKET_VERSION], "13");

    let key = headers[header::SEC_WEBSOCKET_KEY].as_bytes();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("accepted key is base64");
    assert_eq!(raw.len(), 16, "accepted key is not 16 bytes");
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    assert_eq!(pending.accept, expected.as_str(), "wrong accept key");

    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().expect("accepted origin is text");
        let host = headers[header::HOST].to_str().expect("host is text");
        assert!(
            origin
                .to_ascii_lowercase()
                .contains(&host.to_ascii_lowercase()),
            "origin {origin:?} accepted for host {host:?}"
        );
    }

    if let Some(protocol) = pending.protocol() {
        assert!(PROTOCOLS.contains(&protocol) && choice & 4 == 4);
        assert!(tokens(header::SEC_WEBSOCKET_PROTOCOL).contains(&protocol.to_ascii_lowercase()));
    }

    if let Some((answer, server)) = &pending.deflate {
        assert!(choice & 1 == 1, "deflate without compression enabled");
        assert!(
            HeaderValue::from_str(answer).is_ok(),
            "answer {answer:?} is not a header value"
        );
        ws_protocol::fuzzing::check_answer(answer, server);
        assert!(server.server_max_window_bits <= 9 + (choice >> 4) % 7);
    }
}

/// A request head from `name: value` lines.
fn request(method: Method, lines: &[u8]) -> Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            parts.headers.append(name, value);
        }
    }
    parts
}
