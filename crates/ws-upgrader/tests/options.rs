//! Origin check, error handler, refusals, subprotocols and buffer sizes, seen on the wire.

use std::{sync::Arc, time::Duration};

use axum::{body::Body, response::Response};
use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
use ws_upgrader::WsUpgrader;

use crate::support::{BURST_FRAMES, spawn_burst, spawn_echo, spawn_feed_then_read};
use test_support::{WAIT, header, raw_request, upgrade_request};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with extra request headers; the refusal, if any, comes back as (status, body).
async fn connect(
    url: String,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
    {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(response)) => Err((
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(other) => panic!("unexpected client error: {other}"),
    }
}

async fn echo_once(client: &mut Client, text: &str) {
    client.send(tungstenite::Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(reply.unwrap().unwrap(), tungstenite::Message::text(text));
}

#[tokio::test]
async fn cross_origin_is_refused_403_by_default() {
    let addr = spawn_echo(WsUpgrader::new()).await;
    let url = format!("ws://{addr}/ws");
    let (status, body) = connect(url.clone(), &[("origin", "http://evil.test")])
        .await
        .unwrap_err();
    assert_eq!(status, 403);
    assert!(
        body.contains("evil.test") && body.contains("not allowed"),
        "{body}"
    );

    // Same origin (host of Origin equals Host, any case) and no Origin are accepted.
    let same = format!("http://{}", addr.to_string().to_uppercase());
    let (mut client, _) = connect(url.clone(), &[("origin", &same)]).await.unwrap();
    echo_once(&mut client, "same origin").await;
    let (mut client, _) = connect(url, &[]).await.unwrap();
    echo_once(&mut client, "no origin").await;
}

#[tokio::test]
async fn a_custom_origin_check_decides() {
    let upgrader = WsUpgrader::builder()
        .check_origin(|parts| {
            parts
                .headers
                .get(http::header::ORIGIN)
                .is_some_and(|o| o == "https://trusted.example")
        })
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    let url = format!("ws://{addr}/ws");
    let (mut client, _) = connect(url.clone(), &[("origin", "https://trusted.example")])
        .await
        .unwrap();
    echo_once(&mut client, "cross origin, trusted").await;
    let (status, _) = connect(url, &[("origin", "https://other.example")])
        .await
        .unwrap_err();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_custom_error_handler_writes_the_response() {
    let upgrader = WsUpgrader::builder()
        .error_handler(|rejection| {
            let body = format!(
                "{{\"error\":{{\"status\":{},\"reason\":{:?}}}}}",
                rejection.status().as_u16(),
                rejection.reason()
            );
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = rejection.status();
            response
                .headers_mut()
                .insert("x-handled-by", "custom".parse().unwrap());
            response
        })
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    let (status, body) = connect(format!("ws://{addr}/ws"), &[("origin", "http://evil.test")])
        .await
        .unwrap_err();
    assert_eq!(status, 403);
    assert!(
        body.starts_with("{\"error\":{\"status\":403,\"reason\":\"origin"),
        "{body}"
    );
    let (_, status, headers) = raw_request(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 426);
    assert_eq!(header(&headers, "x-handled-by"), Some("custom"));
}

#[tokio::test]
async fn default_refusals_say_what_to_fix() {
    let addr = spawn_echo(WsUpgrader::new()).await;
    let cases = [
        (
            "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            StatusCode::UPGRADE_REQUIRED,
        ),
        (
            upgrade_request(addr, "/ws", "").replace("Version: 13", "Version: 8"),
            StatusCode::UPGRADE_REQUIRED,
        ),
        (
            upgrade_request(addr, "/ws", "").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, expected) in cases {
        let (_, status, headers) = raw_request(addr, &request).await;
        assert_eq!(status, expected.as_u16(), "{request}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/plain; charset=utf-8")
        );
        if expected == StatusCode::UPGRADE_REQUIRED {
            assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
        }
    }
}

#[tokio::test]
async fn the_first_server_protocol_the_client_offers_is_selected() {
    let upgrader = WsUpgrader::builder()
        .subprotocols(["chat", "binary"])
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    // The client prefers binary; the server's order decides.
    let (mut client, response) = connect(
        format!("ws://{addr}/protocol"),
        &[("sec-websocket-protocol", "binary, chat")],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    let told = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(
        told.unwrap().unwrap(),
        tungstenite::Message::text("protocol=chat")
    );

    let (_, _, headers) = raw_request(
        addr,
        &upgrade_request(addr, "/ws", "Sec-WebSocket-Protocol: binary\r\n"),
    )
    .await;
    assert_eq!(header(&headers, "sec-websocket-protocol"), Some("binary"));
}

#[tokio::test]
async fn no_common_protocol_upgrades_without_the_header() {
    let upgrader = WsUpgrader::builder()
        .subprotocols(["chat", "binary"])
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    let (mut stream, status, headers) = raw_request(
        addr,
        &upgrade_request(addr, "/protocol", "Sec-WebSocket-Protocol: mqtt, soap\r\n"),
    )
    .await;
    assert_eq!(status, 101);
    assert_eq!(header(&headers, "sec-websocket-protocol"), None);
    let told = test_support::read_frame(&mut stream).await;
    assert_eq!(told.payload, b"protocol=none");
}

#[tokio::test]
async fn small_buffers_still_carry_large_messages() {
    // Buffer sizes bound reads and write batches, never the size of a message.
    let upgrader = WsUpgrader::builder()
        .read_buffer_size(256)
        .write_buffer_size(256)
        .build()
        .unwrap();
    let addr = spawn_echo(upgrader).await;
    let (mut client, _) = connect(format!("ws://{addr}/ws"), &[]).await.unwrap();
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    client
        .send(tungstenite::Message::binary(big.clone()))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(reply.unwrap().unwrap().into_data(), big);
    for i in 0..100 {
        echo_once(&mut client, &format!("small {i}")).await;
    }
}

#[tokio::test]
async fn write_buffer_size_is_how_much_is_coalesced_before_a_write() {
    // The server queues 20 frames of 102 bytes, then waits for `release` before its flush.
    let release = Arc::new(Notify::new());
    let small = WsUpgrader::builder()
        .write_buffer_size(256)
        .build()
        .unwrap();
    let addr = spawn_burst(small, release.clone()).await;
    let (mut client, _) = connect(format!("ws://{addr}/ws"), &[]).await.unwrap();
    // A 256-byte buffer is written out whenever it fills: all but the last frames arrive.
    for i in 0..BURST_FRAMES - 2 {
        let frame = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        assert_eq!(
            frame.unwrap().unwrap().into_text().unwrap(),
            format!("{i:0>100}")
        );
    }
    release.notify_one();

    // The default 16 KiB holds all of them until the flush.
    let release = Arc::new(Notify::new());
    let addr = spawn_burst(WsUpgrader::new(), release.clone()).await;
    let (mut client, _) = connect(format!("ws://{addr}/ws"), &[]).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(
        early.is_err(),
        "a frame arrived before the flush: {early:?}"
    );
    release.notify_one();
    for i in 0..BURST_FRAMES {
        let frame = tokio::time::timeout(WAIT, client.next()).await.unwrap();
        assert_eq!(
            frame.unwrap().unwrap().into_text().unwrap(),
            format!("{i:0>100}")
        );
    }
}

#[tokio::test]
async fn reading_does_not_write_out_what_was_fed_before_the_flush() {
    // Replies fed while a burst is handled leave together at the flush, not one per read
    // ([S2](bench/README.md#scenarios) of `cargo xtask bench` wrote one per message when reading wrote them).
    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let addr = spawn_feed_then_read(read.clone(), release.clone()).await;
    let (mut client, _) = connect(format!("ws://{addr}/ws"), &[]).await.unwrap();
    client.send(tungstenite::Message::text("hi")).await.unwrap();
    tokio::time::timeout(WAIT, read.notified()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(
        early.is_err(),
        "the fed frame went out on a read: {early:?}"
    );
    release.notify_one();
    let frame = tokio::time::timeout(WAIT, client.next()).await.unwrap();
    assert_eq!(frame.unwrap().unwrap().into_text().unwrap(), "queued");
}
