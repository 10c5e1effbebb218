//! Servers on 127.0.0.1:0 that upgrade with a given `WsUpgrader` and echo, each holding
//! back its writes in its own way; the raw-socket helpers are test-support's.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::Request, response::Response, routing::any};
use test_support::WAIT;
use tokio::{net::TcpListener, sync::Notify};
use ws_upgrader::{InboundBudget, Message, WebSocket, WsUpgrader};

/// Serves, with `upgrader` and `ws_upgrader::serve` (its handshake timeout applied):
/// `/ws` echoes every data message; `/protocol` first sends `protocol=<selected or none>`,
/// then echoes. A protocol error is answered with its close code through `WebSocket::fail`.
pub(crate) async fn spawn_echo(upgrader: WsUpgrader) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let timeout = upgrader.handshake_timeout();
    let for_protocol = upgrader.clone();
    let router = Router::new()
        .route(
            "/ws",
            any(move |request: Request| upgrade(upgrader.clone(), request, false)),
        )
        .route(
            "/protocol",
            any(move |request: Request| upgrade(for_protocol.clone(), request, true)),
        );
    tokio::spawn(
        ws_upgrader::serve(listener, router)
            .handshake_timeout(timeout)
            .into_future(),
    );
    addr
}

/// [`spawn_echo`] with messages and frames limited to `limit` bytes.
pub(crate) async fn spawn_echo_limited(limit: usize) -> SocketAddr {
    spawn_echo(
        WsUpgrader::builder()
            .max_message_size(limit)
            .max_frame_size(limit)
            .build()
            .unwrap(),
    )
    .await
}

/// [`spawn_echo`] with its own inbound budget.
pub(crate) async fn spawn_echo_with_budget(budget: &InboundBudget) -> SocketAddr {
    spawn_echo(
        WsUpgrader::builder()
            .inbound_budget(budget.clone())
            .build()
            .unwrap(),
    )
    .await
}

/// Frames the server of [`spawn_burst`] queues before its flush.
pub(crate) const BURST_FRAMES: usize = 20;

/// Serves `/ws` with `upgrader`: each connection queues [`BURST_FRAMES`] text frames of 100
/// bytes without flushing (and without reading), waits for `release`,
/// then flushes and echoes.
pub(crate) async fn spawn_burst(upgrader: WsUpgrader, release: Arc<Notify>) -> SocketAddr {
    spawn_holding(upgrader, move |mut socket| {
        let release = release.clone();
        async move {
            for i in 0..BURST_FRAMES {
                let frame = Message::text(format!("{i:0>100}"));
                if socket.feed(frame).await.is_err() {
                    return;
                }
            }
            release.notified().await;
            if socket.flush().await.is_ok() {
                echo(socket).await;
            }
        }
    })
    .await
}

/// Serves `/ws`: each connection feeds one text frame `queued` without flushing, reads one
/// message, signals `read`, waits for `release`, then flushes and echoes.
pub(crate) async fn spawn_feed_then_read(read: Arc<Notify>, release: Arc<Notify>) -> SocketAddr {
    spawn_holding(WsUpgrader::new(), move |mut socket| {
        let (read, release) = (read.clone(), release.clone());
        async move {
            if socket.feed(Message::text("queued")).await.is_err() {
                return;
            }
            if !matches!(socket.recv().await, Some(Ok(_))) {
                return;
            }
            read.notify_one();
            release.notified().await;
            if socket.flush().await.is_ok() {
                echo(socket).await;
            }
        }
    })
    .await
}

/// Serves `/ws` with `upgrader`, handing each upgraded socket to `run`.
pub(crate) async fn spawn_holding<F, Fut>(upgrader: WsUpgrader, run: F) -> SocketAddr
where
    F: Fn(WebSocket) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| {
            let (upgrader, run) = (upgrader.clone(), run.clone());
            async move {
                let (mut parts, _body) = request.into_parts();
                match upgrader.upgrade(&mut parts) {
                    Ok(pending) => pending.on_upgrade(run),
                    Err(refusal) => refusal,
                }
            }
        }),
    );
    tokio::spawn(ws_upgrader::serve(listener, router).into_future());
    addr
}

/// Serves the echo of [`spawn_echo`] over one in-memory connection, so that hyper hands the
/// upgrade back as its type-erased `Upgraded`, not as a TCP stream. Returns the client's end.
pub(crate) fn spawn_echo_in_memory(upgrader: WsUpgrader) -> tokio::io::DuplexStream {
    use tower::ServiceExt as _;
    let (client, server) = tokio::io::duplex(64 << 10);
    let router = Router::new().route(
        "/ws",
        any(move |request: Request| upgrade(upgrader.clone(), request, false)),
    );
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        router.clone().oneshot(request.map(axum::body::Body::new))
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), service)
            .with_upgrades(),
    );
    client
}

async fn upgrade(upgrader: WsUpgrader, request: Request, tell_protocol: bool) -> Response {
    let (mut parts, _body) = request.into_parts();
    match upgrader.upgrade(&mut parts) {
        Ok(pending) => pending.on_upgrade(move |mut socket| async move {
            if tell_protocol {
                let text = format!("protocol={}", socket.protocol().unwrap_or("none"));
                if socket.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
            echo(socket).await;
        }),
        Err(refusal) => refusal,
    }
}

async fn echo(mut socket: WebSocket) {
    loop {
        match socket.recv().await {
            Some(Ok(message)) if message.is_data() => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                let _ = tokio::time::timeout(WAIT, socket.fail(&error)).await;
                return;
            }
            None => return,
        }
    }
}
