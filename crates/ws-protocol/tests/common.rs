//! Helpers shared by the tests.

use bytes::Buf;
use ws_protocol::{Connection, Message, ProtocolError};

/// Everything queued in the connection's output.
pub(crate) fn take_output(connection: &mut Connection) -> Vec<u8> {
    let output = connection.output();
    output.copy_to_bytes(output.remaining()).to_vec()
}

/// Reads every message in `bytes`, which must all be consumed.
pub(crate) fn read_all(connection: &mut Connection, bytes: &[u8]) -> Vec<Message> {
    let mut input = bytes;
    let mut messages = Vec::new();
    while let Some(message) = connection.receive(&mut input).expect("valid input") {
        messages.push(message);
    }
    assert!(input.is_empty());
    messages
}

/// The error that reading `bytes` ends with.
pub(crate) fn read_error(connection: &mut Connection, bytes: &[u8]) -> ProtocolError {
    let mut input = bytes;
    loop {
        match connection.receive(&mut input) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("no error in {bytes:02x?}"),
            Err(error) => return error,
        }
    }
}

/// A client frame (masked with `key`) around `payload`.
pub(crate) fn masked(first_byte: u8, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first_byte];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}
