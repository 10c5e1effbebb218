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

    /// Starts it with extra environment variables.
    fn start_with(name: &str, env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(example_path(name))
            .envs(env.iter().copied())
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", "0")
            .env("METRICS_PORT", "0")
            .env("LOG_LEVEL", "INFO")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        // Read the log until the listening line; keep draining afterwards so the pipe never
        // fills and blocks the server.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for field in ["metrics_address", "address"] {
                    if let Some(addr) = logged_address(&line, field) {
                        let _ = tx.send((field, addr));
                    }
                }
            }
        });
        // The metrics line comes first; the server's line says it is ready.
        let mut metrics = None;
        let addr = loop {
            match rx
                .recv_timeout(WAIT)
                .expect("example did not log its address")
            {
                ("address", addr) => break addr,
                (_, addr) => metrics = Some(addr),
            }
        };
        Running {
            child,
            addr,
            metrics,
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

fn logged_address(line: &str, field: &str) -> Option<SocketAddr> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json.get(field)?.as_str()?.parse().ok()
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

async fn chat_line(client: &mut Client) -> serde_json::Value {
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
