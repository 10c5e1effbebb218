//! The echo example under hostile clients, as a process: SIGTERM ends it in time whatever the
//! clients do, and it survives running out of file descriptors.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use test_support::{client_frame, half_requests, raw_websocket};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_tungstenite::tungstenite::Message;
use ws_test::{AppProcess, DEFAULT_TIMEOUT as WAIT, example_path};

/// Waits for the process to exit after the SIGTERM sent at `started`; fails unless it exits
/// cleanly within `grace` plus 2 s.
fn exits_in_time(server: &mut AppProcess, grace: Duration, started: Instant) {
    let status = server.wait_exit(grace + Duration::from_secs(3));
    let elapsed = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        elapsed <= grace + Duration::from_secs(2),
        "exited {elapsed:?} after SIGTERM"
    );
}

#[tokio::test]
async fn sigterm_ends_the_process_within_grace_plus_2_s_whatever_the_clients_do() {
    let grace = Duration::from_secs(2);
    let mut server = AppProcess::example("echo", &[("SHUTDOWN_GRACE_PERIOD", "2s")]);
    let addr = server.addr();

    // 1, 2. A request head and a request body that never end.
    let _half = half_requests(addr, "/.well-known/alive", "/.well-known/alive").await;
    // 3. A WebSocket that never reads while the server writes to it: it sends 64 messages of
    //    64 KiB, whose echoes fill both socket buffers.
    let never_reads = raw_websocket(addr, "/ws").await;
    let (_reader, mut writer) = never_reads.into_split();
    let payload = vec![7u8; 64 << 10];
    let flood = tokio::spawn(async move {
        for _ in 0..64 {
            let frame = client_frame(true, false, 0x2, &payload);
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        writer
    });
    // 4. A peer that never answers our close frame (nor reads it).
    let _silent = raw_websocket(addr, "/ws").await;
    // 5. A well-behaved client.
    let mut good = server.connect("/ws").await;
    good.send_text("hi").await;
    assert_eq!(good.recv_text().await, "hi");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.terminate();
    // The good client gets 1001.
    good.expect_close(1001).await;
    exits_in_time(&mut server, grace, started);
    flood.abort();
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_backs_off_and_serves_again() {
    let path = example_path("echo");
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -n 64 && exec \"$0\"", path.to_str().unwrap()]);
    command.env("HTTP_READ_HEADER_TIMEOUT", "2s");
    let server = AppProcess::start(command);
    let addr = server.addr();
    // More clients than descriptors: the kernel completes their handshakes into the backlog,
    // and accepting them runs the server out of descriptors.
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    let line = server.expect_log("accept failed; backing off");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Too many open files"),
        "{line}"
    );
    // Still running, and serving again once the clients leave.
    drop(clients);
    let deadline = Instant::now() + WAIT;
    let mut client = loop {
        match server.client("/ws").try_connect().await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the server does not serve again: {error}"),
        }
    };
    client.send_text("back").await;
    assert_eq!(client.recv_text().await, "back");
}

/// The same shutdown with a service in the app's pool: while half-sent requests hang on, the
/// service still gets its close frame, 1001, and the process exits in time. Two workers: the
/// service task runs while this one waits for the example to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_pool_services_with_1001_whatever_the_clients_do() {
    let grace = Duration::from_secs(2);
    // The service: accepts one connection and reports the close code it is sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let service = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let _ = connected_tx.send(());
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("the service expected a close frame, got {other:?}"),
            }
        }
    });
    let mut server = AppProcess::example(
        "ws-inter-service",
        &[
            ("SHUTDOWN_GRACE_PERIOD", "2s"),
            ("NOTIFICATION_URL", service_url.as_str()),
            ("RETRY_INTERVAL_MS", "100"),
        ],
    );
    tokio::time::timeout(WAIT, connected)
        .await
        .expect("the app dialled its service")
        .unwrap();
    let _half = half_requests(server.addr(), "/.well-known/alive", "/send-notification").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.terminate();
    let code = tokio::time::timeout(grace + Duration::from_secs(2), service)
        .await
        .expect("the service got its close frame in time")
        .unwrap();
    assert_eq!(code, Some(1001));
    exits_in_time(&mut server, grace, started);
}
