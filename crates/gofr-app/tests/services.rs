//! Outbound WebSocket services through the app: handlers write to them, health shows them,
//! shutdown closes them.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use gofr_app::{App, Context, Error, HttpContext, ServiceExt as _, ServiceState};
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{WAIT, config, http, serve};

/// What a notification service received: data texts and the client's close codes.
#[derive(Clone, Default)]
struct Received {
    texts: Arc<Mutex<Vec<String>>>,
    close_codes: Arc<Mutex<Vec<u16>>>,
}

/// A WebSocket service on `listener` that records what it receives.
fn notification_service(listener: TcpListener, received: Received) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        Message::Text(text) => {
                            received.texts.lock().unwrap().push(text.to_string())
                        }
                        Message::Close(frame) => received
                            .close_codes
                            .lock()
                            .unwrap()
                            .push(frame.map_or(1005, |f| f.code.into())),
                        _ => {}
                    }
                }
                let _ = ws.close(None).await;
            });
        }
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn from_http(ctx: HttpContext) -> Result<&'static str, Error> {
    let text: String = ctx.bind()?;
    ctx.write_message_to_service("notifications", &text)?;
    Ok("sent")
}

async fn from_websocket(ctx: Context) -> Result<(), Error> {
    let text: String = ctx.bind()?;
    ctx.write_message_to_service("notifications", &format!("ws: {text}"))?;
    Ok(())
}

async fn health(addr: SocketAddr) -> serde_json::Value {
    let (status, body) = http(addr, "GET", "/.well-known/health", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn handlers_write_to_a_service_that_starts_late_health_degrades_and_shutdown_closes_it() {
    // Nothing listens yet: the address is reserved, then released.
    let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = reserved.local_addr().unwrap();
    drop(reserved);

    let mut app = App::with_config(config());
    app.add_ws_service(
        "notifications",
        &format!("ws://{service_addr}/ws"),
        HeaderMap::new(),
        true,
        Duration::from_millis(50),
    )
    .await
    .expect("reconnection on: Ok while the service is down");
    app.post("/notify", from_http);
    app.websocket("/ws", from_websocket);
    let pool = app.ws_services();
    let served = serve(app).await;

    // Down: the app still serves, health says DEGRADED with the dial error.
    let body = health(served.addr).await;
    assert_eq!(body["data"]["status"], "DEGRADED", "{body}");
    let service = &body["data"]["services"]["notifications"];
    assert_eq!(service["status"], "RECONNECTING", "{body}");
    assert!(
        service["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    // Written from an HTTP handler while down: queued.
    let (status, body) = http(served.addr, "POST", "/notify", "from http").await;
    assert_eq!((status, body.as_str()), (201, r#"{"data":"sent"}"#));

    let received = Received::default();
    let listener = TcpListener::bind(service_addr).await.unwrap();
    let service_task = notification_service(listener, received.clone());
    eventually("the service connects", || {
        pool.status("notifications").unwrap().state == ServiceState::Connected
    })
    .await;
    let body = health(served.addr).await;
    assert_eq!(body["data"]["status"], "UP", "{body}");
    assert_eq!(
        body["data"]["services"]["notifications"]["status"],
        "CONNECTED"
    );

    // From a WebSocket handler.
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", served.addr))
        .await
        .unwrap();
    client.send(Message::text("hello")).await.unwrap();
    eventually("both messages arrive", || {
        received.texts.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*received.texts.lock().unwrap(), ["from http", "ws: hello"]);

    // Shutdown closes the service connection with 1001 and ends every task.
    served.shutdown.shutdown();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, client.next()).await {}
    tokio::time::timeout(WAIT, served.task)
        .await
        .expect("the app stops")
        .unwrap()
        .unwrap();
    eventually("the service sees the close frame", || {
        !received.close_codes.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*received.close_codes.lock().unwrap(), [1001]);
    assert_eq!(
        pool.status("notifications").unwrap().state,
        ServiceState::Closed
    );
    service_task.abort();
}

#[tokio::test]
async fn writing_to_an_unknown_service_is_an_error_response() {
    let mut app = App::with_config(config());
    app.post("/notify", from_http);
    let served = serve(app).await;
    let (status, body) = http(served.addr, "POST", "/notify", r#""x""#).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("connection not found for service: notifications"),
        "{body}"
    );
}
