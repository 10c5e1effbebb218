//! Large payloads arriving in pieces: the socket reads the rest of a large data frame straight
//! into the message's buffer (`Connection::receive_direct`); what the peer gets back, and the
//! close codes, are those of the copying path.

use std::time::Duration;

use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use ws_upgrader::{InboundBudget, WsUpgrader};

use crate::support::{spawn_echo, spawn_echo_limited, spawn_echo_with_budget};
use test_support::{client_frame, raw_websocket, read_close_code, read_frame};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Writes `bytes` in pieces of the given sizes (cycled), each given time to be read on its
/// own, so the server's reads end inside headers, characters and mask rotations.
async fn write_in_pieces(stream: &mut TcpStream, bytes: &[u8], sizes: &[usize]) {
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at(size.min(rest.len()));
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        rest = after;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn large_messages_in_pieces_are_echoed_byte_for_byte() {
    let budget = InboundBudget::new(16 << 20);
    let addr = spawn_echo_with_budget(&budget).await;
    let mut stream = raw_websocket(addr, "/ws").await;

    // A binary message in two fragments with a ping between them.
    let binary: Vec<u8> = (0..170_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let (first, second) = binary.split_at(100_000);
    let fragmented = [
        client_frame(false, false, BINARY, first),
        client_frame(true, false, PING, b"between"),
        client_frame(true, false, CONTINUATION, second),
    ]
    .concat();
    write_in_pieces(&mut stream, &fragmented, &[1_000, 20_001, 7, 33_333]).await;
    let pong = read_frame(&mut stream).await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (PONG, &b"between"[..])
    );
    let echo = read_frame(&mut stream).await;
    assert_eq!(echo.opcode, BINARY);
    assert!(echo.payload == binary, "binary echo differs");

    // Text of 1- to 4-byte characters, read in pieces that cut characters.
    let text: String = "aé€😀".chars().cycle().take(60_000).collect();
    let frame = client_frame(true, false, TEXT, text.as_bytes());
    write_in_pieces(&mut stream, &frame, &[3, 17_001, 5, 40_003]).await;
    let echo = read_frame(&mut stream).await;
    assert_eq!(echo.opcode, TEXT);
    assert!(echo.payload == text.as_bytes(), "text echo differs");

    // Every message complete: nothing held, nothing reserved.
    assert_eq!(budget.in_use(), 0);
}

#[tokio::test]
async fn invalid_utf8_deep_in_a_large_text_frame_closes_1007() {
    let addr = spawn_echo(WsUpgrader::new()).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let mut text = "é".repeat(50_000).into_bytes();
    text[90_001] = 0xff;
    let frame = client_frame(true, false, TEXT, &text);
    write_in_pieces(&mut stream, &frame, &[1_000, 30_000]).await;
    assert_eq!(read_close_code(&mut stream).await, 1007);
}

#[tokio::test]
async fn large_fragments_over_the_message_limit_close_1009() {
    let addr = spawn_echo_limited(64 << 10).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let wire = [
        client_frame(false, false, BINARY, &[1; 40 << 10]),
        client_frame(true, false, CONTINUATION, &[2; 40 << 10]),
    ]
    .concat();
    write_in_pieces(&mut stream, &wire, &[1_000, 39_000]).await;
    assert_eq!(read_close_code(&mut stream).await, 1009);
}

/// After a large message the socket reads the next one into a buffer of its own that becomes
/// the message's (`Connection::receive_owned`): messages of every size, one at a time and
/// several in one write, come back byte for byte and in order.
#[tokio::test]
async fn large_and_small_messages_after_a_large_one_are_echoed_in_order() {
    let budget = InboundBudget::new(16 << 20);
    let addr = spawn_echo_with_budget(&budget).await;
    let mut stream = raw_websocket(addr, "/ws").await;
    let payload = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    let sizes = [
        65_536, 65_536, 20_000, 32, 100_000, 65_536, 5, 70_000, 65_536,
    ];
    for (round, &len) in sizes.iter().enumerate() {
        let sent = payload(len, round as u8);
        stream
            .write_all(&client_frame(true, false, BINARY, &sent))
            .await
            .unwrap();
        let echo = read_frame(&mut stream).await;
        assert!(
            echo.payload == sent,
            "message {round} of {len} bytes differs"
        );
    }
    // Back to back: the buffer read for the first also holds the others' start.
    let batch: Vec<Vec<u8>> = [65_536, 65_536, 40, 65_536]
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(len, 100 + i as u8))
        .collect();
    let wire: Vec<u8> = batch
        .iter()
        .flat_map(|sent| client_frame(true, false, BINARY, sent))
        .collect();
    stream.write_all(&wire).await.unwrap();
    for (i, sent) in batch.iter().enumerate() {
        let echo = read_frame(&mut stream).await;
        assert!(echo.payload == *sent, "batched message {i} differs");
    }
    let text: String = "aé€😀".chars().cycle().take(30_000).collect();
    stream
        .write_all(&client_frame(true, false, TEXT, text.as_bytes()))
        .await
        .unwrap();
    let echo = read_frame(&mut stream).await;
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (TEXT, text.as_bytes())
    );
    assert_eq!(budget.in_use(), 0);
}
