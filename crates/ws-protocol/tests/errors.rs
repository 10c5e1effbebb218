//! Every error, with its close code; the closing handshake; the budget.

use ws_protocol::{
    CloseFrame, CloseState, Config, Connection, InboundBudget, Message, ProtocolError, SendError,
    deflate::{DeflateParams, DeflatePolicy},
};

use crate::common::{masked, read_all, read_error, take_output};

const KEY: [u8; 4] = [1, 2, 3, 4];

fn server() -> Connection {
    Connection::new(Config::server())
}

fn code_of(config: Config, wire: &[u8]) -> (ProtocolError, u16) {
    let mut connection = Connection::new(config);
    let error = read_error(&mut connection, wire);
    let code = error.close_code();
    (error, code)
}

#[test]
fn framing_rules_are_protocol_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("reserved data opcode", masked(0x83, KEY, b"")),
        ("reserved control opcode", masked(0x8b, KEY, b"")),
        ("RSV2", masked(0xa1, KEY, b"x")),
        ("RSV3", masked(0x91, KEY, b"x")),
        ("RSV1 without deflate", masked(0xc1, KEY, b"x")),
        ("unmasked client frame", vec![0x81, 0x01, b'x']),
        ("fragmented ping", masked(0x09, KEY, b"")),
        ("ping of 126 bytes", masked(0x89, KEY, &[0; 126])),
        ("continuation without a start", masked(0x80, KEY, b"x")),
        (
            "new data frame inside a message",
            [masked(0x01, KEY, b"a"), masked(0x81, KEY, b"b")].concat(),
        ),
        (
            "64-bit length with the MSB set",
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("close with one byte", masked(0x88, KEY, &[3])),
    ];
    for (name, wire) in cases {
        let (error, code) = code_of(Config::server(), &wire);
        assert!(
            matches!(error, ProtocolError::Protocol(_)),
            "{name}: {error}"
        );
        assert_eq!(code, 1002, "{name}");
    }
    let mut client = Connection::new(Config::client());
    let error = read_error(&mut client, &masked(0x81, KEY, b"x"));
    assert_eq!(error.close_code(), 1002);
}

#[test]
fn rsv1_is_refused_on_continuations_and_control_frames_even_with_deflate() {
    let config = Config {
        deflate: Some(DeflateParams::no_context_takeover(&DeflatePolicy::default())),
        ..Config::server()
    };
    for wire in [
        [masked(0x02, KEY, b""), masked(0xc0, KEY, b"")].concat(),
        masked(0xc9, KEY, b""),
    ] {
        let (error, code) = code_of(config.clone(), &wire);
        assert!(matches!(error, ProtocolError::Protocol(_)));
        assert_eq!(code, 1002);
    }
}

#[test]
fn limits_are_1009_and_checked_before_allocating() {
    let small = Config {
        max_frame_size: 100,
        max_message_size: 150,
        ..Config::server()
    };
    let (error, code) = code_of(small.clone(), &masked(0x82, KEY, &[0; 101]));
    assert!(matches!(error, ProtocolError::FrameTooBig { limit: 100 }));
    assert_eq!(code, 1009);
    let two = [masked(0x02, KEY, &[0; 100]), masked(0x80, KEY, &[0; 51])].concat();
    let (error, code) = code_of(small, &two);
    assert!(matches!(error, ProtocolError::MessageTooBig { limit: 150 }));
    assert_eq!(code, 1009);
    // A header declaring 2^63 - 1 bytes is an error, not an allocation.
    let huge = [0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let mut connection = server();
    let error = read_error(&mut connection, &huge);
    assert_eq!(error.close_code(), 1009);
    assert_eq!(connection.buffered(), 0);
}

#[test]
fn invalid_utf8_is_1007_and_fails_at_the_fragment_that_breaks_it() {
    let (error, code) = code_of(Config::server(), &masked(0x81, KEY, &[0xce, 0xba, 0xff]));
    assert!(matches!(error, ProtocolError::InvalidUtf8));
    assert_eq!(code, 1007);

    // The second fragment breaks it: the error comes before any final fragment.
    let mut connection = server();
    let mut first = &masked(0x01, KEY, "κό".as_bytes())[..];
    assert_eq!(connection.receive(&mut first).unwrap(), None);
    let error = read_error(&mut connection, &masked(0x00, KEY, &[0xed, 0xa0, 0x80]));
    assert_eq!(error.close_code(), 1007);

    // Cut inside a character across fragments is fine...
    let mut connection = server();
    let euro = "€".as_bytes();
    let wire = [
        masked(0x01, KEY, &euro[..1]),
        masked(0x00, KEY, &euro[1..2]),
        masked(0x80, KEY, &euro[2..]),
    ]
    .concat();
    assert_eq!(read_all(&mut connection, &wire), [Message::text("€")]);
    // ...but the last fragment may not end inside one.
    let wire = [masked(0x01, KEY, b"a"), masked(0x80, KEY, &euro[..2])].concat();
    let (error, code) = code_of(Config::server(), &wire);
    assert!(matches!(error, ProtocolError::InvalidUtf8));
    assert_eq!(code, 1007);

    // One frame arriving byte by byte fails at the bad byte, before its end.
    let mut connection = server();
    let wire = masked(0x81, KEY, &[b'a', b'b', 0xff, b'c', b'd']);
    let mut failed_at = None;
    for (i, byte) in wire.iter().enumerate() {
        let mut input = std::slice::from_ref(byte);
        if connection.receive(&mut input).is_err() {
            failed_at = Some(i);
            break;
        }
    }
    assert_eq!(failed_at, Some(wire.len() - 3));
}

#[test]
fn close_codes_a_peer_may_not_send_are_1002_and_bad_reasons_1007() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let (error, close) = code_of(Config::server(), &masked(0x88, KEY, &code.to_be_bytes()));
        assert!(matches!(error, ProtocolError::BadCloseCode(c) if c == code));
        assert_eq!(close, 1002);
    }
    for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
        let mut connection = server();
        let messages = read_all(&mut connection, &masked(0x88, KEY, &code.to_be_bytes()));
        assert_eq!(
            messages,
            [Message::Close(Some(CloseFrame::new(code, "").unwrap()))]
        );
    }
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[0xff, 0xfe]);
    let (error, code) = code_of(Config::server(), &masked(0x88, KEY, &payload));
    assert!(matches!(error, ProtocolError::BadClosePayload));
    assert_eq!(code, 1007);
}

#[test]
fn corrupt_compressed_data_is_1007() {
    let config = Config {
        deflate: Some(DeflateParams::no_context_takeover(&DeflatePolicy::default())),
        ..Config::server()
    };
    let (error, code) = code_of(config, &masked(0xc2, KEY, &[0xff, 0xff, 0xff, 0xff]));
    assert!(matches!(error, ProtocolError::Inflate(_)), "{error}");
    assert_eq!(code, 1007);
}

#[test]
fn a_16_kib_deflate_bomb_is_message_too_big() {
    use flate2::{Compress, Compression, FlushCompress};
    // Zeros compress about 1000:1: 16 MiB of them make a bomb of about 16 KiB.
    let zeros = vec![0u8; 16 << 20];
    let mut compressor = Compress::new(Compression::best(), false);
    let mut bomb = Vec::with_capacity(80 * 1024);
    compressor
        .compress_vec(&zeros, &mut bomb, FlushCompress::Sync)
        .unwrap();
    assert!(
        (8 << 10..32 << 10).contains(&bomb.len()),
        "bomb of {} bytes",
        bomb.len()
    );
    let limit = 1 << 20;
    for takeover in [false, true] {
        let params = DeflateParams {
            client_no_context_takeover: !takeover,
            ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
        };
        let mut connection = Connection::new(Config {
            max_message_size: limit,
            deflate: Some(params),
            ..Config::server()
        });
        let error = read_error(&mut connection, &masked(0xc2, KEY, &bomb));
        assert!(
            matches!(error, ProtocolError::MessageTooBig { limit: l } if l == limit),
            "{error}"
        );
        assert_eq!(error.close_code(), 1009);
        assert_eq!(connection.buffered(), 0);
    }
}

#[test]
fn budget_is_reserved_only_across_calls_and_always_returned() {
    let budget = InboundBudget::new(1000);
    let config = Config {
        budget: Some(budget.clone()),
        ..Config::server()
    };
    // Whole messages never touch it, even a budget of zero.
    let mut connection = Connection::new(Config {
        budget: Some(InboundBudget::new(0)),
        ..Config::server()
    });
    let two = [masked(0x01, KEY, b"ab"), masked(0x80, KEY, b"cd")].concat();
    assert_eq!(read_all(&mut connection, &two), [Message::text("abcd")]);

    let mut connection = Connection::new(config.clone());
    let wire = masked(0x82, KEY, &[7; 600]);
    let mut input = &wire[..100];
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    assert_eq!(budget.in_use(), 600);
    assert_eq!(connection.buffered(), 600);
    // A second connection cannot hold another 600.
    let mut other = Connection::new(config.clone());
    let mut input2 = &wire[..100];
    let error = other.receive(&mut input2).unwrap_err();
    assert!(matches!(error, ProtocolError::BudgetExhausted));
    assert_eq!(error.close_code(), 1013);
    assert_eq!(budget.in_use(), 600);
    let mut rest = &wire[100..];
    assert_eq!(
        connection.receive(&mut rest).unwrap(),
        Some(Message::binary(vec![7; 600]))
    );
    assert_eq!(budget.in_use(), 0);
    assert_eq!(connection.buffered(), 0);

    // Returned on error and on drop.
    let mut first = &masked(0x02, KEY, &[7; 600])[..];
    assert_eq!(connection.receive(&mut first).unwrap(), None);
    assert_eq!(budget.in_use(), 600);
    let _ = read_error(&mut connection, &masked(0x83, KEY, b""));
    assert_eq!(budget.in_use(), 0);
    let mut dropped = Connection::new(config);
    let mut input = &wire[..100];
    assert_eq!(dropped.receive(&mut input).unwrap(), None);
    assert_eq!(budget.in_use(), 600);
    drop(dropped);
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn peer_close_is_echoed_and_ends_reading() {
    let mut connection = server();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let wire = [masked(0x88, KEY, &payload), masked(0x81, KEY, b"late")].concat();
    let mut input = &wire[..];
    assert_eq!(
        connection.receive(&mut input).unwrap(),
        Some(Message::Close(Some(CloseFrame::new(1000, "bye").unwrap())))
    );
    assert_eq!(connection.close_state(), CloseState::Closed);
    assert_eq!(take_output(&mut connection), [0x88, 0x02, 0x03, 0xe8]);
    // Data after the peer's close is ignored.
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    assert!(input.is_empty());
    assert!(matches!(
        connection.send(Message::text("x")),
        Err(SendError::Closed)
    ));

    let mut connection = server();
    assert_eq!(
        read_all(&mut connection, &masked(0x88, KEY, b"")),
        [Message::Close(None)]
    );
    assert_eq!(take_output(&mut connection), [0x88, 0x00]);
}

#[test]
fn our_close_first_then_the_peers() {
    let mut connection = server();
    connection
        .send(Message::Close(Some(
            CloseFrame::new(1001, "going").unwrap(),
        )))
        .unwrap();
    assert_eq!(connection.close_state(), CloseState::CloseSent);
    assert_eq!(
        take_output(&mut connection),
        [0x88, 0x07, 0x03, 0xe9, b'g', b'o', b'i', b'n', b'g']
    );
    assert!(matches!(
        connection.send(Message::Ping(Default::default())),
        Err(SendError::Closed)
    ));
    // Data still arrives until the peer's close; pings are no longer answered.
    assert_eq!(
        read_all(&mut connection, &masked(0x89, KEY, b"p")),
        [Message::Ping("p".into())]
    );
    assert_eq!(
        read_all(&mut connection, &masked(0x81, KEY, b"x")),
        [Message::text("x")]
    );
    assert_eq!(
        read_all(&mut connection, &masked(0x88, KEY, &1001u16.to_be_bytes())),
        [Message::Close(Some(CloseFrame::new(1001, "").unwrap()))]
    );
    assert_eq!(connection.close_state(), CloseState::Closed);
    assert!(connection.output().is_empty(), "no second close");
}

#[test]
fn fail_queues_the_errors_close_code_and_stops_reading() {
    let mut connection = server();
    let error = read_error(&mut connection, &masked(0x81, KEY, &[0xff]));
    connection.fail(&error);
    assert_eq!(connection.close_state(), CloseState::CloseSent);
    let out = take_output(&mut connection);
    assert_eq!(&out[..4], &[0x88, out[1], 0x03, 0xef]);
    assert_eq!(usize::from(out[1]), out.len() - 2);
    let mut input = &masked(0x81, KEY, b"x")[..];
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    assert!(input.is_empty());
}

#[test]
fn oversized_control_payloads_are_refused_on_send() {
    let mut connection = server();
    assert!(matches!(
        connection.send(Message::Ping(vec![0; 126].into())),
        Err(SendError::ControlTooLong(126))
    ));
    connection.send(Message::Ping(vec![0; 125].into())).unwrap();
}

#[test]
fn a_message_in_many_small_fragments_grows_its_buffer_geometrically() {
    let mut connection = server();
    let fragment = [b'a'; 64];
    let count = 16 * 1024; // 1 MiB in 64-byte fragments
    let mut wire = masked(0x01, KEY, &fragment);
    for _ in 1..count - 1 {
        wire.extend(masked(0x00, KEY, &fragment));
    }
    wire.extend(masked(0x80, KEY, &fragment));
    let mut input = &wire[..];
    let started = std::time::Instant::now();
    let message = connection.receive(&mut input).unwrap().unwrap();
    assert_eq!(message.len(), 64 * count);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
