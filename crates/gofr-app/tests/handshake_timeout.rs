//! The overriding upgrader's handshake timeout is the one `App` applies to reading requests,
//! and handlers still see the peer's address.

use std::time::{Duration, Instant};

use gofr_app::{App, Context, Error, WsUpgrader};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use ws_test::{DEFAULT_TIMEOUT as WAIT, TestServer};

use crate::support::config;

const TIMEOUT: Duration = Duration::from_millis(400);

async fn peer(ctx: Context) -> Result<String, Error> {
    Ok(ctx
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string()))
}

/// Seconds until the server closes a connection that sent `bytes` and then stalled.
async fn time_to_disconnect(addr: std::net::SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut sink = [0u8; 1024];
    tokio::time::timeout(TIMEOUT + WAIT, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await
    .expect("the app kept a stalled request open");
    started.elapsed()
}

#[tokio::test]
async fn the_override_upgraders_handshake_timeout_cuts_stalled_requests() {
    let mut app = App::with_config(config());
    app.websocket("/ws", peer);
    app.override_websocket_upgrader(
        WsUpgrader::builder()
            .handshake_timeout(TIMEOUT)
            .build()
            .unwrap(),
    );
    let server = TestServer::app(app).await;
    let addr = server.addr();

    for stalled in [&b""[..], b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr"] {
        let elapsed = time_to_disconnect(addr, stalled).await;
        assert!(
            elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    // A client in time is upgraded, its socket outlives the timeout, and handlers still see
    // the peer's address (connect info).
    let mut client = server.connect("/ws").await;
    let local = client.local_addr().to_string();
    tokio::time::sleep(TIMEOUT * 2).await;
    client.send_text("who am I?").await;
    assert_eq!(client.recv_text().await, local);

    drop(client);
    server.shutdown().await;
}
