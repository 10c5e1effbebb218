//! The load generator of `cargo xtask bench-cluster`: cross-instance delivery through two
//! `chat` instances in cluster mode. One publisher on instance A and SUBSCRIBERS clients on
//! instance B join the room `bench`; the publisher sends RATE messages a second for SECONDS;
//! each subscriber times every message from the publisher's send to its arrival (one clock:
//! same process). Prints one JSON line: messages sent, deliveries expected and received,
//! duplicates, delivery ratio, and latency percentiles in milliseconds.
//!
//! ```not_rust
//! cluster-load ws://A/ws/bench ws://B/ws/bench RATE SECONDS SUBSCRIBERS
//! ```
//!
//! Two more modes, over any number of instances (comma-separated `host:port`s):
//!
//! ```not_rust
//! cluster-load rooms HOSTS CONNECTIONS ROOMS RATE SECONDS
//! cluster-load recover HOSTS CLIENTS ROOMS MISSED
//! ```
//!
//! `rooms`: CONNECTIONS clients spread over the instances and over ROOMS rooms (client `i`
//! on instance `i % n`, room `i % ROOMS`); one member of each room sends, RATE messages a
//! second in all, rooms taking turns; every member (the sender too) times every message of
//! its room. Prints the connections reached, deliveries expected and received, duplicates,
//! and latency percentiles.
//!
//! `recover`: CLIENTS clients in ROOMS rooms, spread the same way, keep the position of their
//! join line and disconnect; MISSED messages are then sent to each room; then every client
//! reconnects at once with `?since=` its position, to the next instance. Prints the time
//! until all of them have every missed message (and per client percentiles), and how many
//! were refused or incomplete.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest a connect or a `/me` answer may take.
const WAIT: Duration = Duration::from_secs(10);
/// Time allowed after the last send for the last deliveries.
const DRAIN: Duration = Duration::from_secs(3);

/// Connects and waits for the `/me` answer, so the client is a member of the room.
async fn member(url: &str) -> anyhow::Result<Client> {
    let (mut client, _) =
        // TCP_NODELAY, so the client adds no Nagle delay to what it measures.
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async_with_config(url, None, true))
            .await??;
    client.send(Message::text("/me")).await?;
    loop {
        let frame = tokio::time::timeout(WAIT, client.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed before answering /me"))??;
        if frame.is_text() {
            return Ok(client);
        }
    }
}

/// The `seq` and send time (µs since `start`) out of a chat line `{"text": "seq micros"}`.
fn parse(frame: &Message) -> Option<(usize, u64)> {
    let line: serde_json::Value = serde_json::from_str(frame.to_text().ok()?).ok()?;
    let (seq, micros) = line["text"].as_str()?.split_once(' ')?;
    Some((seq.parse().ok()?, micros.parse().ok()?))
}

/// Reads `client` until it has every one of `expected` messages (`slot` numbers each
/// message's `seq` among them, `None` for another's), or until `done` and DRAIN without any;
/// returns each message's latency (µs from its send time) and the duplicates.
async fn timed<S>(
    mut client: S,
    start: Instant,
    done: tokio::sync::watch::Receiver<bool>,
    expected: usize,
    slot: impl Fn(usize) -> Option<usize>,
) -> (Vec<u64>, usize)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = vec![false; expected];
    let mut latencies = Vec::with_capacity(expected);
    let mut duplicates = 0usize;
    while latencies.len() < expected {
        let frame = match tokio::time::timeout(DRAIN, client.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(_) => break,
            Err(_) if *done.borrow() => break,
            Err(_) => continue,
        };
        let Some((seq, sent_us)) = parse(&frame) else {
            continue;
        };
        let arrived = start.elapsed().as_micros() as u64;
        match slot(seq).and_then(|at| seen.get_mut(at)) {
            Some(true) => duplicates += 1,
            Some(slot) => {
                *slot = true;
                latencies.push(arrived.saturating_sub(sent_us));
            }
            None => {}
        }
    }
    (latencies, duplicates)
}

/// Every reader's latencies (µs), sorted, and the duplicates they counted.
async fn gather(
    readers: Vec<tokio::task::JoinHandle<(Vec<u64>, usize)>>,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    for reader in readers {
        let (mut got, dup) = reader.await?;
        latencies.append(&mut got);
        duplicates += dup;
    }
    latencies.sort_unstable();
    Ok((latencies, duplicates))
}

/// The `p` quantile of sorted µs, in ms (NaN when empty).
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("rooms") => return many::rooms(&args[1..]).await,
        Some("recover") => return many::recover(&args[1..]).await,
        _ => {}
    }
    let [publish_url, subscribe_url, rate, seconds, subscribers] = &args[..] else {
        anyhow::bail!("usage: cluster-load PUBLISH_URL SUBSCRIBE_URL RATE SECONDS SUBSCRIBERS");
    };
    let rate: f64 = rate.parse()?;
    let seconds: f64 = seconds.parse()?;
    let subscribers: usize = subscribers.parse()?;
    let total = (rate * seconds) as usize;

    let start = Instant::now();
    // Set once every message is sent: readers then stop after DRAIN without a delivery.
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let client = member(subscribe_url).await?;
        let done = done.clone();
        readers.push(tokio::spawn(timed(client, start, done, total, Some)));
    }
    let (mut sink, mut echoes) = member(publish_url).await?.split();
    // The publisher is a member too: drain what comes back to it.
    tokio::spawn(async move { while echoes.next().await.is_some() {} });

    let sending = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < total {
        ticks.tick().await;
        let due = ((sending.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
        while sent < due {
            let micros = start.elapsed().as_micros();
            sink.feed(Message::text(format!("{sent} {micros}"))).await?;
            sent += 1;
        }
        sink.flush().await?;
    }
    let send_seconds = sending.elapsed().as_secs_f64();
    done_tx.send_replace(true);
    let (latencies, duplicates) = gather(readers).await?;
    let percentile = |p: f64| percentile(&latencies, p);
    let expected = total * subscribers;
    let report = serde_json::json!({
        "rate": rate,
        "achieved_rate": (sent as f64 / send_seconds).round(),
        "sent": sent,
        "subscribers": subscribers,
        "expected": expected,
        "received": latencies.len(),
        "duplicates": duplicates,
        "ratio": latencies.len() as f64 / expected.max(1) as f64,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": percentile(1.0),
    });
    println!("{report}");
    Ok(())
}

/// The `rooms` and `recover` modes: many clients over many instances and rooms.
mod many {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use futures_util::{SinkExt as _, StreamExt as _, stream};
    use tokio_tungstenite::tungstenite::Message;

    use super::{Client, WAIT, parse, percentile};

    /// Connections opened at once while setting up.
    const CONNECTING: usize = 200;

    /// Connects as `name` to `room` on `host` (with `?since=` when given) and reads the
    /// join line; returns the client and the join line's position (none after a recovery).
    async fn join(
        host: &str,
        room: usize,
        name: &str,
        since: Option<&str>,
    ) -> anyhow::Result<(Client, Option<String>)> {
        let since = since.map(|pos| format!("&since={pos}")).unwrap_or_default();
        let url = format!("ws://{host}/ws/r{room}?name={name}{since}");
        let (mut client, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        )
        .await??;
        if !since.is_empty() {
            return Ok((client, None));
        }
        loop {
            let frame = tokio::time::timeout(WAIT, client.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("closed before the join line"))??;
            let Ok(text) = frame.to_text() else { continue };
            let line: serde_json::Value = serde_json::from_str(text)?;
            if line["joined"] == true {
                let pos = line["pos"].as_str().map(str::to_owned);
                return Ok((client, pos));
            }
        }
    }

    /// Opens `count` clients, `CONNECTING` at a time: client `i` as `c<i>` in room
    /// `i % rooms` on instance `i % hosts`. Stops at the first failure and returns what it
    /// opened, in order.
    async fn open_all(
        hosts: &[String],
        count: usize,
        rooms: usize,
    ) -> Vec<(usize, Client, Option<String>)> {
        let mut opened: Vec<_> = stream::iter(0..count)
            .map(|i| {
                let host = hosts[i % hosts.len()].clone();
                async move {
                    join(&host, i % rooms, &format!("c{i}"), None)
                        .await
                        .map(|(client, pos)| (i, client, pos))
                }
            })
            .buffer_unordered(CONNECTING)
            .filter_map(|opened| async move {
                opened
                    .map_err(|e| eprintln!("cluster-load: a connection failed: {e}"))
                    .ok()
            })
            .collect()
            .await;
        opened.sort_by_key(|(i, _, _)| *i);
        opened
    }

    fn hosts_of(list: &str) -> Vec<String> {
        list.split(',').map(str::to_owned).collect()
    }

    pub(super) async fn rooms(args: &[String]) -> anyhow::Result<()> {
        let [hosts, connections, rooms, rate, seconds] = args else {
            anyhow::bail!("usage: cluster-load rooms HOSTS CONNECTIONS ROOMS RATE SECONDS");
        };
        let hosts = hosts_of(hosts);
        let (connections, rooms): (usize, usize) = (connections.parse()?, rooms.parse()?);
        let (rate, seconds): (f64, f64) = (rate.parse()?, seconds.parse()?);
        let total = (rate * seconds) as usize;
        let setup = Instant::now();
        let opened = open_all(&hosts, connections, rooms).await;
        let reached = opened.len();
        let setup_seconds = setup.elapsed().as_secs_f64();
        eprintln!("cluster-load: {reached} connections in {setup_seconds:.1} s");
        // Every message's room is its number modulo ROOMS, so a member expects those only.
        let per_room = total.div_ceil(rooms);
        let mut members_of = vec![0usize; rooms];
        let start = Instant::now();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let mut senders: Vec<Option<_>> = (0..rooms).map(|_| None).collect();
        let mut readers = Vec::new();
        for (i, client, _) in opened {
            let room = i % rooms;
            members_of[room] += 1;
            let (sink, client) = client.split();
            // The room's first member sends; dropping the other halves leaves them open.
            if senders[room].is_none() {
                senders[room] = Some(sink);
            }
            let done = done.clone();
            // Message `seq` is for room `seq % rooms`, its `seq / rooms`th.
            let slot = move |seq: usize| (seq % rooms == room).then_some(seq / rooms);
            readers.push(tokio::spawn(super::timed(
                client, start, done, per_room, slot,
            )));
        }
        let sending = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0;
        let mut expected = 0;
        let mut dirty = vec![false; rooms];
        while sent < total {
            ticks.tick().await;
            let due = ((sending.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
            while sent < due {
                let room = sent % rooms;
                if let Some(sink) = senders[room].as_mut() {
                    let micros = start.elapsed().as_micros();
                    sink.feed(Message::text(format!("{sent} {micros}"))).await?;
                    expected += members_of[room];
                    dirty[room] = true;
                }
                sent += 1;
            }
            for (room, dirty) in dirty.iter_mut().enumerate() {
                if std::mem::take(dirty)
                    && let Some(sink) = senders[room].as_mut()
                {
                    sink.flush().await?;
                }
            }
        }
        let send_seconds = sending.elapsed().as_secs_f64();
        done_tx.send_replace(true);
        let (latencies, duplicates) = super::gather(readers).await?;
        let report = serde_json::json!({
            "connections": reached,
            "setup_s": (setup_seconds * 10.0).round() / 10.0,
            "rooms": rooms,
            "rate": rate,
            "achieved_rate": (sent as f64 / send_seconds).round(),
            "sent": sent,
            "expected": expected,
            "received": latencies.len(),
            "duplicates": duplicates,
            "ratio": latencies.len() as f64 / expected.max(1) as f64,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": percentile(&latencies, 1.0),
        });
        println!("{report}");
        std::process::exit(0);
    }

    pub(super) async fn recover(args: &[String]) -> anyhow::Result<()> {
        let [hosts, clients, rooms, missed] = args else {
            anyhow::bail!("usage: cluster-load recover HOSTS CLIENTS ROOMS MISSED");
        };
        let hosts = hosts_of(hosts);
        let (clients, rooms, missed): (usize, usize, usize) =
            (clients.parse()?, rooms.parse()?, missed.parse()?);
        // One sender per room, on the first instance, which stays.
        let mut senders = Vec::new();
        for room in 0..rooms {
            let (client, _) = join(&hosts[0], room, "tx", None).await?;
            senders.push(client);
        }
        let opened = open_all(&hosts, clients, rooms).await;
        let reached = opened.len();
        // Everyone drops; the position of each one's join line is all it keeps.
        let mut away = Vec::new();
        for (i, client, pos) in opened {
            let pos = pos.ok_or_else(|| anyhow::anyhow!("c{i} was given no position"))?;
            away.push((i, pos));
            drop(client);
        }
        // Each room is sent MISSED messages while they are away; a sender's own copy of its
        // last one says all of its room's are recorded.
        for (room, sender) in senders.iter_mut().enumerate() {
            for n in 0..missed {
                sender
                    .feed(Message::text(format!("{} 0", n * rooms + room)))
                    .await?;
            }
            sender.flush().await?;
        }
        for sender in &mut senders {
            let mut got = 0;
            while got < missed {
                let frame = tokio::time::timeout(WAIT, sender.next())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("a sender was closed"))??;
                if parse(&frame).is_some() {
                    got += 1;
                }
            }
        }
        // All at once, each to the next instance.
        let started = Instant::now();
        let hosts = Arc::new(hosts);
        let mut tasks = Vec::new();
        for (i, pos) in away {
            let hosts = hosts.clone();
            tasks.push(tokio::spawn(async move {
                let host = &hosts[(i + 1) % hosts.len()];
                let Ok((mut client, _)) = join(host, i % rooms, &format!("c{i}"), Some(&pos)).await
                else {
                    return (false, None);
                };
                let mut got = 0;
                while got < missed {
                    let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, client.next()).await
                    else {
                        return (false, None);
                    };
                    if let Ok(text) = frame.to_text()
                        && text.contains("\"recovered\":false")
                    {
                        return (true, None);
                    }
                    if parse(&frame).is_some() {
                        got += 1;
                    }
                }
                (false, Some(started.elapsed().as_micros() as u64))
            }));
        }
        let (mut refused, mut incomplete, mut times) = (0, 0, Vec::new());
        for task in tasks {
            match task.await? {
                (true, _) => refused += 1,
                (false, None) => incomplete += 1,
                (false, Some(took)) => times.push(took),
            }
        }
        let all_s = started.elapsed().as_secs_f64();
        times.sort_unstable();
        let report = serde_json::json!({
            "clients": reached,
            "rooms": rooms,
            "missed_each": missed,
            "recovered": times.len(),
            "refused": refused,
            "incomplete": incomplete,
            "all_recovered_ms": times.last().map_or(f64::NAN, |t| *t as f64 / 1000.0),
            "p50_ms": percentile(&times, 0.50),
            "p99_ms": percentile(&times, 0.99),
            "wall_s": all_s,
        });
        println!("{report}");
        std::process::exit(0);
    }
}
