//! DESIGN.md point 6: one writer per socket, safe from any task.

use std::collections::HashMap;

use ws_context::{Context, Endpoint};
use ws_test::TestServer;

async fn greet_then_echo(ctx: Context) -> Result<String, anyhow::Error> {
    let message: String = ctx.bind()?;
    ctx.write_message_to_socket("Hello! GoFr").await?;
    Ok(message)
}

#[tokio::test]
async fn written_message_arrives_before_the_returned_value() {
    let server = TestServer::endpoint("/ws", Endpoint::new(greet_then_echo)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("hi").await;
    assert_eq!(client.recv_text().await, "Hello! GoFr");
    assert_eq!(client.recv_text().await, "hi");
}

async fn fan_out(ctx: Context) -> Result<(), anyhow::Error> {
    let mut tasks = Vec::new();
    for task in 0..32 {
        let socket = ctx.socket();
        tasks.push(tokio::spawn(async move {
            for seq in 0..100 {
                socket.write(&format!("{task}:{seq}")).await?;
            }
            Ok::<_, ws_context::WriteError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_keep_frames_whole_and_in_order() {
    let server = TestServer::endpoint("/ws", Endpoint::new(fan_out)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("go").await;

    let mut last_seen: HashMap<u32, u32> = HashMap::new();
    for _ in 0..3200 {
        let text = client.recv_text().await;
        let (task, seq) = text.split_once(':').expect("intact frame");
        let (task, seq): (u32, u32) = (task.parse().unwrap(), seq.parse().unwrap());
        let expected = last_seen.get(&task).map_or(0, |s| s + 1);
        assert_eq!(seq, expected, "task {task} out of order");
        last_seen.insert(task, seq);
    }
    assert_eq!(last_seen.len(), 32);
    assert!(last_seen.values().all(|&s| s == 99));
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Score {
    player: String,
    points: u32,
}

/// Borrowed values: a struct written and then returned, a local `String` (text) and a local
/// `Vec<u8>` (binary) written through a reference.
async fn write_borrowed(ctx: Context) -> Result<Score, anyhow::Error> {
    let score = Score {
        player: ctx.bind()?,
        points: 10,
    };
    ctx.write_message_to_socket(&score).await?;
    let text = format!("{} scored", score.player);
    ctx.write_message_to_socket(&text).await?;
    let bytes = vec![0u8, 0xff];
    ctx.socket().write(&bytes).await?;
    Ok(score)
}

#[tokio::test]
async fn borrowed_values_are_written_by_the_same_rules() {
    let server = TestServer::endpoint("/ws", Endpoint::new(write_borrowed)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("ada").await;
    let json = r#"{"player":"ada","points":10}"#;
    assert_eq!(client.recv_text().await, json);
    assert_eq!(client.recv_text().await, "ada scored");
    assert_eq!(&client.recv_binary().await[..], &[0u8, 0xff]);
    assert_eq!(client.recv_text().await, json);
}

/// Writes 200 binary messages of 64 KiB, each starting with its number, then returns "done".
async fn flood_then_reply(ctx: Context) -> Result<&'static str, anyhow::Error> {
    for seq in 0..200u32 {
        let mut payload = vec![0u8; 64 * 1024];
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        ctx.write_message_to_socket(&payload).await?;
    }
    Ok("done")
}

/// 12.5 MiB queued by a call while the peer reads nothing fills the socket: the task stops
/// taking work until its flush writes, the queue's bound holds the handler's writes back,
/// and once the peer reads, every frame comes in order and the reply after them.
#[tokio::test]
async fn a_reply_waits_behind_what_its_call_queued_while_the_peer_reads_nothing() {
    let server = TestServer::endpoint("/ws", Endpoint::new(flood_then_reply)).await;
    let mut client = server.connect("/ws").await;
    client.send_text("go").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for seq in 0..200u32 {
        let payload = client.recv_binary().await;
        assert_eq!(payload.len(), 64 * 1024);
        assert_eq!(payload[..4], seq.to_be_bytes(), "frame {seq} out of order");
    }
    assert_eq!(client.recv_text().await, "done");
}
