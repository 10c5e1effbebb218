//! The examples of RFC 6455 §5.7 and RFC 7692 §7.2.3, byte by byte.

use ws_protocol::{
    Config, Connection, Message,
    deflate::{DeflateParams, DeflatePolicy},
};

use crate::common::{read_all, take_output};

const HELLO_MASKED: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

#[test]
fn single_frame_unmasked_text() {
    let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let mut client = Connection::new(Config::client());
    assert_eq!(read_all(&mut client, &wire), [Message::text("Hello")]);
    let mut server = Connection::new(Config::server());
    server.send(Message::text("Hello")).unwrap();
    assert_eq!(take_output(&mut server), wire);
}

#[test]
fn single_frame_masked_text() {
    let mut server = Connection::new(Config::server());
    assert_eq!(
        read_all(&mut server, &HELLO_MASKED),
        [Message::text("Hello")]
    );
    let mut client = Connection::new(Config::client());
    client.send(Message::text("Hello")).unwrap();
    let sent = take_output(&mut client);
    assert_eq!(&sent[..2], &[0x81, 0x85]);
    let mut server = Connection::new(Config::server());
    assert_eq!(read_all(&mut server, &sent), [Message::text("Hello")]);
}

#[test]
fn fragmented_unmasked_text() {
    let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let mut client = Connection::new(Config::client());
    let mut input = &wire[..5];
    assert_eq!(client.receive(&mut input).unwrap(), None);
    assert!(client.message_in_progress());
    assert_eq!(read_all(&mut client, &wire[5..]), [Message::text("Hello")]);
    assert!(!client.message_in_progress());
    assert_eq!(client.buffered(), 0);
}

#[test]
fn ping_is_answered_with_the_masked_pong_of_the_example() {
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let mut client = Connection::new(Config::client());
    assert_eq!(
        read_all(&mut client, &ping),
        [Message::Ping("Hello".into())]
    );
    let pong = take_output(&mut client);
    assert_eq!(&pong[..2], &[0x8a, 0x85]);
    let mut server = Connection::new(Config::server());
    let example_pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        read_all(&mut server, &example_pong),
        [Message::Pong("Hello".into())]
    );
    assert_eq!(
        read_all(&mut server, &pong),
        [Message::Pong("Hello".into())]
    );
}

#[test]
fn lengths_of_256_bytes_and_64_kib() {
    for (len, header) in [
        (256usize, vec![0x82, 0x7e, 0x01, 0x00]),
        (
            65536,
            vec![0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
        ),
    ] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut server = Connection::new(Config::server());
        server.send(Message::binary(payload.clone())).unwrap();
        let wire = take_output(&mut server);
        assert_eq!(&wire[..header.len()], &header[..]);
        assert_eq!(&wire[header.len()..], &payload[..]);
        let mut client = Connection::new(Config::client());
        assert_eq!(read_all(&mut client, &wire), [Message::binary(payload)]);
    }
}

fn deflate_client(takeover: bool) -> Connection {
    let params = DeflateParams {
        server_no_context_takeover: !takeover,
        client_no_context_takeover: !takeover,
        ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
    };
    Connection::new(Config {
        deflate: Some(params),
        ..Config::client()
    })
}

fn deflate_server(takeover: bool, threshold: usize) -> Connection {
    let params = DeflateParams {
        server_no_context_takeover: !takeover,
        client_no_context_takeover: !takeover,
        threshold,
        ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
    };
    Connection::new(Config {
        deflate: Some(params),
        ..Config::server()
    })
}

#[test]
fn rfc7692_hello_compressed_in_one_and_in_two_frames() {
    let one = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let two = [
        0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00,
    ];
    for takeover in [false, true] {
        let mut client = deflate_client(takeover);
        assert_eq!(read_all(&mut client, &one), [Message::text("Hello")]);
        assert_eq!(read_all(&mut client, &two), [Message::text("Hello")]);
    }
    // Our compressor writes the RFC's bytes: threshold 0 compresses every message, and with
    // context takeover every message is compressed too. Otherwise "Hello", which does not
    // shrink (7 bytes for 5), goes out plain.
    for (takeover, threshold) in [(false, 0), (true, 1)] {
        let mut server = deflate_server(takeover, threshold);
        server.send(Message::text("Hello")).unwrap();
        assert_eq!(take_output(&mut server), one);
    }
    let mut server = deflate_server(false, 1);
    server.send(Message::text("Hello")).unwrap();
    assert_eq!(take_output(&mut server), b"\x81\x05Hello");
}

#[test]
fn rfc7692_context_takeover_example() {
    let first = [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let second = [0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00];
    let mut client = deflate_client(true);
    assert_eq!(read_all(&mut client, &first), [Message::text("Hello")]);
    assert_eq!(read_all(&mut client, &second), [Message::text("Hello")]);

    // Without takeover both messages compress alike; with it the second refers to the first.
    let mut server = deflate_server(false, 0);
    server.send(Message::text("Hello")).unwrap();
    server.send(Message::text("Hello")).unwrap();
    assert_eq!(take_output(&mut server), [first, first].concat());
    let mut server = deflate_server(true, 0);
    server.send(Message::text("Hello")).unwrap();
    server.send(Message::text("Hello")).unwrap();
    let wire = take_output(&mut server);
    assert_eq!(&wire[..first.len()], first);
    assert!(wire.len() - first.len() < first.len(), "second not shorter");
    let mut client = deflate_client(true);
    assert_eq!(
        read_all(&mut client, &wire),
        [Message::text("Hello"), Message::text("Hello")]
    );
}

#[test]
fn rfc7692_stored_block_bfinal_and_two_blocks() {
    let stored = [
        0xc1, 0x0b, 0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    ];
    let bfinal = [0xc1, 0x08, 0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    let two_blocks = [
        0xc1, 0x0d, 0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
    ];
    for takeover in [false, true] {
        let mut client = deflate_client(takeover);
        for wire in [&stored[..], &bfinal, &two_blocks, &bfinal, &stored] {
            assert_eq!(read_all(&mut client, wire), [Message::text("Hello")]);
        }
    }
}

#[test]
fn payloads_under_the_threshold_go_uncompressed() {
    let mut server = deflate_server(false, 32);
    server.send(Message::text("Hello")).unwrap();
    assert_eq!(
        take_output(&mut server),
        [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
    );
    server.send(Message::text("Hello".repeat(7))).unwrap();
    assert_eq!(take_output(&mut server)[0], 0xc1);
}
