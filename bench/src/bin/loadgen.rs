//! The load generator of `cargo xtask bench`: a closed loop of WebSocket clients on one thread.
//! It checks every echoed payload and prints one `result key=value ...` line on stdout.
//!
//! ```not_rust
//! loadgen echo ws://127.0.0.1:PORT/ws --connections 64 --size 32 --kind text --in-flight 1 \
//!     --duration 5 --warmup 1
//! loadgen idle ws://127.0.0.1:PORT/ws --connections 10000 --hold 60
//! loadgen broadcast ws://127.0.0.1:PORT/ws --trigger ws://127.0.0.1:PORT/broadcast \
//!     --connections 5000 --rounds 5
//! ```
//!
//! `echo` keeps `--in-flight` messages outstanding on each connection for `--warmup` plus
//! `--duration` seconds and reports messages/s and latency over the last `--duration` only; it
//! prints `measuring` when that window starts.
//! `idle` opens the connections, makes each echo one message, prints `ready ...` and holds
//! them until stdin closes or `--hold` seconds pass. `broadcast` connects the receivers, probes
//! until one broadcast reaches them all, then sends one message per round on the trigger
//! connection and reports the time until the last receiver got it. The client is sockudo-ws with its write batching, so that the generator
//! costs less per message than the servers it measures.

use std::{
    collections::VecDeque,
    io::Read as _,
    process::ExitCode,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use sockudo_ws::{Config, Http1, Message, WebSocketStream, client::WebSocketClient};
use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};

type Socket = WebSocketStream<TcpStream>;

/// Connections being set up at once; more would overflow the server's listen backlog.
const CONNECT_CONCURRENCY: usize = 256;
/// Longest wait for any single reply before the connection counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Broadcast mode: probes sent before the measured rounds, and how long each may take.
const SETTLE_PROBES: usize = 20;
const SETTLE_WAIT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse(std::env::args().skip(1))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async {
        match args.mode.as_str() {
            "echo" => echo(&args).await,
            "idle" => idle(&args).await,
            "broadcast" => broadcast(&args).await,
            other => bail!("unknown mode {other:?}: echo, idle or broadcast"),
        }
    })?;
    println!("result {result} client_cpu_s={:.2}", own_cpu_seconds());
    Ok(())
}

/// Command line: a mode, a URL and `--name value` options.
#[derive(Debug)]
struct Args {
    mode: String,
    url: Url,
    trigger: Option<Url>,
    connections: usize,
    size: usize,
    kind: Kind,
    in_flight: usize,
    duration: Duration,
    warmup: Duration,
    hold: Duration,
    rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Binary,
    /// A JSON object of about `size` bytes in the form serde_json writes it, so that a server
    /// that binds and re-encodes it sends back the same bytes.
    Json,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mode = args.next().context("missing mode")?;
        let url = Url::parse(&args.next().context("missing URL")?)?;
        let mut parsed = Args {
            mode,
            url,
            trigger: None,
            connections: 64,
            size: 32,
            kind: Kind::Text,
            in_flight: 1,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            hold: Duration::from_secs(60),
            rounds: 5,
        };
        while let Some(name) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            let number = || -> anyhow::Result<u64> {
                value
                    .parse()
                    .with_context(|| format!("{name}: {value:?} is not a number"))
            };
            match name.as_str() {
                "--trigger" => parsed.trigger = Some(Url::parse(&value)?),
                "--connections" => parsed.connections = usize::try_from(number()?)?,
                "--size" => parsed.size = usize::try_from(number()?)?,
                "--in-flight" => parsed.in_flight = usize::try_from(number()?)?.max(1),
                "--duration" => parsed.duration = Duration::from_secs_f64(value.parse()?),
                "--warmup" => parsed.warmup = Duration::from_secs_f64(value.parse()?),
                "--hold" => parsed.hold = Duration::from_secs_f64(value.parse()?),
                "--rounds" => parsed.rounds = usize::try_from(number()?)?.max(1),
                "--kind" => {
                    parsed.kind = match value.as_str() {
                        "text" => Kind::Text,
                        "binary" => Kind::Binary,
                        "json" => Kind::Json,
                        _ => bail!("--kind: text, binary or json, not {value:?}"),
                    }
                }
                _ => bail!("unknown option {name}"),
            }
        }
        if parsed.size < 16 {
            bail!("--size must be at least 16 bytes (the sequence number)");
        }
        Ok(parsed)
    }
}

/// `ws://HOST:PORT/PATH`, all this generator needs.
#[derive(Debug, Clone)]
struct Url {
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> anyhow::Result<Url> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url:?} is not a ws:// URL"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        Ok(Url {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

async fn connect(url: &Url) -> anyhow::Result<Socket> {
    let tcp = TcpStream::connect(&url.authority).await?;
    tcp.set_nodelay(true)?;
    let config = Config {
        idle_timeout: 0,
        auto_ping: false,
        ping_interval: 0,
        ..Config::default()
    };
    let (ws, _) = WebSocketClient::<Http1>::new(config)
        .connect_raw(tcp, &url.authority, &url.path, None)
        .await?;
    Ok(ws)
}

/// Opens `count` connections, at most [`CONNECT_CONCURRENCY`] at a time; failures are counted.
async fn connect_many(url: &Url, count: usize) -> (Vec<Socket>, usize) {
    let permits = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut pending = JoinSet::new();
    for _ in 0..count {
        let url = url.clone();
        let permits = permits.clone();
        pending.spawn_local(async move {
            let _permit = permits.acquire().await;
            tokio::time::timeout(REPLY_TIMEOUT, connect(&url)).await
        });
    }
    let mut sockets = Vec::with_capacity(count);
    let mut errors = 0;
    while let Some(done) = pending.join_next().await {
        match done {
            Ok(Ok(Ok(socket))) => sockets.push(socket),
            _ => errors += 1,
        }
    }
    (sockets, errors)
}

/// The payload of message `seq`: unique per message so that a reordered, lost or corrupted
/// echo is caught.
fn payload(kind: Kind, size: usize, seq: u64) -> Bytes {
    let mut bytes = BytesMut::with_capacity(size);
    match kind {
        Kind::Text => {
            bytes.put_slice(format!("{seq:016x}").as_bytes());
            bytes.put_bytes(b'x', size - 16);
        }
        Kind::Binary => {
            bytes.put_u64(seq);
            bytes.extend((8..size).map(|i| (i % 251) as u8));
        }
        Kind::Json => {
            let head = format!(
                r#"{{"id":{seq},"kind":"order.created","user":"user-4711","tags":["alpha","beta","gamma"],"score":12.5,"active":true,"note":""#
            );
            bytes.put_slice(head.as_bytes());
            bytes.put_bytes(b'n', size.saturating_sub(head.len() + 2));
            bytes.put_slice(b"\"}");
        }
    }
    bytes.freeze()
}

fn message(kind: Kind, payload: Bytes) -> Message {
    match kind {
        Kind::Text | Kind::Json => Message::Text(payload),
        Kind::Binary => Message::Binary(payload),
    }
}

/// What one connection measured.
struct ConnectionStats {
    received: u64,
    latency: Histogram<u64>,
    errors: u64,
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds up to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

async fn echo(args: &Args) -> anyhow::Result<String> {
    let (sockets, connect_errors) = connect_many(&args.url, args.connections).await;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut running = JoinSet::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let (kind, size, in_flight) = (args.kind, args.size, args.in_flight);
        let first_seq = (index as u64) << 40;
        running.spawn_local(async move {
            let mut stats = ConnectionStats {
                received: 0,
                latency: new_histogram(),
                errors: 0,
            };
            if let Err(error) = echo_loop(
                socket,
                (kind, size, in_flight, first_seq),
                (measure_from, end),
                &mut stats,
            )
            .await
            {
                eprintln!("loadgen: connection {index}: {error:#}");
                stats.errors += 1;
            }
            stats
        });
    }
    // Tells whoever watches the server that the measured window starts now.
    tokio::time::sleep_until(measure_from.into()).await;
    println!("measuring");
    let mut received = 0;
    let mut errors = connect_errors as u64;
    let mut latency = new_histogram();
    while let Some(done) = running.join_next().await {
        let stats = done?;
        received += stats.received;
        errors += stats.errors;
        latency.add(&stats.latency)?;
    }
    let seconds = args.duration.as_secs_f64();
    Ok(format!(
        "msgs_per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} messages={received} errors={errors}",
        received as f64 / seconds,
        latency.value_at_quantile(0.5) as f64 / 1e3,
        latency.value_at_quantile(0.99) as f64 / 1e3,
        latency.value_at_quantile(0.999) as f64 / 1e3,
    ))
}

/// Keeps `in_flight` messages outstanding until `end`; counts and times the replies that
/// arrive after `measure_from`. Replies already parsed are handled together and their
/// replacements flushed once, as a batching server would.
async fn echo_loop(
    mut ws: Socket,
    (kind, size, in_flight, mut seq): (Kind, usize, usize, u64),
    (measure_from, end): (Instant, Instant),
    stats: &mut ConnectionStats,
) -> anyhow::Result<()> {
    let mut outstanding: VecDeque<(Instant, Bytes)> = VecDeque::with_capacity(in_flight);
    for _ in 0..in_flight {
        let sent = payload(kind, size, seq);
        seq += 1;
        ws.feed(message(kind, sent.clone())).await?;
        outstanding.push_back((Instant::now(), sent));
    }
    ws.flush().await?;
    loop {
        let first = match tokio::time::timeout_at(end.into(), ws.next()).await {
            Err(_) => break,
            Ok(next) => next,
        };
        let mut ready = Some(first);
        while let Some(next) = ready {
            let reply = next.context("server closed the connection")??;
            let now = Instant::now();
            let Some((sent_at, sent)) = outstanding.pop_front() else {
                bail!("a reply that was never asked for");
            };
            let echoed = match reply {
                Message::Text(bytes) | Message::Binary(bytes) => bytes,
                other => bail!("unexpected frame {other:?}"),
            };
            if echoed != sent {
                bail!("echo differs from what was sent (message {seq})");
            }
            if now >= measure_from && now < end {
                stats.received += 1;
                stats
                    .latency
                    .record(u64::try_from((now - sent_at).as_nanos()).unwrap_or(u64::MAX))?;
            }
            if now < end {
                let next_payload = payload(kind, size, seq);
                seq += 1;
                ws.feed(message(kind, next_payload.clone())).await?;
                outstanding.push_back((Instant::now(), next_payload));
            }
            ready = ws.next().now_or_never();
        }
        ws.flush().await?;
    }
    Ok(())
}

/// S5: connections that each echoed one message, then sit idle.
async fn idle(args: &Args) -> anyhow::Result<String> {
    let (mut sockets, mut errors) = connect_many(&args.url, args.connections).await;
    let mut echoed = 0;
    for ws in &mut sockets {
        let sent = payload(Kind::Text, 32, echoed);
        let round_trip = async {
            ws.send(Message::Text(sent.clone())).await?;
            match ws.next().await {
                Some(Ok(Message::Text(bytes))) if bytes == sent => Ok(()),
                other => bail!("bad echo: {other:?}"),
            }
        };
        match tokio::time::timeout(REPLY_TIMEOUT, round_trip).await {
            Ok(Ok(())) => echoed += 1,
            _ => errors += 1,
        }
    }
    println!("ready connections={echoed} errors={errors}");
    // Held until whoever reads the line has measured the server and closes our stdin.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    let _ = tokio::time::timeout(args.hold, stdin_closed).await;
    drop(sockets);
    Ok(format!("connections={echoed} errors={errors}"))
}

/// S6: one message fanned out by the server to every receiver.
async fn broadcast(args: &Args) -> anyhow::Result<String> {
    let trigger_url = args.trigger.as_ref().context("broadcast needs --trigger")?;
    let (receivers, mut errors) = connect_many(&args.url, args.connections).await;
    let receiver_count = receivers.len();
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    for mut ws in receivers {
        let arrivals = arrivals.clone();
        tokio::task::spawn_local(async move {
            while let Ok(Some(Ok(Message::Text(bytes)))) =
                tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await
            {
                if arrivals.send((Instant::now(), bytes)).is_err() {
                    break;
                }
            }
        });
    }
    drop(arrivals);
    let mut trigger = connect(trigger_url).await?;
    // A server registers a connection after its handshake response is out, so a receiver can
    // be connected and not yet reachable: probe until one broadcast reaches all of them.
    let mut settled = false;
    for probe in 0..SETTLE_PROBES {
        let sent = Bytes::from(format!("probe {probe}"));
        trigger.send(Message::Text(sent.clone())).await?;
        match tokio::time::timeout(REPLY_TIMEOUT, trigger.next()).await {
            Ok(Some(Ok(Message::Text(bytes)))) if bytes == sent => {}
            other => bail!("the trigger connection did not get its probe: {other:?}"),
        }
        let mut reached = 0;
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while reached < receiver_count {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some((_, bytes))) if bytes == sent => reached += 1,
                // Earlier probes, to receivers that were not reachable for all of them.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if reached == receiver_count {
            settled = true;
            break;
        }
    }
    if !settled {
        bail!("no probe reached all {receiver_count} receivers");
    }
    let mut last_arrivals = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let sent = Bytes::from(format!("broadcast round {round}"));
        let sent_at = Instant::now();
        trigger.send(Message::Text(sent.clone())).await?;
        let mut last = Duration::ZERO;
        for _ in 0..receiver_count {
            match tokio::time::timeout(REPLY_TIMEOUT, arrived.recv()).await {
                Ok(Some((at, bytes))) if bytes == sent => last = last.max(at - sent_at),
                _ => errors += 1,
            }
        }
        // The trigger connection is in the hub too: take its copy before the next round.
        match tokio::time::timeout(REPLY_TIMEOUT, trigger.next()).await {
            Ok(Some(Ok(Message::Text(bytes)))) if bytes == sent => {}
            _ => errors += 1,
        }
        last_arrivals.push(last);
    }
    last_arrivals.sort();
    let median = last_arrivals[last_arrivals.len() / 2];
    let worst = last_arrivals[last_arrivals.len() - 1];
    Ok(format!(
        "receivers={receiver_count} last_ms_median={:.2} last_ms_worst={:.2} rounds={} errors={errors}",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        args.rounds,
    ))
}

/// CPU time this process used (user + system), from /proc/self/stat; 0 where unavailable.
fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    ticks / 100.0
}
