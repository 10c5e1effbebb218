//! The `chat` example as its tests talk to it, with the kit's client only: shared by the
//! `kit` and `examples` test binaries.

use ws_test::{AppProcess, WsClient};

/// Joins `room` as `name`: takes the server's join line (with the room's position), then
/// waits for the echo of its own greeting: from then on it is a member.
pub(crate) async fn chatter(server: &AppProcess, room: &str, name: &str) -> WsClient {
    let mut client = server.connect(&format!("/ws/{room}?name={name}")).await;
    let joined: serde_json::Value = client.recv_json().await;
    assert_eq!(joined["joined"], true, "{joined}");
    client.send_text(format!("hello from {name}")).await;
    loop {
        let line = chat_json(&mut client).await;
        if line["from"] == name {
            assert_eq!(line["text"], format!("hello from {name}"));
            return client;
        }
    }
}

/// The next line that is not a presence line (someone arriving or leaving).
pub(crate) async fn chat_json(client: &mut WsClient) -> serde_json::Value {
    loop {
        let line: serde_json::Value = client.recv_json().await;
        if line.get("presence").is_none() {
            return line;
        }
    }
}
