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
//! connection and reports the time until the last receiver got it. `--deflate` (S5d, S8) connects
//! with our own protocol core offering permessage-deflate as browsers do; in `broadcast` it
//! prints `measuring` and `measured` around the rounds. The client is sockudo-ws with its write batching, so that the generator
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
    /// `idle` and `broadcast`: connect with our own protocol core, offering permessage-deflate
    /// as a browser does (S5d, S8).
    deflate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Binary,
    /// A JSON object of about `size` bytes in the form serde_json writes it, so that a server
    /// that binds and re-encodes it sends back the same bytes.
    Json,
    /// A JSON array of varied event objects, `size` bytes: a document that compresses as real
    /// JSON does (S8), unlike `json`'s padding.
    JsonDoc,
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
            deflate: false,
        };
        while let Some(name) = args.next() {
            if name == "--deflate" {
                parsed.deflate = true;
                continue;
            }
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
                        "jsondoc" => Kind::JsonDoc,
                        _ => bail!("--kind: text, binary, json or jsondoc, not {value:?}"),
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
        Kind::JsonDoc => {
            // Objects whose numbers and names vary, so that deflate finds the repeats of keys
            // and words but not of whole records.
            bytes.put_u8(b'[');
            let mut item = 0u64;
            loop {
                let id = seq.wrapping_mul(1_000).wrapping_add(item);
                let object = format!(
                    r#"{{"id":{id},"kind":"{}","user":"user-{}","tags":["{}","{}"],"score":{}.{},"active":{},"note":"{:x}"}},"#,
                    ["order.created", "order.paid", "cart.updated", "user.seen"]
                        [(item % 4) as usize],
                    id.wrapping_mul(7_919) % 100_000,
                    ["alpha", "beta", "gamma", "delta", "eps"][(item % 5) as usize],
                    ["red", "green", "blue"][(item % 3) as usize],
                    id.wrapping_mul(37) % 1_000,
                    item % 10,
                    item.is_multiple_of(2),
                    id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                );
                // Room for the object, then `{"pad":"..."}]` (at least 11 bytes).
                if bytes.len() + object.len() + 11 > size {
                    break;
                }
                bytes.put_slice(object.as_bytes());
                item += 1;
            }
            bytes.put_slice(br#"{"pad":""#);
            bytes.put_bytes(b' ', size.saturating_sub(bytes.len() + 3));
            bytes.put_slice(b"\"}]");
        }
    }
    bytes.freeze()
}

fn message(kind: Kind, payload: Bytes) -> Message {
    match kind {
        Kind::Text | Kind::Json | Kind::JsonDoc => Message::Text(payload),
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

/// S5 and S5d: connections that each echoed one message (`--kind`, `--size`; 32 B of text by
/// default), then sit idle. With `--deflate` the connections negotiate permessage-deflate.
async fn idle(args: &Args) -> anyhow::Result<String> {
    if args.deflate {
        return idle_deflate(args).await;
    }
    let (mut sockets, mut errors) = connect_many(&args.url, args.connections).await;
    let mut echoed = 0;
    for ws in &mut sockets {
        let sent = payload(args.kind, args.size, echoed);
        let round_trip = async {
            ws.send(message(args.kind, sent.clone())).await?;
            match ws.next().await {
                Some(Ok(Message::Text(bytes) | Message::Binary(bytes))) if bytes == sent => Ok(()),
                other => bail!("bad echo: {other:?}"),
            }
        };
        match tokio::time::timeout(REPLY_TIMEOUT, round_trip).await {
            Ok(Ok(())) => echoed += 1,
            _ => errors += 1,
        }
    }
    hold(args, echoed, errors).await;
    drop(sockets);
    Ok(format!("connections={echoed} errors={errors}"))
}

/// S5d: as [`idle`], over connections that negotiated permessage-deflate; the message is
/// compressed both ways when it is above the threshold (32 bytes on both sides by default).
async fn idle_deflate(args: &Args) -> anyhow::Result<String> {
    let (mut sockets, mut errors) = connect_many_deflate(&args.url, args.connections).await;
    let mut echoed = 0;
    for ws in &mut sockets {
        let sent = payload(args.kind, args.size, echoed);
        let round_trip = async {
            ws.send(protocol_message(args.kind, sent.clone())?).await?;
            match ws.next().await? {
                Some(reply) if protocol_payload(&reply) == Some(&sent) => Ok(()),
                other => bail!("bad echo: {other:?}"),
            }
        };
        match tokio::time::timeout(REPLY_TIMEOUT, round_trip).await {
            Ok(Ok(())) => echoed += 1,
            Ok(Err(error)) => {
                if errors == 0 {
                    eprintln!("loadgen: {error:#}");
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    hold(args, echoed, errors).await;
    drop(sockets);
    Ok(format!("connections={echoed} errors={errors}"))
}

/// Says the connections are ready, then holds them until whoever reads the line has measured
/// the server and closes our stdin, or `--hold` passes.
async fn hold(args: &Args, echoed: u64, errors: usize) {
    println!("ready connections={echoed} errors={errors}");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    let _ = tokio::time::timeout(args.hold, stdin_closed).await;
}

fn protocol_message(kind: Kind, payload: Bytes) -> anyhow::Result<ws_protocol::Message> {
    Ok(match kind {
        Kind::Binary => ws_protocol::Message::Binary(payload),
        _ => ws_protocol::Message::Text(ws_protocol::Utf8Bytes::try_from_bytes(payload)?),
    })
}

fn protocol_payload(message: &ws_protocol::Message) -> Option<&Bytes> {
    match message {
        ws_protocol::Message::Text(text) => Some(text.as_bytes()),
        ws_protocol::Message::Binary(bytes) => Some(bytes),
        _ => None,
    }
}

/// S6: one message fanned out by the server to every receiver.
async fn broadcast(args: &Args) -> anyhow::Result<String> {
    if args.deflate {
        return broadcast_deflate(args).await;
    }
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

/// One data frame as a receiver of [`broadcast_deflate`] saw it, not inflated.
struct Arrival {
    at: Instant,
    compressed: bool,
    payload: Bytes,
}

impl Arrival {
    /// The message it carries (inflated if compressed).
    fn message(&self) -> anyhow::Result<Bytes> {
        if self.compressed {
            inflate(&self.payload)
        } else {
            Ok(self.payload.clone())
        }
    }
}

/// Raw-deflate inflation of one permessage-deflate payload (RFC 7692 §7.2.2: the sync-flush
/// trailer is put back first).
fn inflate(payload: &[u8]) -> anyhow::Result<Bytes> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    let mut inflater = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(payload.len() * 8 + 64);
    loop {
        let before = inflater.total_in();
        inflater.decompress_vec(
            &input[usize::try_from(before)?..],
            &mut out,
            flate2::FlushDecompress::Sync,
        )?;
        if usize::try_from(inflater.total_in())? == input.len() {
            return Ok(Bytes::from(out));
        }
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        } else if inflater.total_in() == before {
            bail!("inflate made no progress");
        }
    }
}

/// A receiver of [`broadcast_deflate`]: reads frames and reports each data frame's arrival
/// without inflating it, so that the load generator's one CPU is not what is measured (each
/// receiver would inflate every 16 KiB message). Control frames are ignored (the server's
/// first ping is 30 s away).
async fn scan_frames(
    mut tcp: TcpStream,
    mut buf: BytesMut,
    arrivals: tokio::sync::mpsc::UnboundedSender<Arrival>,
) {
    use tokio::io::AsyncReadExt as _;
    loop {
        while buf.len() >= 2 {
            let (first, second) = (buf[0], buf[1]);
            if second & 0x80 != 0 {
                return; // a server's frames are never masked
            }
            let (header, len) = match second & 0x7f {
                126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                127 if buf.len() >= 10 => {
                    let mut len = [0; 8];
                    len.copy_from_slice(&buf[2..10]);
                    (
                        10,
                        usize::try_from(u64::from_be_bytes(len)).unwrap_or(usize::MAX),
                    )
                }
                126 | 127 => break,
                short => (2, usize::from(short)),
            };
            if buf.len() < header + len {
                buf.reserve(header + len - buf.len());
                break;
            }
            let frame = buf.split_to(header + len).freeze().slice(header..);
            match first & 0x0f {
                // Every message is one frame here; a fragment would be reported as it stands.
                0x1 | 0x2 => {
                    let arrival = Arrival {
                        at: Instant::now(),
                        compressed: first & 0x40 != 0,
                        payload: frame,
                    };
                    if arrivals.send(arrival).is_err() {
                        return;
                    }
                }
                0x8 => return,
                _ => {}
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// S8: S6 over connections that negotiated permessage-deflate (browser-like offer), with a
/// message of `--kind`/`--size` (a 16 KiB JSON document). Each round's message is checked:
/// the first copy is inflated and compared with what was sent, every other copy must carry
/// the same compressed bytes (or inflate to the message). Reports the median time until the
/// last receiver has it and the compressed size.
async fn broadcast_deflate(args: &Args) -> anyhow::Result<String> {
    let trigger_url = args.trigger.as_ref().context("broadcast needs --trigger")?;
    let (receivers, mut errors) = connect_many_deflate(&args.url, args.connections).await;
    let receiver_count = receivers.len();
    let (arrivals, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    for socket in receivers {
        let DeflateSocket { tcp, pending, .. } = socket;
        tokio::task::spawn_local(scan_frames(tcp, pending, arrivals.clone()));
    }
    drop(arrivals);
    let mut trigger = DeflateSocket::connect(trigger_url).await?;
    let mut settled = false;
    for probe in 0..SETTLE_PROBES {
        let sent = Bytes::from(format!("probe {probe}"));
        trigger
            .send(protocol_message(Kind::Text, sent.clone())?)
            .await?;
        match tokio::time::timeout(REPLY_TIMEOUT, trigger.next()).await {
            Ok(Ok(Some(reply))) if protocol_payload(&reply) == Some(&sent) => {}
            other => bail!("the trigger connection did not get its probe: {other:?}"),
        }
        let mut reached = 0;
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while reached < receiver_count {
            match tokio::time::timeout_at(deadline, arrived.recv()).await {
                Ok(Some(arrival)) => {
                    if arrival.message()? == sent {
                        reached += 1;
                    }
                }
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
    // When the first copy arrived: late, the receiving side started late (S8 breakdown).
    let mut first_arrivals = Vec::with_capacity(args.rounds);
    let mut wire_bytes = 0;
    let mut compressed_copies = 0u64;
    // Tells whoever watches the server that the rounds start (and, below, end), so that the
    // server's CPU time for the broadcasts alone can be read.
    println!("measuring");
    for round in 0..args.rounds {
        let sent = payload(args.kind, args.size, round as u64);
        let sent_at = Instant::now();
        trigger
            .send(protocol_message(args.kind, sent.clone())?)
            .await?;
        let mut last = Duration::ZERO;
        let mut first = Duration::MAX;
        let mut reference: Option<Bytes> = None;
        for _ in 0..receiver_count {
            match tokio::time::timeout(REPLY_TIMEOUT, arrived.recv()).await {
                Ok(Some(arrival)) => {
                    let same = reference.as_ref() == Some(&arrival.payload)
                        || arrival.message().is_ok_and(|m| m == sent);
                    if !same {
                        errors += 1;
                        continue;
                    }
                    if reference.is_none() {
                        reference = Some(arrival.payload.clone());
                    }
                    compressed_copies += u64::from(arrival.compressed);
                    wire_bytes = arrival.payload.len();
                    last = last.max(arrival.at - sent_at);
                    first = first.min(arrival.at - sent_at);
                }
                _ => errors += 1,
            }
        }
        // The trigger connection is in the hub too: take its copy before the next round.
        match tokio::time::timeout(REPLY_TIMEOUT, trigger.next()).await {
            Ok(Ok(Some(reply))) if protocol_payload(&reply) == Some(&sent) => {}
            _ => errors += 1,
        }
        last_arrivals.push(last);
        first_arrivals.push(first);
    }
    println!("measured");
    last_arrivals.sort();
    first_arrivals.sort();
    let median = last_arrivals[last_arrivals.len() / 2];
    let worst = last_arrivals[last_arrivals.len() - 1];
    Ok(format!(
        "receivers={receiver_count} last_ms_median={:.2} last_ms_worst={:.2} \
         first_ms_median={:.2} rounds={} message_bytes={} wire_bytes={wire_bytes} \
         compressed_copies={compressed_copies} errors={errors}",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        first_arrivals[first_arrivals.len() / 2].as_secs_f64() * 1e3,
        args.rounds,
        args.size,
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

/// The client side of S5d and S8: our own protocol core (`ws_protocol`, client role) over a
/// tokio `TcpStream`, with a hand-written opening handshake that offers permessage-deflate as
/// browsers do (`permessage-deflate; client_max_window_bits`). sockudo-ws's client cannot offer
/// it. Connecting fails if the server does not accept the offer.
struct DeflateSocket {
    tcp: TcpStream,
    ws: ws_protocol::Connection,
    /// Bytes read and not yet parsed.
    pending: BytesMut,
}

/// The browser-like offer: context takeover allowed, `client_max_window_bits` without value.
fn browser_policy() -> ws_protocol::deflate::DeflatePolicy {
    ws_protocol::deflate::DeflatePolicy {
        context_takeover: true,
        ..Default::default()
    }
}

impl DeflateSocket {
    async fn connect(url: &Url) -> anyhow::Result<DeflateSocket> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tcp = TcpStream::connect(&url.authority).await?;
        tcp.set_nodelay(true)?;
        let policy = browser_policy();
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {}\r\n\r\n",
            url.path,
            url.authority,
            ws_protocol::deflate::client_offer(&policy),
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut pending = BytesMut::with_capacity(1024);
        let head_len = loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if pending.len() > 16 * 1024 {
                bail!("handshake response too long");
            }
            if tcp.read_buf(&mut pending).await? == 0 {
                bail!("server closed the connection during the handshake");
            }
        };
        let head = pending.split_to(head_len);
        let head = std::str::from_utf8(&head).context("handshake response is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {status}");
        }
        let mut accept_ok = false;
        let mut extensions = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                // The accept value of the fixed key above (RFC 6455 §1.3).
                accept_ok = value == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                extensions = Some(value.to_owned());
            }
        }
        if !accept_ok {
            bail!("wrong or missing Sec-WebSocket-Accept");
        }
        let extensions = extensions.context("the server did not negotiate permessage-deflate")?;
        let params = ws_protocol::deflate::accept_response(&extensions, &policy)?;
        let config = ws_protocol::Config {
            deflate: Some(params),
            ..ws_protocol::Config::client()
        };
        Ok(DeflateSocket {
            tcp,
            ws: ws_protocol::Connection::new(config),
            pending,
        })
    }

    async fn send(&mut self, message: ws_protocol::Message) -> anyhow::Result<()> {
        self.ws.send(message)?;
        self.write_out().await
    }

    /// Writes everything the protocol core has queued (messages, pongs, close echoes).
    async fn write_out(&mut self) -> anyhow::Result<()> {
        use bytes::Buf as _;
        use tokio::io::AsyncWriteExt as _;
        let output = self.ws.output();
        while output.has_remaining() {
            let written = self.tcp.write(output.chunk()).await?;
            if written == 0 {
                bail!("connection closed while writing");
            }
            output.advance(written);
        }
        Ok(())
    }

    /// The next text or binary message; `None` when the server closed.
    async fn next(&mut self) -> anyhow::Result<Option<ws_protocol::Message>> {
        use bytes::Buf as _;
        use tokio::io::AsyncReadExt as _;
        loop {
            while !self.pending.is_empty() {
                let mut input = &self.pending[..];
                let received = self.ws.receive(&mut input);
                let consumed = self.pending.len() - input.len();
                self.pending.advance(consumed);
                match received? {
                    Some(
                        message @ (ws_protocol::Message::Text(_) | ws_protocol::Message::Binary(_)),
                    ) => {
                        self.write_out().await?;
                        return Ok(Some(message));
                    }
                    Some(ws_protocol::Message::Close(_)) => {
                        self.write_out().await?;
                        return Ok(None);
                    }
                    // Pings are answered by the core (written below), pongs ignored.
                    Some(_) => {}
                    None => break,
                }
            }
            self.write_out().await?;
            if self.pending.capacity() - self.pending.len() < 4096 {
                self.pending.reserve(16 * 1024);
            }
            if self.tcp.read_buf(&mut self.pending).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Opens `count` deflate connections, at most [`CONNECT_CONCURRENCY`] at a time; failures are
/// counted and the first one's reason printed.
async fn connect_many_deflate(url: &Url, count: usize) -> (Vec<DeflateSocket>, usize) {
    let permits = Rc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut pending = JoinSet::new();
    for _ in 0..count {
        let url = url.clone();
        let permits = permits.clone();
        pending.spawn_local(async move {
            let _permit = permits.acquire().await;
            tokio::time::timeout(REPLY_TIMEOUT, DeflateSocket::connect(&url)).await
        });
    }
    let mut sockets = Vec::with_capacity(count);
    let mut errors = 0;
    while let Some(done) = pending.join_next().await {
        match done {
            Ok(Ok(Ok(socket))) => sockets.push(socket),
            Ok(Ok(Err(error))) => {
                if errors == 0 {
                    eprintln!("loadgen: connect: {error:#}");
                }
                errors += 1;
            }
            _ => errors += 1,
        }
    }
    (sockets, errors)
}
