//! Room history in Redis Streams, shared by two instances: positions at join, recovery after
//! a TCP reset with every missed message once and in order, then live ones; too old and
//! flushed histories refused.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use test_support::RedisServer;
use tokio::sync::watch;
use ws_backplane_redis::Settings;
use ws_context::{CloseFrame, Connection, ConnectionHub, Message, RoomPosition};
use ws_test::WsClient;

use crate::support::Instance;

/// How long a client may wait for its next line while hundreds of others are served.
const READ_WAIT: Duration = Duration::from_secs(15);

/// One instance with a shared history, serving `/ws/{room}[?since=POS]`. A member is greeted
/// with `{"pos": ...}` at join; a recovery that fails says `{"recovered": false}` first, then
/// joins with a greeting.
async fn node(redis_url: &str, len: usize, age: Duration) -> Instance {
    let settings = Settings::builder()
        .prefix("hist")
        .heartbeat(Duration::from_millis(200));
    let node = Instance::start_custom(redis_url, settings, |endpoint| {
        endpoint.queue_capacity(4096).on_connect(join)
    })
    .await;
    node.hub.set_history_limits(len, age);
    node
}

fn greeting(pos: &RoomPosition) -> Message {
    Message::text(serde_json::json!({ "pos": pos.to_string() }).to_string())
}

async fn join(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    let hub = conn.hub();
    if let Some(since) = conn.query_param("since") {
        let recovered = match since.parse::<RoomPosition>() {
            Ok(since) => hub.join_since(conn.id(), &room, &since).await,
            Err(_) => Err(ws_context::RecoveryError::EpochChanged),
        };
        match recovered {
            Ok(_) => return Ok(()),
            Err(error) => {
                let notice = serde_json::json!({"recovered": false, "error": error.to_string()});
                let _ = conn.socket().text(notice.to_string()).await;
            }
        }
    }
    let _ = hub.join_at(conn.id(), &room, greeting).await;
    Ok(())
}

/// Sends message `n` to `room` from `hub`, carrying its position; returns the position.
async fn say(hub: &ConnectionHub, room: &str, n: u64) -> RoomPosition {
    let sent = hub
        .send_to_room_with(room, |pos| {
            let pos = pos.map(ToString::to_string);
            Message::text(serde_json::json!({ "n": n, "pos": pos }).to_string())
        })
        .await;
    sent.position
        .expect("a shared history gives every message a position")
}

async fn connect(node: &Instance, room: &str, since: Option<&str>) -> WsClient {
    let path = match since {
        Some(since) => format!("/ws/{room}?since={since}"),
        None => format!("/ws/{room}"),
    };
    node.server.client(&path).timeout(READ_WAIT).connect().await
}

/// What one client saw: the message numbers in order and the last position.
#[derive(Default)]
struct Seen {
    numbers: Vec<u64>,
    offsets: Vec<u64>,
    pos: String,
}

impl Seen {
    fn take(&mut self, line: &serde_json::Value) {
        assert_ne!(line["recovered"], false, "recovery refused: {line}");
        if let Some(pos) = line["pos"].as_str() {
            self.pos = pos.to_owned();
            if let Some(n) = line["n"].as_u64() {
                self.numbers.push(n);
                self.offsets
                    .push(pos.parse::<RoomPosition>().unwrap().offset());
            }
        }
    }
}

const ROOMS: usize = 10;
const CLIENTS: usize = 500;
const CUT_EVERY: usize = 5;
const MESSAGES: u64 = 50;
const LIVE: u64 = 5;
const CUT_AT: u64 = 20;

/// The issue's acceptance: two instances, 500 clients in 10 rooms; 100 cut by a TCP reset
/// while 50 messages per room are published (from both instances), then back on the other
/// instance with their last position: every missed message once, in order, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_500_clients_10_rooms_100_cut_by_reset_miss_nothing_across_instances() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let started = Instant::now();
    let nodes = Arc::new([
        node(&redis.url(), 1000, Duration::from_secs(300)).await,
        node(&redis.url(), 1000, Duration::from_secs(300)).await,
    ]);
    let (cut_tx, cut_rx) = watch::channel(false);
    let reconnected = Arc::new(AtomicUsize::new(0));
    let recovered_total = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    for i in 0..CLIENTS {
        let nodes = nodes.clone();
        let mut cut = cut_rx.clone();
        let reconnected = reconnected.clone();
        let recovered_total = recovered_total.clone();
        let ready = ready_tx.clone();
        clients.push(tokio::spawn(async move {
            let room = format!("room{}", i % ROOMS);
            let mut seen = Seen::default();
            let mut client = connect(&nodes[i % 2], &room, None).await;
            let hello = client.recv_json().await;
            seen.take(&hello);
            assert!(!seen.pos.is_empty(), "greeted with a position: {hello}");
            ready.send(()).await.unwrap();
            if i % CUT_EVERY == 0 {
                loop {
                    tokio::select! {
                        line = client.recv_json() => seen.take(&line),
                        _ = cut.wait_for(|cut| *cut) => break,
                    }
                }
                client.reset();
                let before = seen.numbers.len();
                tokio::time::sleep(Duration::from_millis((i % 50) as u64 * 2)).await;
                client = connect(&nodes[(i + 1) % 2], &room, Some(&seen.pos)).await;
                reconnected.fetch_add(1, Ordering::SeqCst);
                while seen.numbers.last() != Some(&(MESSAGES + LIVE - 1)) {
                    seen.take(&client.recv_json().await);
                }
                recovered_total.fetch_add(seen.numbers.len() - before, Ordering::SeqCst);
            } else {
                while seen.numbers.last() != Some(&(MESSAGES + LIVE - 1)) {
                    seen.take(&client.recv_json().await);
                }
            }
            (i, seen)
        }));
    }
    for _ in 0..CLIENTS {
        ready_rx.recv().await.unwrap();
    }
    let joined = started.elapsed();

    let publish_started = Instant::now();
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let nodes = nodes.clone();
        let cut_tx = cut_tx.clone();
        rooms.push(tokio::spawn(async move {
            let room = format!("room{r}");
            for n in 0..MESSAGES {
                if n == CUT_AT && r == 0 {
                    cut_tx.send_replace(true);
                }
                say(&nodes[(n as usize + r) % 2].hub, &room, n).await;
            }
        }));
    }
    for room in rooms {
        room.await.unwrap();
    }
    let published = publish_started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reconnected.load(Ordering::SeqCst) < CLIENTS / CUT_EVERY {
        assert!(Instant::now() < deadline, "cut clients did not reconnect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in MESSAGES..MESSAGES + LIVE {
        for r in 0..ROOMS {
            say(&nodes[(n as usize + r) % 2].hub, &format!("room{r}"), n).await;
        }
    }
    let expected: Vec<u64> = (0..MESSAGES + LIVE).collect();
    for client in clients {
        let (i, seen) = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("a client did not get every message in time")
            .unwrap();
        assert_eq!(
            seen.numbers, expected,
            "client {i}: each message once, in order"
        );
        for pair in seen.offsets.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "client {i}: offsets without a gap");
        }
    }
    let recovered = recovered_total.load(Ordering::SeqCst);
    eprintln!(
        "recovery: {CLIENTS} clients joined in {joined:?}; {} messages published in {published:?} \
         from 2 instances; {} clients cut by reset and back on the other instance got {recovered} \
         missed-or-later messages, 0 missing, 0 duplicates; total {:?}",
        ROOMS as u64 * (MESSAGES + LIVE),
        CLIENTS / CUT_EVERY,
        started.elapsed()
    );
}

/// Two instances sending to one room at once: the history gives one order, which every
/// member on both instances gets, each message once, offsets without a gap.
#[tokio::test]
async fn senders_on_two_instances_at_once_share_one_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis.url(), 1000, Duration::from_secs(300)).await;
    let b = node(&redis.url(), 1000, Duration::from_secs(300)).await;
    let mut on_a = connect(&a, "busy", None).await;
    let mut on_b = connect(&b, "busy", None).await;
    let start_a = on_a.recv_json::<serde_json::Value>().await;
    let start_b = on_b.recv_json::<serde_json::Value>().await;
    const EACH: u64 = 200;
    let (sent_a, sent_b) = tokio::join!(
        async {
            for n in 0..EACH {
                say(&a.hub, "busy", n).await;
            }
        },
        async {
            for n in EACH..2 * EACH {
                say(&b.hub, "busy", n).await;
            }
        }
    );
    let _ = (sent_a, sent_b);
    let mut orders = Vec::new();
    for (client, start) in [(&mut on_a, start_a), (&mut on_b, start_b)] {
        let mut seen = Seen::default();
        seen.take(&start);
        while seen.numbers.len() < 2 * EACH as usize {
            seen.take(&client.recv_json::<serde_json::Value>().await);
        }
        let first = start["pos"]
            .as_str()
            .unwrap()
            .parse::<RoomPosition>()
            .unwrap();
        let offsets: Vec<u64> = (1..=2 * EACH).map(|k| first.offset() + k).collect();
        assert_eq!(
            seen.offsets, offsets,
            "consecutive offsets, no gap, no duplicate"
        );
        // Each sender's messages in its own order.
        let of_a: Vec<u64> = seen.numbers.iter().copied().filter(|n| *n < EACH).collect();
        let of_b: Vec<u64> = seen
            .numbers
            .iter()
            .copied()
            .filter(|n| *n >= EACH)
            .collect();
        assert_eq!(of_a, (0..EACH).collect::<Vec<_>>());
        assert_eq!(of_b, (EACH..2 * EACH).collect::<Vec<_>>());
        orders.push(seen.numbers);
    }
    assert_eq!(orders[0], orders[1], "one order on both instances");
}

/// A client given a position at join that received nothing can still recover; one whose
/// position is older than the history, or whose epoch Redis lost, is told it cannot.
#[tokio::test]
async fn position_at_join_recovers_too_old_and_flushed_are_refused() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis.url(), 16, Duration::from_secs(300)).await;
    let b = node(&redis.url(), 16, Duration::from_secs(300)).await;

    // Received nothing but its greeting, then dropped: recovers the 3 it missed.
    let mut quiet = connect(&a, "r", None).await;
    let at_join = quiet.recv_json::<serde_json::Value>().await["pos"]
        .as_str()
        .unwrap()
        .to_owned();
    quiet.reset();
    for n in 0..3 {
        say(&b.hub, "r", n).await;
    }
    let mut back = connect(&b, "r", Some(&at_join)).await;
    let mut seen = Seen::default();
    while seen.numbers.len() < 3 {
        seen.take(&back.recv_json::<serde_json::Value>().await);
    }
    assert_eq!(seen.numbers, [0, 1, 2]);

    // Older than the history: 16 kept, recovery reads at most 2 x 16 back.
    let old = seen.pos.clone();
    for n in 3..100 {
        say(&a.hub, "r", n).await;
    }
    let mut late = connect(&a, "r", Some(&old)).await;
    let notice = late.recv_json::<serde_json::Value>().await;
    assert_eq!(notice["recovered"], false, "{notice}");
    assert!(
        notice["error"].as_str().unwrap().contains("older"),
        "{notice}"
    );
    // ...and then joined with a fresh position.
    assert!(late.recv_json::<serde_json::Value>().await["pos"].is_string());

    // Redis flushed: the epoch is gone, and a new one starts.
    let recent = say(&a.hub, "r", 100).await.to_string();
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    let after = say(&b.hub, "r", 101).await;
    assert_ne!(
        after.epoch(),
        recent.parse::<RoomPosition>().unwrap().epoch()
    );
    assert_eq!(after.offset(), 1);
    let mut lost = connect(&b, "r", Some(&recent)).await;
    let notice = lost.recv_json::<serde_json::Value>().await;
    assert_eq!(notice["recovered"], false, "{notice}");
    assert!(
        notice["error"].as_str().unwrap().contains("changed"),
        "{notice}"
    );

    // A position from the future, or not ours, is refused the same way.
    let mut odd = connect(&a, "r", Some("99.0123456789abcdef")).await;
    assert_eq!(
        odd.recv_json::<serde_json::Value>().await["recovered"],
        false
    );
}

/// The age bound: messages older than it are trimmed, and a position before them is too
/// old.
#[tokio::test]
async fn messages_older_than_the_age_bound_are_not_recovered() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis.url(), 1000, Duration::from_secs(1)).await;
    let mut client = connect(&a, "aged", None).await;
    let at_join = client.recv_json::<serde_json::Value>().await["pos"]
        .as_str()
        .unwrap()
        .to_owned();
    say(&a.hub, "aged", 0).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    say(&a.hub, "aged", 1).await;
    let mut late = connect(&a, "aged", Some(&at_join)).await;
    let notice = late.recv_json::<serde_json::Value>().await;
    assert_eq!(notice["recovered"], false, "{notice}");
    assert!(
        notice["error"].as_str().unwrap().contains("older"),
        "{notice}"
    );
}
