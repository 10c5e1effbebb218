//! The example programs, run as real processes on 127.0.0.1 with a port the OS picks.

use std::{process::Command, time::Duration};

use ws_test::{AppProcess, WsClient, example_path, http_post};

mod chat;
mod cluster;
mod limits;
mod recovery;

/// How long a stopped example may take to exit: its grace period and a margin.
const EXIT_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn echo_keeps_text_text_and_binary_binary() {
    let server = AppProcess::example("echo", &[]);
    let mut client = server.connect("/ws").await;
    client.send_text("héllo").await;
    assert_eq!(client.recv_text().await, "héllo");
    client.send_binary(vec![0u8, 200, 3]).await;
    assert_eq!(client.recv_binary().await, vec![0u8, 200, 3]);
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
    let mut server = AppProcess::example("echo", &[]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = server.connect("/ws").await;
        // One round trip each, so every connection is registered before the signal.
        client.send_text("ready?").await;
        assert_eq!(client.recv_text().await, "ready?");
        clients.push(client);
    }
    server.terminate();
    // Answering the closes lets the server finish its handshakes and exit.
    for client in &mut clients {
        client.expect_close(1001).await;
    }
    assert!(server.wait_exit(EXIT_WAIT).success());
}

/// The next chat line, the position given at join and presence lines skipped.
async fn chat_line(client: &mut WsClient) -> serde_json::Value {
    loop {
        let line = chat::chat_json(client).await;
        if line["joined"] != true {
            return line;
        }
    }
}

#[tokio::test]
async fn ws_inter_service_notifies_the_service_even_when_it_starts_late() {
    // A port for the notification service, released: nothing listens there yet.
    let port = test_support::free_port().to_string();
    let sender = AppProcess::example(
        "ws-inter-service",
        &[
            ("NOTIFICATION_URL", &format!("ws://127.0.0.1:{port}/ws")),
            ("RETRY_INTERVAL_MS", "50"),
        ],
    );

    // The service is down: the notification is queued, and the reply says so.
    let sent = http_post(&sender.http_url("/send-notification"), None).await;
    assert_eq!(sent.status, 201, "{sent}");
    assert!(sent.body.contains("queued"), "{sent}");

    let service = AppProcess::example("notification-service", &[("HTTP_PORT", &port)]);
    let line = service.expect_log("notification received");
    let notification: serde_json::Value =
        serde_json::from_str(line["notification"].as_str().expect("text")).expect("JSON");
    assert_eq!(
        notification,
        serde_json::json!({"title": "New Message", "content": "You have a new notification!"})
    );

    // Connected now: the seed's answer, and the message travels at once.
    let sent = http_post(&sender.http_url("/send-notification"), None).await;
    assert_eq!(
        (sent.status, sent.body.as_str()),
        (201, r#"{"data":"Notification sent successfully!"}"#)
    );
    service.expect_log("notification received");
}

#[tokio::test]
async fn using_web_socket_applies_its_handshake_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    // Its greeting, echo and subprotocol choice are tested in kit.rs.
    let server = AppProcess::example("using-web-socket", &[]);
    // Handshake timeout (5 s): half a request is cut off once it passes.
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
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
