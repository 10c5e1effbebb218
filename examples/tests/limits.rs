//! The echo example under hostile clients, as a process: SIGTERM ends it in time whatever the
//! clients do, and it survives running out of file descriptors.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message;

use super::{Running, WAIT, example_path, next_data};

/// A raw client that upgrades `/ws` and returns the socket after the 101.
async fn raw_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
    })
    .await
    .expect("101 in time");
    assert!(head.starts_with(b"HTTP/1.1 101"));
    stream
}

/// A masked binary frame from a client.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend((payload.len() as u64).to_be_bytes());
    frame.extend([0, 0, 0, 0]); // a zero mask leaves the payload as it is
    frame.extend(payload);
    frame
}

#[tokio::test]
async fn sigterm_ends_the_process_within_grace_plus_2_s_whatever_the_clients_do() {
    let grace = Duration::from_secs(2);
    let mut server = Running::start_with("echo", &[("SHUTDOWN_GRACE_PERIOD", "2s")]);
    let addr = server.addr;

    // 1. A request head that never ends.
    let mut half_head = TcpStream::connect(addr).await.unwrap();
    half_head
        .write_all(b"GET /.well-known/alive HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // 2. A request body that never ends.
    let mut half_body = TcpStream::connect(addr).await.unwrap();
    half_body
        .write_all(b"POST /.well-known/alive HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nten bytes.")
        .await
        .unwrap();
    // 3. A WebSocket that never reads while the server writes to it: it sends 64 messages of
    //    64 KiB, whose echoes fill both socket buffers.
    let never_reads = raw_websocket(addr).await;
    let (_reader, mut writer) = never_reads.into_split();
    let payload = vec![7u8; 64 << 10];
    let flood = tokio::spawn(async move {
        for _ in 0..64 {
            if writer.write_all(&client_frame(&payload)).await.is_err() {
                break;
            }
        }
        writer
    });
    // 4. A peer that never answers our close frame (nor reads it).
    let _silent = raw_websocket(addr).await;
    // 5. A well-behaved client.
    let (mut good, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    good.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut good).await, Message::text("hi"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.terminate();
    // The good client gets 1001.
    let close = loop {
        match tokio::time::timeout(WAIT, good.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    let status = server.wait_exit();
    let elapsed = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        elapsed <= grace + Duration::from_secs(2),
        "exited {elapsed:?} after SIGTERM"
    );
    flood.abort();
}

#[tokio::test]
async fn out_of_file_descriptors_the_server_backs_off_and_serves_again() {
    let path = example_path("echo");
    let mut command = Command::new("sh");
    command.args(["-c", "ulimit -n 64 && exec \"$0\"", path.to_str().unwrap()]);
    let server = Running::spawn(
        "echo",
        command,
        &[("HTTP_READ_HEADER_TIMEOUT", "2s"), ("LOG_LEVEL", "INFO")],
    );
    let addr = server.addr;
    // More clients than descriptors: the kernel completes their handshakes into the backlog,
    // and accepting them runs the server out of descriptors.
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    let line = server.wait_log("accept failed; backing off");
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
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url())).await {
            Ok(Ok((client, _))) => break client,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("the server does not serve again: {other:?}"),
        }
    };
    client.send(Message::text("back")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("back"));
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
    let mut server = Running::start_with(
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
    let mut half_head = TcpStream::connect(server.addr).await.unwrap();
    half_head
        .write_all(b"GET /.well-known/alive HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut half_body = TcpStream::connect(server.addr).await.unwrap();
    half_body
        .write_all(b"POST /send-notification HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nten bytes.")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.terminate();
    let code = tokio::time::timeout(grace + Duration::from_secs(2), service)
        .await
        .expect("the service got its close frame in time")
        .unwrap();
    assert_eq!(code, Some(1001));
    let status = server.wait_exit();
    let elapsed = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        elapsed <= grace + Duration::from_secs(2),
        "exited {elapsed:?} after SIGTERM"
    );
}
