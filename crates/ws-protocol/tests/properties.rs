//! Input cut anywhere reads the same as input given at once: a small hand-made generator of
//! frame sequences (fragmented messages, control frames between fragments, empty frames).

use ws_protocol::{
    Config, Connection, Message,
    deflate::{DeflateParams, DeflatePolicy},
};

use crate::common::{masked, read_all, take_output};

/// xorshift64: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
    fn key(&mut self) -> [u8; 4] {
        (self.next() as u32).to_ne_bytes()
    }
}

const TEXT: &str = "hello κόσμε € 😀 ";

/// A random message sequence and its client-side wire bytes (hand-framed, fragmented).
fn generate(rng: &mut Rng) -> (Vec<Message>, Vec<u8>) {
    let mut messages = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..rng.below(8) + 1 {
        let text = rng.below(2) == 0;
        let len = [0, 1, 5, 125, 126, 300, 70_000][rng.below(7)];
        let payload: Vec<u8> = if text {
            TEXT.repeat(len / TEXT.len() + 1).into_bytes()[..]
                .iter()
                .copied()
                .take(len)
                .collect()
        } else {
            (0..len).map(|i| (i * 7) as u8).collect()
        };
        // Cut text only at character boundaries of the whole, but fragments may split chars.
        let payload = if text {
            let s = String::from_utf8_lossy(&payload).into_owned();
            s.into_bytes()
        } else {
            payload
        };
        let message = if text {
            Message::text(String::from_utf8(payload.clone()).unwrap())
        } else {
            Message::binary(payload.clone())
        };
        let fragments = rng.below(4) + 1;
        let mut cuts: Vec<usize> = (0..fragments - 1)
            .map(|_| rng.below(payload.len() as u64 + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let opcode = if i > 0 {
                0
            } else if text {
                1
            } else {
                2
            };
            let last = i + 1 == cuts.len();
            let fin = if last { 0x80 } else { 0 };
            wire.extend(masked(fin | opcode, rng.key(), &payload[start..end]));
            start = end;
            if last {
                messages.push(message.clone());
            }
            // A ping between fragments is read before the message it interrupts completes.
            if rng.below(3) == 0 {
                let ping = vec![b'p'; rng.below(126)];
                wire.extend(masked(0x89, rng.key(), &ping));
                messages.push(Message::Ping(ping.into()));
            }
        }
    }
    (messages, wire)
}

fn read_in_steps(
    mut connection: Connection,
    wire: &[u8],
    steps: &mut dyn FnMut() -> usize,
) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = steps().clamp(1, rest.len());
        let (mut chunk, tail) = rest.split_at(n);
        rest = tail;
        while let Some(message) = connection.receive(&mut chunk).unwrap() {
            messages.push(message);
        }
        assert!(chunk.is_empty());
    }
    assert_eq!(connection.buffered(), 0);
    messages
}

#[test]
fn cutting_the_input_anywhere_gives_the_same_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..60 {
        let (expected, wire) = generate(&mut rng);
        let whole = read_all(&mut Connection::new(Config::server()), &wire);
        assert_eq!(whole, expected);
        let one_by_one = read_in_steps(Connection::new(Config::server()), &wire, &mut || 1);
        assert_eq!(one_by_one, whole);
        let mut step_rng = Rng(rng.next() | 1);
        let random = read_in_steps(Connection::new(Config::server()), &wire, &mut || {
            step_rng.below(40) + 1
        });
        assert_eq!(random, whole);
    }
}

#[test]
fn compressed_input_cut_anywhere_gives_the_same_messages() {
    let mut rng = Rng(12345);
    for takeover in [false, true] {
        let params = DeflateParams {
            server_no_context_takeover: !takeover,
            client_no_context_takeover: !takeover,
            threshold: 8,
            ..DeflateParams::no_context_takeover(&DeflatePolicy::default())
        };
        let client_config = Config {
            deflate: Some(params),
            ..Config::client()
        };
        let server_config = Config {
            deflate: Some(params),
            ..Config::server()
        };
        let mut client = Connection::new(client_config);
        let mut messages = Vec::new();
        for _ in 0..40 {
            let len = [0, 3, 40, 1000, 20_000][rng.below(5)];
            let message = if rng.below(2) == 0 {
                Message::text(TEXT.repeat(len / TEXT.len() + 1))
            } else {
                Message::binary((0..len).map(|i| (i % 13) as u8).collect::<Vec<_>>())
            };
            client.send(message.clone()).unwrap();
            messages.push(message);
        }
        let wire = take_output(&mut client);
        let whole = read_all(&mut Connection::new(server_config.clone()), &wire);
        assert_eq!(whole, messages);
        let one_by_one = read_in_steps(Connection::new(server_config.clone()), &wire, &mut || 1);
        assert_eq!(one_by_one, messages);
        let random = read_in_steps(Connection::new(server_config), &wire, &mut || {
            rng.below(100) + 1
        });
        assert_eq!(random, messages);
    }
}
