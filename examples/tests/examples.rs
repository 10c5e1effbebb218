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
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(name: &str) -> Running {
        let mut child = Command::new(example_path(name))
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", "0")
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
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(addr) = listening_address(&line) {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("example did not log its address");
        Running { child, addr }
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

fn listening_address(line: &str) -> Option<SocketAddr> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json.get("address")?.as_str()?.parse().ok()
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
