//! The overriding upgrader's handshake timeout is the one `App` applies to reading requests,
//! and handlers still see the peer's address.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use gofr_app::{App, Context, Error, WsUpgrader};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite;

use crate::support::{WAIT, config, serve};

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
    let served = serve(app).await;
    let addr = served.addr;

    for stalled in [&b""[..], b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr"] {
        let elapsed = time_to_disconnect(addr, stalled).await;
        assert!(
            elapsed >= TIMEOUT && elapsed < TIMEOUT + Duration::from_secs(3),
            "{elapsed:?}"
        );
    }

    // A client in time is upgraded, its socket outlives the timeout, and handlers still see
    // the peer's address (connect info).
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = client.get_ref() else {
        panic!("plain TCP expected");
    };
    let local = tcp.local_addr().unwrap().to_string();
    tokio::time::sleep(TIMEOUT * 2).await;
    client
        .send(tungstenite::Message::text("who am I?"))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(reply.unwrap().unwrap(), tungstenite::Message::text(local));

    served.shutdown.shutdown();
    drop(client);
    tokio::time::timeout(WAIT, served.task)
        .await
        .expect("the app stops")
        .unwrap()
        .unwrap();
}
