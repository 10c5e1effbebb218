//! Server and client helpers shared by the tests.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use futures_util::StreamExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest as _},
};

pub(crate) type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounded wait for anything a test awaits.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Binds 127.0.0.1:0 before spawning, so clients can connect at once.
pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Client {
    connect_with_header(addr, path, None).await
}

/// Connects, optionally sending one extra request header (`(name, value)`).
pub(crate) async fn connect_with_header(
    addr: SocketAddr,
    path: &str,
    header: Option<(&'static str, &str)>,
) -> Client {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("valid URL");
    if let Some((name, value)) = header {
        request
            .headers_mut()
            .insert(name, value.parse().expect("valid header value"));
    }
    let (client, _response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    client
}

/// The next text or binary frame (pings and pongs skipped).
pub(crate) async fn next_data(client: &mut Client) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("read failed");
        match message {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Reads until the server's close frame and returns its code (1005 when it has none).
pub(crate) async fn close_code(client: &mut Client) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| f.code.into()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Waits, bounded, until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads the server's close frame, then keeps reading so the client answers it, until the
/// stream ends; returns the server's close code.
pub(crate) async fn closed_with(client: &mut Client) -> u16 {
    let code = close_code(client).await;
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, client.next())
        .await
        .expect("stream did not end after close")
    {}
    code
}
