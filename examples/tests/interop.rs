//! Interop: clients from three WebSocket implementations against the `echo` example, run as a
//! process on 127.0.0.1 with a port the OS picks, one process per variant.
//!
//! Every client runs the same schedule (see `tests/interop/interop.py`): 1,000 messages of
//! mixed sizes up to 1 MiB, text with multi-byte UTF-8 and binary, from a fixed seed, echoed
//! equal and in order while more are sent; 10 pings whose pongs carry their payloads; and
//! connections closed with 1000, 1001 and 4000, each answered with the same code.
//!
//! - tokio-tungstenite (no permessage-deflate): here, in Rust.
//! - Python `websockets`, pinned in `tests/interop/requirements.txt`, installed into a venv
//!   under `target/tmp/interop/`: `tests/interop/interop.py`.
//! - Node.js `ws`, pinned in `tests/interop/package.json`, installed under
//!   `target/tmp/interop/`: `tests/interop/interop.js`.
//!
//! The scripts run with permessage-deflate off and on, asking for context takeover or not,
//! against the server with its defaults, with `WS_CONTEXT_TAKEOVER=1` and with
//! `WS_COMPRESSION=off`; this test judges the extension the server answered (see
//! [`check_extensions`]). Each variant prints one summary line to stderr.
//!
//! Without `python3` or `node`/`npm` (or when the install fails) a client is skipped with a
//! message, except under `CI=true`, where that fails the test.
//!
//! The `echo` example must be built (`cargo test --workspace` does; alone:
//! `cargo build -p examples --example echo`).

use std::{
    ffi::OsStr,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use ws_test::AppProcess;

/// Longest wait for a server to start or for one step of a client.
const WAIT: Duration = Duration::from_secs(20);
/// Longest one script may run (one variant: about 2 s on the debug build).
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);
/// Longest an install (venv + pip, or npm) may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);

/// How the echo example is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Its defaults: permessage-deflate on, context takeover off.
    Default,
    /// `WS_CONTEXT_TAKEOVER=1`.
    ContextTakeover,
    /// `WS_COMPRESSION=off`.
    NoCompression,
}

impl Server {
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Server::Default => &[],
            Server::ContextTakeover => &[("WS_CONTEXT_TAKEOVER", "1")],
            Server::NoCompression => &[("WS_COMPRESSION", "off")],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Server::Default => "server defaults",
            Server::ContextTakeover => "server WS_CONTEXT_TAKEOVER=1",
            Server::NoCompression => "server WS_COMPRESSION=off",
        }
    }
}

/// One run of a client: which server, and what the client offers.
#[derive(Debug, Clone, Copy)]
struct Variant {
    server: Server,
    /// Offer permessage-deflate.
    deflate: bool,
    /// Ask for `server_no_context_takeover` and `client_no_context_takeover`.
    no_context_takeover: bool,
}

const fn variant(server: Server, deflate: bool, no_context_takeover: bool) -> Variant {
    Variant {
        server,
        deflate,
        no_context_takeover,
    }
}

/// What the Python and Node.js clients run.
const SCRIPT_VARIANTS: &[Variant] = &[
    variant(Server::Default, false, false),
    variant(Server::Default, true, false),
    variant(Server::Default, true, true),
    variant(Server::ContextTakeover, true, false),
    variant(Server::ContextTakeover, true, true),
    variant(Server::NoCompression, true, false),
];

/// What tokio-tungstenite runs: it has no permessage-deflate.
const TUNGSTENITE_VARIANTS: &[Variant] = &[
    variant(Server::Default, false, false),
    variant(Server::NoCompression, false, false),
];

#[test]
fn python_websockets() {
    let Some(python) = available("Python websockets", install_python) else {
        return;
    };
    run_script_variants(python.as_os_str(), "interop.py", &[]);
}

#[test]
fn node_ws() {
    let Some(modules) = available("Node.js ws", install_node) else {
        return;
    };
    run_script_variants(
        OsStr::new("node"),
        "interop.js",
        &[("NODE_PATH", modules.as_os_str())],
    );
}

#[tokio::test]
async fn tokio_tungstenite() {
    let messages = schedule::messages();
    for &variant in TUNGSTENITE_VARIANTS {
        let server = echo(variant.server);
        let url = server.ws_url("/ws");
        let started = Instant::now();
        let result = async {
            let (extensions, pongs) = tungstenite_client::exchange(&url, &messages).await?;
            for &code in &schedule::CLOSE_CODES[1..] {
                tungstenite_client::close_only(&url, code).await?;
            }
            Ok::<_, String>((extensions, pongs))
        }
        .await;
        let label = format!("tokio-tungstenite deflate=off ({})", variant.server.name());
        let (extensions, pongs) = result.unwrap_or_else(|e| panic!("interop: {label}: {e}"));
        if let Err(e) = check_extensions(variant, &extensions) {
            panic!("interop: {label}: {e}");
        }
        let total: usize = messages.iter().map(Message::len).sum();
        summary(&format!(
            "interop: {label}: {} messages ({:.1} MiB) echoed in order, {pongs} pongs, closes \
             1000 1001 4000 answered in kind, {} ms; extensions: {extensions}",
            messages.len(),
            total as f64 / f64::from(1 << 20),
            started.elapsed().as_millis(),
        ));
    }
}

/// Runs `program tests/interop/<script> URL [--deflate] [--no-context-takeover]` for every
/// script variant, each against a fresh echo process; panics on the first failure.
fn run_script_variants(program: &OsStr, script: &str, envs: &[(&str, &OsStr)]) {
    for &variant in SCRIPT_VARIANTS {
        let server = echo(variant.server);
        let mut command = Command::new(program);
        command
            .arg(interop_dir().join(script))
            .arg(server.ws_url("/ws"));
        command.envs(envs.iter().copied());
        if variant.deflate {
            command.arg("--deflate");
        }
        if variant.no_context_takeover {
            command.arg("--no-context-takeover");
        }
        let output = run_bounded(&mut command, SCRIPT_LIMIT)
            .unwrap_or_else(|e| panic!("{:?} ({}): {e}", command, variant.server.name()));
        let line = output
            .stdout
            .lines()
            .find(|l| l.starts_with("interop:"))
            .map(str::to_owned);
        let (true, Some(line)) = (output.success, line) else {
            panic!(
                "interop client failed ({}):\n{}{}",
                variant.server.name(),
                output.stdout,
                output.stderr
            );
        };
        let extensions = line.rsplit_once("; extensions: ").map_or("", |(_, e)| e);
        if let Err(e) = check_extensions(variant, extensions) {
            panic!("{line} ({}): {e}", variant.server.name());
        }
        summary(&format!("{line} ({})", variant.server.name()));
    }
}

/// Judges the server's `Sec-WebSocket-Extensions` answer (`none` when absent) for a variant:
/// permessage-deflate exactly when the client offered it and the server has it on; the
/// client's `server_no_context_takeover` honoured (RFC 7692 §7.1.1.1); with
/// `WS_CONTEXT_TAKEOVER=1` no `no_context_takeover` the client did not ask for; and both of
/// them by default (the server keeps no compression context unless told to).
fn check_extensions(variant: Variant, answer: &str) -> Result<(), String> {
    let negotiated = answer != "none";
    let expected = variant.deflate && variant.server != Server::NoCompression;
    if !expected {
        return if negotiated {
            Err(format!(
                "expected no extension, the server answered {answer:?}"
            ))
        } else {
            Ok(())
        };
    }
    let params: Vec<&str> = answer.split(';').map(str::trim).collect();
    if params.first() != Some(&"permessage-deflate") {
        return Err(format!(
            "expected permessage-deflate, the server answered {answer:?}"
        ));
    }
    let has = |name: &str| params.contains(&name);
    let mut required = Vec::new();
    let mut refused = Vec::new();
    if variant.no_context_takeover {
        required.push("server_no_context_takeover");
    }
    match variant.server {
        Server::Default => {
            required.extend(["server_no_context_takeover", "client_no_context_takeover"]);
        }
        Server::ContextTakeover if !variant.no_context_takeover => {
            refused.extend(["server_no_context_takeover", "client_no_context_takeover"]);
        }
        _ => {}
    }
    if let Some(missing) = required.iter().find(|p| !has(p)) {
        return Err(format!("the server's answer {answer:?} lacks {missing}"));
    }
    if let Some(extra) = refused.iter().find(|p| has(p)) {
        return Err(format!(
            "the server's answer {answer:?} has {extra}, which nobody asked for"
        ));
    }
    Ok(())
}

/// Prints a line where the test harness does not capture it, so that a passing run shows it.
fn summary(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The installed client, or `None` after saying why it is skipped; under `CI=true` a client
/// that cannot be had fails the test instead.
fn available<T>(client: &str, install: fn() -> Result<T, String>) -> Option<T> {
    match install() {
        Ok(found) => Some(found),
        Err(why) if in_ci() => panic!("interop: {client} cannot run under CI=true: {why}"),
        Err(why) => {
            summary(&format!("interop: {client} skipped: {why}"));
            None
        }
    }
}

/// `tests/interop/` at the workspace root.
fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop")
}

/// Where the clients are installed: `target/tmp/interop/`.
fn install_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop")
}

/// A venv with the pinned `websockets` (`target/tmp/interop/python`); returns its python.
fn install_python() -> Result<PathBuf, String> {
    let requirements = fs::read_to_string(interop_dir().join("requirements.txt"))
        .map_err(|e| format!("tests/interop/requirements.txt: {e}"))?;
    let dir = install_root().join("python");
    cached_install(
        &dir,
        "requirements.txt",
        &requirements,
        "bin/python",
        |staging| {
            run_install(
                Command::new("python3").arg("-m").arg("venv").arg(staging),
                "python3 -m venv (apt-get install python3-venv)",
            )?;
            run_install(
                Command::new(staging.join("bin/python"))
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .arg("-r")
                    .arg(staging.join("requirements.txt")),
                "pip install -r tests/interop/requirements.txt",
            )
        },
    )?;
    Ok(dir.join("bin/python"))
}

/// The pinned `ws` (`target/tmp/interop/node/node_modules`); returns that folder.
fn install_node() -> Result<PathBuf, String> {
    run_install(
        Command::new("node").arg("--version"),
        "node (apt-get install nodejs npm)",
    )?;
    let manifest = fs::read_to_string(interop_dir().join("package.json"))
        .map_err(|e| format!("tests/interop/package.json: {e}"))?;
    let dir = install_root().join("node");
    cached_install(
        &dir,
        "package.json",
        &manifest,
        "node_modules/ws/package.json",
        |staging| {
            run_install(
                Command::new("npm")
                    .args([
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--no-package-lock",
                        "--ignore-scripts",
                    ])
                    .current_dir(staging),
                "npm install ws (apt-get install nodejs npm)",
            )
        },
    )?;
    Ok(dir.join("node_modules"))
}

/// Makes `dir` hold what `install` puts there for `manifest` (written as `dir/manifest_name`),
/// unless it already does. Installs into a staging folder renamed into place at the end, so
/// an interrupted or concurrent install never leaves a half-made `dir` that looks done.
fn cached_install(
    dir: &Path,
    manifest_name: &str,
    manifest: &str,
    ready: &str,
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let done = |dir: &Path| {
        fs::read_to_string(dir.join(manifest_name)).ok().as_deref() == Some(manifest)
            && dir.join(ready).exists()
    };
    if done(dir) {
        return Ok(());
    }
    let staging = dir.with_extension(format!("staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)
        .and_then(|()| fs::write(staging.join(manifest_name), manifest))
        .map_err(|e| format!("{}: {e}", staging.display()))?;
    summary(&format!("interop: installing into {}", dir.display()));
    if let Err(e) = install(&staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let _ = fs::remove_dir_all(dir);
    if let Err(e) = fs::rename(&staging, dir) {
        let _ = fs::remove_dir_all(&staging);
        // Another run may have put its own in place meanwhile.
        if !done(dir) {
            return Err(format!("cannot move the install to {}: {e}", dir.display()));
        }
    }
    Ok(())
}

fn run_install(command: &mut Command, what: &str) -> Result<(), String> {
    let output = run_bounded(command, INSTALL_LIMIT).map_err(|e| format!("{what}: {e}"))?;
    if output.success {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", output.stderr.trim()))
    }
}

/// What a finished process printed.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end, killing it (by PID) after `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {limit:?}, killed"));
            }
            Err(e) => return Err(format!("cannot wait: {e}")),
        }
    };
    Ok(Output {
        success: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// The echo example as a process with the variant's settings, killed (by PID) when dropped.
fn echo(server: Server) -> AppProcess {
    AppProcess::example("echo", server.env())
}

/// The schedule every client follows, as in `tests/interop/interop.py`.
mod schedule {
    use tokio_tungstenite::tungstenite::Message;

    pub(crate) const MESSAGES: usize = 1000;
    const SEED: u64 = 13;
    /// Every 50th message has one of these sizes, in turn (each twice); the rest 0-2048 bytes.
    const SPECIAL_SIZES: [usize; 10] = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 1 << 20];
    /// After every 100th message, a ping; payload sizes in turn (125 is the largest allowed).
    const PING_SIZES: [usize; 10] = [0, 1, 4, 16, 64, 100, 124, 125, 125, 8];
    /// Text is drawn from 1-, 2-, 3- and 4-byte UTF-8 characters.
    const ALPHABET: &str = "abcdefghij klmnopqrstuvwxyz 0123456789 é ü ß € ✓ 日本語 😀 𝄞";
    pub(crate) const CLOSE_CODES: [u16; 3] = [1000, 1001, 4000];

    /// splitmix64: a small seeded generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    pub(crate) fn messages() -> Vec<Message> {
        let alphabet: Vec<char> = ALPHABET.chars().collect();
        let mut rng = Rng(SEED);
        (0..MESSAGES)
            .map(|i| {
                let size = if i % 50 == 0 {
                    SPECIAL_SIZES[(i / 50) % SPECIAL_SIZES.len()]
                } else {
                    rng.below(2049)
                };
                if rng.next() & 1 == 0 {
                    // Exactly `size` bytes of UTF-8: characters while they fit, then ASCII.
                    let mut text = String::with_capacity(size);
                    loop {
                        let c = alphabet[rng.below(alphabet.len())];
                        if text.len() + c.len_utf8() > size {
                            break;
                        }
                        text.push(c);
                    }
                    text.extend(std::iter::repeat_n('x', size - text.len()));
                    Message::text(text)
                } else {
                    let bytes: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                    Message::binary(bytes)
                }
            })
            .collect()
    }

    /// The payload of the `k`-th ping.
    pub(crate) fn ping_payload(k: usize) -> Vec<u8> {
        (0..PING_SIZES[k % PING_SIZES.len()])
            .map(|j| ((k * 31 + j) % 256) as u8)
            .collect()
    }
}

/// The schedule over tokio-tungstenite.
mod tungstenite_client {
    use super::*;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(url: &str) -> Result<(Socket, String), String> {
        let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "no handshake in time".to_owned())?
            .map_err(|e| format!("handshake: {e}"))?;
        let extensions = response
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Ok((socket, extensions))
    }

    async fn next<S>(socket: &mut S) -> Result<Message, String>
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        match tokio::time::timeout(WAIT, socket.next()).await {
            Ok(Some(Ok(message))) => Ok(message),
            Ok(Some(Err(e))) => Err(format!("read: {e}")),
            Ok(None) => Err("the connection ended".to_owned()),
            Err(_) => Err(format!("nothing read in {WAIT:?}")),
        }
    }

    fn describe(message: &Message) -> String {
        match message {
            Message::Text(t) => format!("text of {} bytes", t.len()),
            Message::Binary(b) => format!("binary of {} bytes", b.len()),
            other => format!("{other:?}"),
        }
    }

    /// The message connection: every message and ping, sent by a task while this one reads,
    /// then close 1000. Returns the extensions answer and the pongs seen.
    pub(crate) async fn exchange(
        url: &str,
        messages: &[Message],
    ) -> Result<(String, usize), String> {
        let (socket, extensions) = connect(url).await?;
        let (mut sink, mut stream) = socket.split();
        let outgoing = messages.to_vec();
        let writer = tokio::spawn(async move {
            let mut pings = Vec::new();
            for (i, message) in outgoing.into_iter().enumerate() {
                sink.send(message).await?;
                if i % 100 == 99 {
                    let payload = schedule::ping_payload(pings.len());
                    sink.send(Message::Ping(payload.clone().into())).await?;
                    pings.push(payload);
                }
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>((sink, pings))
        });
        let mut echoed = 0;
        let mut pongs = Vec::new();
        let expected_pongs = schedule::MESSAGES / 100;
        while echoed < messages.len() || pongs.len() < expected_pongs {
            match next(&mut stream).await? {
                Message::Pong(payload) => pongs.push(payload.to_vec()),
                Message::Ping(_) => {} // answered by tungstenite
                message if echoed < messages.len() && message == messages[echoed] => echoed += 1,
                message => {
                    return Err(format!(
                        "message {echoed}: sent {}, got back {}",
                        messages.get(echoed).map_or("nothing".to_owned(), describe),
                        describe(&message)
                    ));
                }
            }
        }
        let (sink, pings) = tokio::time::timeout(WAIT, writer)
            .await
            .map_err(|_| "the writer did not finish".to_owned())?
            .map_err(|e| format!("writer task: {e}"))?
            .map_err(|e| format!("write: {e}"))?;
        if pongs != pings {
            return Err(format!(
                "pong payloads {pongs:?} differ from ping payloads {pings:?}"
            ));
        }
        let socket = sink
            .reunite(stream)
            .map_err(|_| "cannot reunite".to_owned())?;
        close_with(socket, schedule::CLOSE_CODES[0]).await?;
        Ok((extensions, pongs.len()))
    }

    /// One short connection: one message echoed, then close with `code`.
    pub(crate) async fn close_only(url: &str, code: u16) -> Result<(), String> {
        let (mut socket, _) = connect(url).await?;
        socket
            .send(Message::text("bye"))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let echo = next(&mut socket).await?;
        if echo != Message::text("bye") {
            return Err(format!(
                "close {code} connection: sent 'bye', got back {}",
                describe(&echo)
            ));
        }
        close_with(socket, code).await
    }

    /// Sends a close frame with `code` and checks that the server's carries the same.
    async fn close_with(mut socket: Socket, code: u16) -> Result<(), String> {
        socket
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "interop".into(),
            }))
            .await
            .map_err(|e| format!("close: {e}"))?;
        loop {
            match next(&mut socket).await? {
                Message::Close(Some(frame)) if u16::from(frame.code) == code => return Ok(()),
                Message::Close(answer) => {
                    return Err(format!(
                        "closed with {code}, the server answered {answer:?}"
                    ));
                }
                _ => {} // echoes and pongs still in flight
            }
        }
    }
}
