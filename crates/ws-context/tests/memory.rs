//! DESIGN.md point 10: a client that stops reading cannot grow server memory without bound.
//!
//! The server is the `rooms` example in a child process, so its resident memory (VmRSS and
//! the peak, VmHWM, from /proc) is the server's alone.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Client, connect};

const QUEUE_CAPACITY: u64 = 16;
const MESSAGE_SIZE: usize = 64 * 1024;
/// 200 MiB.
const MESSAGES: usize = 3200;
/// The publisher, three other fast readers and the slow one.
const CONNECTIONS: u64 = 5;
/// Allocator slack, the engine's per-connection write buffers and one message being read.
const CONSTANT: u64 = 8 * 1024 * 1024;
/// Moving 200 MiB to four readers in a debug build takes a while on a shared machine.
const BLAST_WAIT: Duration = Duration::from_secs(180);

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rooms_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("rooms");
    assert!(
        path.exists(),
        "{} is missing: `cargo test -p ws-context` builds it (or `cargo build -p ws-context --examples`)",
        path.display()
    );
    path
}

fn start_server() -> Server {
    let mut child = Command::new(rooms_example())
        .env("PORT", "0")
        .env("QUEUE_CAPACITY", QUEUE_CAPACITY.to_string())
        .env("SEND_TIMEOUT_MS", "1000")
        // Long enough for the slow client to come back for its close frame after the blast.
        .env("CLOSE_GRACE_MS", "600000")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Server { child, addr }
}

/// A field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Connects to the room and waits for the echo of its own greeting: from then on it is a
/// member and gets every message.
async fn member(addr: SocketAddr, name: &str) -> Client {
    let mut client = connect(addr, "/ws/load").await;
    client.send(Message::text(name)).await.unwrap();
    loop {
        let message = tokio::time::timeout(crate::support::WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message == Message::text(name) {
            return client;
        }
    }
}

/// Counts the blast's binary messages, checking their order; greetings are skipped.
async fn read_blast(
    mut stream: impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + Unpin,
) -> usize {
    let mut received = 0;
    while received < MESSAGES {
        match stream.next().await {
            Some(Ok(Message::Binary(data))) => {
                assert_eq!(data.len(), MESSAGE_SIZE);
                let seq = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                assert_eq!(seq as usize, received, "in order, none missing");
                received += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("fast reader lost its connection: {other:?}"),
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_cannot_grow_server_memory() {
    let server = start_server();
    let pid = server.child.id();
    let publisher = member(server.addr, "publisher").await;
    let mut fast = Vec::new();
    for n in 0..3 {
        fast.push(member(server.addr, &format!("fast-{n}")).await);
    }
    // From here on the slow client reads nothing until the blast is over.
    let mut slow = member(server.addr, "slow").await;

    let baseline = status_bytes(pid, "VmRSS");
    // Resets VmHWM to the current RSS (Linux 4.0+), so the peak below is the blast's.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();

    let (mut sink, publisher_stream) = publisher.split();
    let mut readers = vec![tokio::spawn(read_blast(publisher_stream))];
    for client in fast {
        readers.push(tokio::spawn(read_blast(client)));
    }
    let blast = tokio::spawn(async move {
        let mut payload = vec![0u8; MESSAGE_SIZE];
        for seq in 0..MESSAGES {
            payload[..4].copy_from_slice(&(seq as u32).to_be_bytes());
            sink.send(Message::binary(payload.clone())).await.unwrap();
        }
        sink
    });
    let _sink = tokio::time::timeout(BLAST_WAIT, blast)
        .await
        .unwrap()
        .unwrap();
    for reader in readers {
        let received = tokio::time::timeout(BLAST_WAIT, reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, MESSAGES);
    }

    let peak = status_bytes(pid, "VmHWM");
    let growth = peak.saturating_sub(baseline);
    let bound = QUEUE_CAPACITY * CONNECTIONS * MESSAGE_SIZE as u64 + CONSTANT;
    eprintln!(
        "server RSS: baseline {baseline} B, peak {peak} B, growth {growth} B, bound {bound} B"
    );
    assert!(
        growth < bound,
        "server memory grew by {growth} bytes; bound {bound}"
    );

    // The slow client now reads what was already on its way, then the close frame.
    let code = tokio::time::timeout(crate::support::WAIT, async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(ws_context::SLOW_PEER_CLOSE_CODE));
}
