//! The example programs, run as real processes on 127.0.0.1 with a port the OS picks.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

mod cluster;
mod limits;
mod recovery;
#[path = "../../crates/ws-backplane-redis/tests/redis_server.rs"]
mod redis_server;

const WAIT: Duration = Duration::from_secs(10);

/// The built example, next to this test binary (`target/<profile>/examples/NAME`).
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir.join("examples").join(name)
}

/// A running example; killed when dropped so no test leaves a process behind.
struct Running {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    /// Its JSON log lines after the listening line.
    log: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(name: &str) -> Running {
        Running::start_with(name, &[])
    }

    /// Starts with extra environment variables, which win over the defaults.
    fn start_with(name: &str, env: &[(&str, &str)]) -> Running {
        Running::spawn(name, Command::new(example_path(name)), env)
    }

    /// Starts `command` (the example `name`, perhaps behind a shell) as [`start_with`] does.
    fn spawn(name: &str, mut command: Command, env: &[(&str, &str)]) -> Running {
        let mut child = command
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", "0")
            .env("METRICS_PORT", "0")
            .env("LOG_LEVEL", "INFO")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, log) = mpsc::channel();
        // Pass on every JSON log line; keep draining so the pipe never fills and blocks the
        // server.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
                    let _ = tx.send(json);
                }
            }
        });
        // The metrics line comes first; the server's line says it is ready.
        let mut metrics = None;
        let addr = loop {
            let line = log
                .recv_timeout(WAIT)
                .expect("example did not log its address");
            if let Some(addr) = logged_address(&line, "metrics_address") {
                metrics = Some(addr);
            } else if let Some(addr) = logged_address(&line, "address") {
                break addr;
            }
        };
        Running {
            child,
            addr,
            metrics,
            log,
        }
    }

    /// The next log line whose `message` is `message`, waiting at most [`WAIT`].
    fn wait_log(&self, message: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line["message"] == message => return line,
                Ok(_) => continue,
                Err(_) => panic!("no log line {message:?} in time"),
            }
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn logged_address(line: &serde_json::Value, field: &str) -> Option<SocketAddr> {
    line.get(field)?.as_str()?.parse().ok()
}

/// One HTTP/1.1 GET over a fresh connection; returns status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn next_data(
    client: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Message {
    loop {
        match tokio::time::timeout(WAIT, client.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return message,
            other => panic!("expected a data frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn using_web_socket_greets_then_echoes() {
    let server = Running::start("using-web-socket");
    let (mut client, response) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    client.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("Hello! GoFr"));
    assert_eq!(next_data(&mut client).await, Message::text("hi"));
}

#[tokio::test]
async fn echo_keeps_text_text_and_binary_binary() {
    let server = Running::start("echo");
    let (mut client, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    client.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("héllo"));
    client
        .send(Message::binary(vec![0u8, 200, 3]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut client).await,
        Message::binary(vec![0u8, 200, 3])
    );
}

#[test]
fn a_bad_http_port_stops_the_program_with_a_clear_message() {
    let output = Command::new(example_path("echo"))
        .env("HTTP_PORT", "abc")
        .output()
        .expect("example runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HTTP_PORT") && stderr.contains("\"abc\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_before_exit() {
    let mut server = Running::start("echo");
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (mut client, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        // One round trip each, so every connection is registered before the signal.
        client.send(Message::text("ready?")).await.unwrap();
        assert_eq!(next_data(&mut client).await, Message::text("ready?"));
        clients.push(client);
    }
    server.terminate();
    for client in &mut clients {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    // Answering the closes lets the server finish its handshakes and exit.
    for client in &mut clients {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, client.next()).await {}
    }
    assert!(server.wait_exit().success());
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Joins a chat room and waits for its own greeting to come back: from then on it is a member.
async fn chatter(server: &Running, room: &str, name: &str) -> Client {
    let url = format!("ws://{}/ws/{room}?name={name}", server.addr);
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    client
        .send(Message::text(format!("hello from {name}")))
        .await
        .unwrap();
    loop {
        let said = chat_line(&mut client).await;
        if said["from"] == name {
            assert_eq!(said["text"], format!("hello from {name}"));
            return client;
        }
    }
}

/// The next chat line, the position given at join and presence lines skipped.
async fn chat_line(client: &mut Client) -> serde_json::Value {
    loop {
        let line = chat_json(client).await;
        if line["joined"] != true && line.get("presence").is_none() {
            return line;
        }
    }
}

/// The next JSON line, whatever it is.
async fn chat_json(client: &mut Client) -> serde_json::Value {
    let message = next_data(client).await;
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}

#[tokio::test]
async fn chat_serves_its_page_and_keeps_rooms_apart() {
    let server = Running::start("chat");
    let (status, page) = http_get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<script>") && page.contains("new WebSocket"),
        "{page}"
    );

    let mut carol = chatter(&server, "blue", "carol").await;
    let mut alice = chatter(&server, "red", "alice").await;
    let mut bob = chatter(&server, "red", "bob").await;
    // Alice saw Bob arrive.
    assert_eq!(chat_line(&mut alice).await["text"], "hello from bob");

    alice.send(Message::text("hi red")).await.unwrap();
    for client in [&mut alice, &mut bob] {
        let said = chat_line(client).await;
        assert_eq!(
            (said["from"].as_str(), said["text"].as_str()),
            (Some("alice"), Some("hi red"))
        );
        assert!(
            said["at"].as_u64().is_some_and(|at| at > 1_600_000_000_000),
            "{said}"
        );
    }
    // Nothing from red reached blue: Carol's next line is her own.
    carol.send(Message::text("hi blue")).await.unwrap();
    let said = chat_line(&mut carol).await;
    assert_eq!(
        (said["from"].as_str(), said["text"].as_str()),
        (Some("carol"), Some("hi blue"))
    );

    // An empty message is refused with GoFr's error envelope, to the sender only.
    bob.send(Message::text("   ")).await.unwrap();
    let error = chat_line(&mut bob).await;
    assert!(error["error"]["message"].as_str().is_some(), "{error}");

    let metrics = server.metrics.expect("chat logs its metrics address");
    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.lines()
            .any(|l| l == r#"ws_connections_open{route="/ws/{room}"} 3"#),
        "{text}"
    );
}

/// One HTTP/1.1 POST with an empty body; returns status and body.
fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response[9..12].parse().expect("status");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

#[test]
fn ws_inter_service_notifies_the_service_even_when_it_starts_late() {
    // A port for the notification service, released: nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let sender = Running::start_with(
        "ws-inter-service",
        &[
            ("NOTIFICATION_URL", &format!("ws://127.0.0.1:{port}/ws")),
            ("RETRY_INTERVAL_MS", "50"),
        ],
    );

    // The service is down: the notification is queued, and the reply says so.
    let (status, body) = post(sender.addr, "/send-notification");
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("queued"), "{body}");

    let service = Running::start_with("notification-service", &[("HTTP_PORT", &port)]);
    let line = service.wait_log("notification received");
    let notification: serde_json::Value =
        serde_json::from_str(line["notification"].as_str().expect("text")).expect("JSON");
    assert_eq!(
        notification,
        serde_json::json!({"title": "New Message", "content": "You have a new notification!"})
    );

    // Connected now: the seed's answer, and the message travels at once.
    let (status, body) = post(sender.addr, "/send-notification");
    assert_eq!(
        (status, body.as_str()),
        (201, r#"{"data":"Notification sent successfully!"}"#)
    );
    service.wait_log("notification received");
}

#[tokio::test]
async fn using_web_socket_applies_its_upgrader_options() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let server = Running::start("using-web-socket");
    // Subprotocols: the server's order wins.
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "binary, chat".parse().unwrap());
    let (_client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");

    // Handshake timeout (5 s): half a request is cut off once it passes.
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
    let mut sink = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(1..) = stalled.read(&mut sink).await {}
    })
    .await
    .expect("the stalled request was not cut off");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
}
