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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
        let mut client = member(subscribe_url).await?;
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = vec![false; total];
            let mut latencies = Vec::with_capacity(total);
            let mut duplicates = 0usize;
            loop {
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
                match seen.get_mut(seq) {
                    Some(true) => duplicates += 1,
                    Some(slot) => {
                        *slot = true;
                        latencies.push(arrived.saturating_sub(sent_us));
                    }
                    None => {}
                }
                if latencies.len() == total {
                    break;
                }
            }
            (latencies, duplicates)
        }));
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

    let mut latencies = Vec::new();
    let mut duplicates = 0;
    for reader in readers {
        let (mut got, dup) = reader.await?;
        latencies.append(&mut got);
        duplicates += dup;
    }
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[at] as f64 / 1000.0
    };
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
