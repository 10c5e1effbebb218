//! `Connection::receive_direct`: payload read straight into the message's buffer gives what
//! `receive` gives, with the same checks, limits and budget.

use bytes::BufMut;
use ws_protocol::{Config, Connection, InboundBudget, Message, ProtocolError};

use crate::common::masked;

const KEY: [u8; 4] = [0x9a, 0x17, 0xc3, 0x5e];

fn server_with_budget(budget: &InboundBudget) -> Connection {
    Connection::new(Config {
        budget: Some(budget.clone()),
        ..Config::server()
    })
}

/// Text of 1- to 4-byte characters, long enough that reads of odd sizes cut characters.
fn mixed_text(len: usize) -> String {
    "aé€😀".chars().cycle().take(len).collect()
}

/// `wire` cut into pieces of `sizes` bytes (cycled).
fn pieces<'a>(wire: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = wire;
    sizes.iter().cycle().map_while(move |&size| {
        if rest.is_empty() {
            return None;
        }
        let (piece, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        Some(piece)
    })
}

/// Reads `wire` with `receive` only, `sizes` bytes at a time (cycled).
fn read_by_receive(wire: &[u8], sizes: &[usize]) -> Result<Vec<Message>, ProtocolError> {
    let mut connection = Connection::new(Config::server());
    let mut messages = Vec::new();
    for mut input in pieces(wire, sizes) {
        while !input.is_empty() {
            messages.extend(connection.receive(&mut input)?);
        }
    }
    Ok(messages)
}

/// Reads `wire` as a driver would, `sizes` bytes at a time (cycled): while a data frame's
/// payload is being read, straight into the message's buffer; otherwise through `receive`.
/// Checks after every step that nothing is held past `max_held` bytes.
fn read_direct(
    connection: &mut Connection,
    wire: &[u8],
    sizes: &[usize],
    max_held: usize,
) -> Result<(Vec<Message>, usize), ProtocolError> {
    let mut messages = Vec::new();
    let mut pos = 0;
    let mut direct_reads = 0;
    for &size in sizes.iter().cycle() {
        if pos == wire.len() {
            break;
        }
        let remaining = connection.payload_remaining();
        let direct = connection.receive_direct(size, |buf| {
            assert_eq!(buf.remaining_mut(), remaining.min(size));
            let n = buf.remaining_mut().min(wire.len() - pos);
            buf.put_slice(&wire[pos..pos + n]);
            n
        });
        match direct {
            Some((n, result)) => {
                pos += n;
                direct_reads += 1;
                messages.extend(result?);
            }
            None => {
                let end = (pos + size).min(wire.len());
                let mut input = &wire[pos..end];
                while !input.is_empty() {
                    messages.extend(connection.receive(&mut input)?);
                }
                pos = end;
            }
        }
        assert!(connection.buffered() <= max_held);
    }
    Ok((messages, direct_reads))
}

/// Sizes of reads (cycled) for [`conversation`]: odd sizes rotate the masking key across reads
/// and cut characters, headers and frames; the last holds it all.
fn read_sizes() -> [Vec<usize>; 6] {
    [
        vec![1],
        vec![3, 7, 5],
        vec![13, 4097, 1, 2],
        vec![9999, 17],
        vec![65_536],
        vec![1 << 20],
    ]
}

/// A fragmented text message (characters cut across fragments) with a ping and a pong
/// between its fragments, then a large binary message and a small text one.
fn conversation() -> (Vec<u8>, Vec<Message>) {
    let text = mixed_text(3000);
    let bytes = text.as_bytes();
    let binary: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let wire = [
        masked(0x01, KEY, &bytes[..1001]),
        masked(0x89, [1, 2, 3, 4], b"ping!"),
        masked(0x00, [5, 6, 7, 8], &bytes[1001..2999]),
        masked(0x8a, [9, 9, 9, 9], b""),
        masked(0x80, [0xff, 0, 0xff, 1], &bytes[2999..]),
        masked(0x82, KEY, &binary),
        masked(0x81, KEY, "small €".as_bytes()),
    ]
    .concat();
    let expected = vec![
        Message::Ping("ping!".into()),
        Message::Pong(bytes::Bytes::new()),
        Message::text(text),
        Message::binary(binary),
        Message::text("small €"),
    ];
    (wire, expected)
}

/// The close code of the error that the first 100 bytes of `wire` (a frame's header and the
/// start of its payload) end with; nothing is then held, and nothing can be read directly.
fn header_error(connection: &mut Connection, wire: &[u8]) -> u16 {
    let mut input = &wire[..100];
    let error = connection.receive(&mut input).unwrap_err();
    assert_eq!(connection.buffered(), 0);
    assert!(
        connection
            .receive_direct(usize::MAX, |_| unreachable!())
            .is_none()
    );
    error.close_code()
}

#[test]
fn one_conversation_in_pieces_reads_the_same_through_both_paths() {
    let (wire, expected) = conversation();
    for sizes in read_sizes() {
        let received = read_by_receive(&wire, &sizes).unwrap();
        let mut connection = Connection::new(Config::server());
        let (direct, direct_reads) = read_direct(&mut connection, &wire, &sizes, 1 << 20).unwrap();
        assert_eq!(received, expected, "receive, sizes {sizes:?}");
        assert_eq!(direct, expected, "direct, sizes {sizes:?}");
        assert!(
            direct_reads > 0 || sizes[0] >= wire.len(),
            "sizes {sizes:?}"
        );
        assert_eq!(connection.buffered(), 0);
    }
}

#[test]
fn a_read_that_writes_nothing_changes_nothing() {
    let payload = vec![0x42; 5000];
    let wire = masked(0x82, KEY, &payload);
    let mut connection = Connection::new(Config::server());
    let mut input = &wire[..10];
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    let remaining = connection.payload_remaining();
    let (unit, result) = connection.receive_direct(usize::MAX, |_| ()).unwrap();
    assert_eq!((unit, result.unwrap()), ((), None));
    assert_eq!(connection.payload_remaining(), remaining);
    let mut rest = &wire[10..];
    assert_eq!(
        connection.receive(&mut rest).unwrap(),
        Some(Message::binary(payload))
    );
}

#[test]
fn no_direct_read_between_frames_or_inside_a_control_frame() {
    let mut connection = Connection::new(Config::server());
    assert_eq!(connection.payload_remaining(), 0);
    assert!(connection.receive_direct(100, |_| unreachable!()).is_none());
    let ping = masked(0x89, KEY, &[1; 100]);
    let mut input = &ping[..20];
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    assert_eq!(connection.payload_remaining(), 0);
    assert!(connection.receive_direct(100, |_| unreachable!()).is_none());
}

#[test]
fn invalid_utf8_read_directly_fails_with_1007_and_returns_the_budget() {
    let budget = InboundBudget::new(1 << 20);
    let mut text = mixed_text(2000).into_bytes();
    let bad = text.len() - 10;
    text[bad] = 0xff;
    let wire = masked(0x81, KEY, &text);
    let mut connection = server_with_budget(&budget);
    let error = read_direct(&mut connection, &wire, &[100, 333], 1 << 20).unwrap_err();
    assert!(matches!(error, ProtocolError::InvalidUtf8), "{error}");
    assert_eq!(error.close_code(), 1007);
    assert_eq!(budget.in_use(), 0);
    assert_eq!(connection.buffered(), 0);
    assert_eq!(connection.payload_remaining(), 0);
}

#[test]
fn a_character_cut_by_direct_reads_is_checked_when_complete() {
    // "😀" is 4 bytes: reads of 1 and 2 bytes end inside it again and again.
    let text = "😀".repeat(500);
    let wire = masked(0x81, KEY, text.as_bytes());
    for sizes in [[1, 1], [2, 3], [3, 1]] {
        let mut connection = Connection::new(Config::server());
        let (messages, _) = read_direct(&mut connection, &wire, &sizes, 1 << 20).unwrap();
        assert_eq!(messages, vec![Message::text(text.clone())]);
    }
    // A truncated character at the end of the message is invalid, found when it ends.
    let mut cut = text.into_bytes();
    cut.truncate(cut.len() - 1);
    let wire = masked(0x81, KEY, &cut);
    let mut connection = Connection::new(Config::server());
    let error = read_direct(&mut connection, &wire, &[7], 1 << 20).unwrap_err();
    assert!(matches!(error, ProtocolError::InvalidUtf8), "{error}");
}

#[test]
fn a_message_over_the_limit_fails_before_anything_is_allocated() {
    let budget = InboundBudget::new(1 << 20);
    let limit = 10_000;
    let config = Config {
        max_message_size: limit,
        budget: Some(budget.clone()),
        ..Config::server()
    };
    // One frame over the limit: refused at its header.
    let mut connection = Connection::new(config.clone());
    let wire = masked(0x82, KEY, &vec![0; limit + 1]);
    assert_eq!(header_error(&mut connection, &wire), 1009);

    // Fragments within the limit one by one, over it together: the second fragment's header
    // fails, after the first was read directly into a buffer no larger than the limit.
    let mut connection = Connection::new(config);
    let wire = [
        masked(0x02, KEY, &vec![1; 6000]),
        masked(0x80, KEY, &vec![2; 6000]),
    ]
    .concat();
    let error = read_direct(&mut connection, &wire, &[500, 4000], limit).unwrap_err();
    assert!(
        matches!(error, ProtocolError::MessageTooBig { limit: 10_000 }),
        "{error}"
    );
    assert_eq!(error.close_code(), 1009);
    assert_eq!(connection.buffered(), 0);
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn the_budget_is_held_while_reading_directly_and_returned_when_the_message_completes() {
    let budget = InboundBudget::new(1 << 20);
    let mut connection = server_with_budget(&budget);
    let payload = vec![0x5a; 50_000];
    let wire = masked(0x82, KEY, &payload);
    let mut input = &wire[..1000];
    assert_eq!(connection.receive(&mut input).unwrap(), None);
    let held = budget.in_use();
    assert_eq!(held, connection.buffered());
    assert!(held >= payload.len());
    let mut pos = 1000;
    let (_, result) = connection
        .receive_direct(20_000, |buf| {
            buf.put_slice(&wire[pos..pos + 20_000]);
            pos += 20_000;
        })
        .unwrap();
    assert_eq!(result.unwrap(), None);
    assert_eq!(
        budget.in_use(),
        held,
        "no new reservation for a direct read"
    );
    let (_, result) = connection
        .receive_direct(usize::MAX, |buf| buf.put_slice(&wire[pos..]))
        .unwrap();
    assert_eq!(result.unwrap(), Some(Message::binary(payload)));
    assert_eq!(budget.in_use(), 0);
    assert_eq!(connection.buffered(), 0);
}

#[test]
fn a_budget_too_small_for_the_message_fails_with_1013_before_the_direct_read() {
    let budget = InboundBudget::new(1000);
    let mut connection = server_with_budget(&budget);
    let wire = masked(0x82, KEY, &vec![0; 5000]);
    assert_eq!(header_error(&mut connection, &wire), 1013);
    assert_eq!(budget.in_use(), 0);
}

/// Reads `wire` as a driver between large messages does, `sizes` bytes at a time (cycled):
/// each read is a buffer of its own handed over with `receive_owned`, and what it returns past
/// a message is handed over again.
fn read_owned(
    connection: &mut Connection,
    wire: &[u8],
    sizes: &[usize],
) -> Result<Vec<Message>, ProtocolError> {
    let mut messages = Vec::new();
    for piece in pieces(wire, sizes) {
        let mut buffer = piece.to_vec();
        loop {
            let (result, rest) = connection.receive_owned(buffer);
            messages.extend(result?);
            assert!(connection.buffered() <= 1 << 20);
            if rest.is_empty() {
                break;
            }
            buffer = rest.to_vec();
        }
    }
    Ok(messages)
}

#[test]
fn one_conversation_in_buffers_handed_over_reads_the_same() {
    let (wire, expected) = conversation();
    for sizes in read_sizes() {
        let budget = InboundBudget::new(1 << 20);
        let mut connection = server_with_budget(&budget);
        let received = read_owned(&mut connection, &wire, &sizes).unwrap();
        assert_eq!(received, expected, "sizes {sizes:?}");
        assert_eq!(connection.buffered(), 0);
        assert_eq!(budget.in_use(), 0);
    }
}

#[test]
fn a_handed_over_buffer_becomes_the_message_without_a_copy() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let frame = masked(0x82, KEY, &payload);
    let next = masked(0x81, KEY, b"next");
    // Sized for the frame, as a driver sizes it after a message of the same length; it also
    // holds the start of the next frame, which comes back.
    let mut buffer = Vec::with_capacity(frame.len() + 3);
    buffer.extend_from_slice(&frame);
    buffer.extend_from_slice(&next[..3]);
    let start = buffer.as_ptr() as usize;
    let mut connection = Connection::new(Config::server());
    let (result, rest) = connection.receive_owned(buffer);
    let Some(Message::Binary(received)) = result.unwrap() else {
        panic!("expected the binary message");
    };
    assert!(received == payload);
    // The payload is where the buffer had it, after the 14-byte header.
    assert_eq!(received.as_ptr() as usize, start + 14);
    assert_eq!(&rest[..], &next[..3]);

    // The rest of a frame whose start was in the buffer: read directly, in the same buffer.
    let mut connection = Connection::new(Config::server());
    let mut buffer = Vec::with_capacity(frame.len());
    buffer.extend_from_slice(&frame[..1000]);
    let start = buffer.as_ptr() as usize;
    let (result, rest) = connection.receive_owned(buffer);
    assert_eq!((result.unwrap(), rest.len()), (None, 0));
    let (_, result) = connection
        .receive_direct(usize::MAX, |buf| buf.put_slice(&frame[1000..]))
        .unwrap();
    let Some(Message::Binary(received)) = result.unwrap() else {
        panic!("expected the binary message");
    };
    assert!(received == payload);
    assert_eq!(received.as_ptr() as usize, start + 14);
}

#[test]
fn invalid_utf8_in_a_handed_over_buffer_fails_with_1007_and_returns_the_budget() {
    let budget = InboundBudget::new(1 << 20);
    let mut text = mixed_text(20_000).into_bytes();
    let bad = text.len() / 2;
    text[bad] = 0xff;
    let wire = masked(0x81, KEY, &text);
    for sizes in [[wire.len()], [100]] {
        let mut connection = server_with_budget(&budget);
        let error = read_owned(&mut connection, &wire, &sizes).unwrap_err();
        assert_eq!(error.close_code(), 1007, "sizes {sizes:?}");
        assert_eq!(budget.in_use(), 0);
        assert_eq!(connection.buffered(), 0);
    }
}

#[test]
fn a_handed_over_buffer_is_not_kept_for_a_message_over_the_limit_or_the_budget() {
    let budget = InboundBudget::new(4000);
    let config = Config {
        max_message_size: 10_000,
        budget: Some(budget.clone()),
        ..Config::server()
    };
    let too_big = masked(0x82, KEY, &vec![0; 10_001]);
    let mut connection = Connection::new(config.clone());
    let (result, rest) = connection.receive_owned(too_big[..100].to_vec());
    assert_eq!(result.unwrap_err().close_code(), 1009);
    assert!(rest.is_empty());
    assert_eq!(connection.buffered(), 0);

    // Within the limit, over the budget once kept across calls.
    let wire = masked(0x82, KEY, &vec![0; 5000]);
    let mut connection = Connection::new(config);
    let mut buffer = Vec::with_capacity(wire.len());
    buffer.extend_from_slice(&wire[..100]);
    let (result, _) = connection.receive_owned(buffer);
    assert_eq!(result.unwrap_err().close_code(), 1013);
    assert_eq!(connection.buffered(), 0);
    assert_eq!(budget.in_use(), 0);
}
