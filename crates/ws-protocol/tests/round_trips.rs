//! Server and client talking to each other, with and without deflate and context takeover;
//! prepared messages write what `send` writes.

use ws_protocol::{
    CloseFrame, CloseState, Config, Connection, Message, PreparedMessage, Role,
    deflate::{DeflateParams, DeflatePolicy},
};

use crate::common::{read_all, take_output};

fn params(takeover: bool, window: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: !takeover,
        client_no_context_takeover: !takeover,
        server_max_window_bits: window,
        client_max_window_bits: window,
        ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
    }
}

fn pair(deflate: Option<DeflateParams>) -> (Connection, Connection) {
    (
        Connection::new(Config {
            deflate,
            ..Config::server()
        }),
        Connection::new(Config {
            deflate,
            ..Config::client()
        }),
    )
}

fn messages() -> Vec<Message> {
    let json = r#"{"user":"ana","text":"hello there","room":"lobby","n":12345}"#;
    vec![
        Message::text(""),
        Message::text("hi"),
        Message::text(json),
        Message::text(json.repeat(300)),
        Message::binary(vec![0u8; 0]),
        Message::binary((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
        Message::Ping("are you there".into()),
        Message::Pong("yes".into()),
        Message::text(json),
    ]
}

#[test]
fn both_directions_with_and_without_deflate_and_takeover() {
    let settings = [
        None,
        Some(params(false, 15)),
        Some(params(true, 15)),
        Some(params(false, 9)),
        Some(params(true, 10)),
        Some(params(false, 8)),
        Some(params(true, 8)),
    ];
    for deflate in settings {
        let (mut server, mut client) = pair(deflate);
        assert_eq!(server.compression(), deflate.is_some());
        for message in messages() {
            client.send(message.clone()).unwrap();
            let wire = take_output(&mut client);
            let got = read_all(&mut server, &wire);
            assert_eq!(got, std::slice::from_ref(&message), "{deflate:?}");
            // A ping is answered by the server: the client reads the pong.
            let answer = take_output(&mut server);
            if let Message::Ping(payload) = &message {
                assert_eq!(
                    read_all(&mut client, &answer),
                    [Message::Pong(payload.clone())]
                );
            }
            server.send(message.clone()).unwrap();
            let wire = take_output(&mut server);
            let got = read_all(&mut client, &wire);
            assert_eq!(got, std::slice::from_ref(&message));
            let _ = take_output(&mut client);
        }
        client
            .send(Message::Close(Some(CloseFrame::new(1000, "done").unwrap())))
            .unwrap();
        let wire = take_output(&mut client);
        assert_eq!(
            read_all(&mut server, &wire),
            [Message::Close(Some(CloseFrame::new(1000, "done").unwrap()))]
        );
        assert_eq!(server.close_state(), CloseState::Closed);
        let echo = take_output(&mut server);
        assert_eq!(
            read_all(&mut client, &echo),
            [Message::Close(Some(CloseFrame::new(1000, "").unwrap()))]
        );
        assert_eq!(client.close_state(), CloseState::Closed);
    }
}

#[test]
fn prepared_messages_write_what_send_writes() {
    let settings = [
        None,
        Some(params(false, 15)),
        Some(params(true, 15)),
        Some(params(false, 11)),
    ];
    for deflate in settings {
        let prepared: Vec<PreparedMessage> =
            messages().into_iter().map(PreparedMessage::new).collect();
        // Servers: byte for byte, over several connections sharing the prepared bytes.
        for _ in 0..3 {
            let mut by_send = Connection::new(Config {
                deflate,
                ..Config::server()
            });
            let mut by_prepared = Connection::new(Config {
                deflate,
                ..Config::server()
            });
            for message in &prepared {
                by_send.send(message.message().clone()).unwrap();
                by_prepared.send_prepared(message).unwrap();
            }
            assert_eq!(
                take_output(&mut by_send),
                take_output(&mut by_prepared),
                "{deflate:?}"
            );
        }
        // Clients mask each frame with a fresh key: compare what a server reads.
        let mut client = Connection::new(Config {
            deflate,
            ..Config::client()
        });
        for message in &prepared {
            client.send_prepared(message).unwrap();
        }
        let mut server = Connection::new(Config {
            deflate,
            ..Config::server()
        });
        assert_eq!(read_all(&mut server, &take_output(&mut client)), messages());
    }
}

#[test]
fn prepared_messages_are_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PreparedMessage>();
    let prepared = PreparedMessage::new(Message::text("x".repeat(10_000)));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let prepared = prepared.clone();
            std::thread::spawn(move || {
                let mut server = Connection::new(Config {
                    deflate: Some(params(false, 15)),
                    ..Config::server()
                });
                server.send_prepared(&prepared).unwrap();
                take_output(&mut server)
            })
        })
        .collect();
    let outputs: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let _ = Role::Server;
}

#[test]
fn an_8_bit_window_is_honoured_with_stored_blocks() {
    use ws_protocol::deflate::negotiate;
    let (params, answer) = negotiate(
        ["permessage-deflate; server_max_window_bits=8"],
        &DeflatePolicy::default(),
    )
    .unwrap();
    assert_eq!(params.server_max_window_bits, 8);
    assert!(answer.ends_with("; server_max_window_bits=8"));
    let mut server = Connection::new(Config {
        deflate: Some(params),
        ..Config::server()
    });
    // zlib has no 8-bit window: stored blocks, no back-references, so any window reads
    // them; a stored message is longer than the text, so it goes out plain.
    let text = "abcabcabc".repeat(100);
    server.send(Message::text(text.clone())).unwrap();
    let wire = take_output(&mut server);
    assert_eq!(wire[0], 0x81, "plain: stored blocks do not shrink it");
    assert_eq!(&wire[4..], text.as_bytes());
    let mut client = Connection::new(Config {
        deflate: Some(params),
        ..Config::client()
    });
    assert_eq!(read_all(&mut client, &wire), [Message::text(text)]);
}
