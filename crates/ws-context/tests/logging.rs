//! A handler's log lines carry its connection's id and route; a closing peer leaves no error
//! lines behind (GoFr logs two errors per loop turn on 1005/4xxx closes).

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use ws_context::{ConnectionHub, Context, Endpoint};
use ws_test::{TestServer, eventually};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn logs(ctx: Context) -> Result<String, ws_context::BindError> {
    let text: String = ctx.bind()?;
    tracing::info!(%text, "handled");
    Ok(text)
}

// One thread, so the server's tasks log into this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn handler_logs_carry_connection_id_and_route() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let hub = ConnectionHub::new();
    let server = TestServer::endpoint("/ws/{room}", Endpoint::new(logs).hub(hub.clone())).await;
    let mut client = server.connect("/ws/blue").await;
    client.send_text("hello").await;
    assert_eq!(client.recv_text().await, "hello");
    let id = hub.list()[0].id.clone();

    client.close(4000, "bye").await;
    eventually("connection ended", || hub.is_empty()).await;

    let log = captured.text();
    let handled = log
        .lines()
        .find(|l| l.contains("handled"))
        .unwrap_or_else(|| panic!("no handler line in:\n{log}"));
    assert!(handled.contains(&format!("conn_id={id}")), "{handled}");
    assert!(handled.contains("route=/ws/{room}"), "{handled}");
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
    assert_eq!(log.matches("connection closed").count(), 1, "{log}");
}
