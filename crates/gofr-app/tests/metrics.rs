//! `/metrics` on its own listener: the WebSocket counters move as a client connects, sends,
//! fails and closes.

use gofr_app::{App, CloseFrame, Connection, Context, Error};
use ws_test::{DEFAULT_TIMEOUT as WAIT, HttpResponse, TestServer, eventually, http_get};

use crate::support::config;

async fn echo_or_fail(ctx: Context) -> Result<String, Error> {
    let text: String = ctx.bind()?;
    if text == "fail" {
        return Err(Error::bad_request("asked to fail"));
    }
    Ok(text)
}

async fn refuse_guests(conn: Connection) -> Result<(), CloseFrame> {
    match conn.query_param("guest") {
        Some(_) => Err(CloseFrame::new(4003, "no guests")?),
        None => Ok(()),
    }
}

/// The value of the sample `name{labels...}` (labels in any order), if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            let Some((series, _)) = line.rsplit_once(' ') else {
                return false;
            };
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
}

/// The app's `/metrics` text.
async fn scrape(server: &TestServer) -> String {
    let metrics = server.metrics_url().expect("an app serves /metrics");
    let HttpResponse { status, body, .. } = http_get(&metrics).await;
    assert_eq!(status, 200);
    body
}

/// Polls `/metrics` until `name{labels}` equals `expected`.
async fn until_metric(server: &TestServer, name: &str, labels: &[(&str, &str)], expected: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(server).await;
        let value = sample(&text, name, labels);
        if value == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {value:?}, expected {expected}\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_connections_messages_bytes_errors_refusals_and_closes() {
    // A route used only by this test: counters are process-wide.
    const ROUTE: &str = "/metered";
    let route = [("route", ROUTE)];
    let mut app = App::with_config(config());
    app.websocket_with(ROUTE, echo_or_fail, |endpoint| {
        endpoint.on_connect(refuse_guests)
    });
    let server = TestServer::app(app).await;

    let mut client = server.connect(ROUTE).await;
    until_metric(&server, "ws_connections_open", &route, 1.0).await;
    until_metric(&server, "ws_connections_total", &route, 1.0).await;

    for text in ["hello", "fail", "hey"] {
        client.send_text(text).await;
        client.recv_text().await;
    }
    until_metric(&server, "ws_messages_received_total", &route, 3.0).await;
    until_metric(&server, "ws_bytes_received_total", &route, 12.0).await;
    // "hello", the error frame and "hey".
    until_metric(&server, "ws_messages_sent_total", &route, 3.0).await;
    let error_frame = r#"{"error":{"message":"asked to fail"}}"#.len() as f64;
    until_metric(&server, "ws_bytes_sent_total", &route, 8.0 + error_frame).await;
    until_metric(
        &server,
        "ws_handler_errors_total",
        &[("route", ROUTE), ("kind", "error")],
        1.0,
    )
    .await;

    // A plain GET to the route is refused (426), a guest is refused by the hook (4003).
    let HttpResponse { status, .. } = http_get(&server.http_url(ROUTE)).await;
    assert_eq!(status, 426);
    until_metric(
        &server,
        "ws_upgrade_failures_total",
        &[("route", ROUTE), ("reason", "not_upgrade")],
        1.0,
    )
    .await;
    let mut guest = server.connect(&format!("{ROUTE}?guest=1")).await;
    assert_eq!(guest.expect_close(4003).await, "no guests");
    // Codes outside the known ones share one label (issue 12: bounded series).
    until_metric(
        &server,
        "ws_closes_total",
        &[("route", ROUTE), ("code", "other")],
        1.0,
    )
    .await;

    client.close(4000, "done").await;
    until_metric(
        &server,
        "ws_closes_total",
        &[("route", ROUTE), ("code", "other")],
        2.0,
    )
    .await;
    until_metric(&server, "ws_connections_open", &route, 0.0).await;
    until_metric(&server, "ws_connections_total", &route, 2.0).await;
    let text = scrape(&server).await;
    assert!(text.contains("# HELP ws_connections_open"), "{text}");

    server.shutdown().await;
}

async fn silent(_ctx: Context) -> Result<(), Error> {
    Ok(())
}

#[tokio::test]
async fn metrics_count_queue_full_events_and_slow_peer_disconnects() {
    const ROUTE: &str = "/metered-slow";
    let route = [("route", ROUTE)];
    let mut app = App::with_config(config());
    app.websocket_with(ROUTE, silent, |endpoint| {
        endpoint
            .queue_capacity(2)
            .send_timeout(std::time::Duration::from_millis(200))
    });
    let server = TestServer::app(app).await;
    let hub = server.hub();

    // Connected, then never read from: the socket buffers fill, then the queue.
    let _slow = server.connect(ROUTE).await;
    server.expect_connections(1).await;
    let payload = gofr_app::message::Bytes::from(vec![0u8; 256 * 1024]);
    let mut delivered = 1;
    for _ in 0..2000 {
        delivered = hub
            .broadcast(gofr_app::Message::Binary(payload.clone()))
            .await;
        if delivered == 0 {
            break;
        }
    }
    assert_eq!(delivered, 0, "the slow peer was never closed");
    // It leaves the hub once its close frame has had the grace period to get out.
    eventually("the slow peer is gone", || hub.is_empty()).await;

    until_metric(&server, "ws_slow_peer_disconnects_total", &route, 1.0).await;
    until_metric(
        &server,
        "ws_closes_total",
        &[("route", ROUTE), ("code", "1008")],
        1.0,
    )
    .await;
    let text = scrape(&server).await;
    let full = sample(&text, "ws_queue_full_total", &route).unwrap_or(0.0);
    assert!(full >= 1.0, "queue-full events: {full}\n{text}");

    server.shutdown().await;
}

/// Panics before making its future on "boom", in the closure's synchronous part.
fn sync_panic(ctx: Context) -> impl Future<Output = Result<String, Error>> {
    let text: Result<String, _> = ctx.bind();
    if text.as_deref().is_ok_and(|text| text == "boom") {
        panic!("handler exploded before its future");
    }
    async move { Ok(text?) }
}

/// Issue 12: no label takes a value the peer chose (a close code, an unmatched path), and a
/// panic in a handler's synchronous part is counted as a panic.
#[tokio::test]
async fn metric_labels_are_bounded_and_sync_panics_are_counted() {
    const ROUTE: &str = "/metered-labels";
    let mut app = App::with_config(config());
    app.websocket(ROUTE, sync_panic);
    let server = TestServer::app(app).await;
    // The recorder is installed once the app serves.
    scrape(&server).await;

    let mut client = server.connect(ROUTE).await;
    client.send_text("boom").await;
    client.expect_close(1011).await;
    until_metric(
        &server,
        "ws_handler_errors_total",
        &[("route", ROUTE), ("kind", "panic")],
        1.0,
    )
    .await;
    until_metric(
        &server,
        "ws_closes_total",
        &[("route", ROUTE), ("code", "1011")],
        1.0,
    )
    .await;

    // An endpoint served as a fallback matches no route pattern: every path is `unmatched`.
    let fallback = axum::Router::new().fallback_service(
        gofr_app::Endpoint::new(echo_or_fail)
            .into_route::<()>()
            .expect("valid endpoint options"),
    );
    let plain = TestServer::router(fallback).await;
    for (path, code) in [("/peer-chosen/a1", 4321u16), ("/peer-chosen/b2", 3999)] {
        plain.connect(path).await.close(code, "bye").await;
    }
    until_metric(
        &server,
        "ws_closes_total",
        &[("route", "unmatched"), ("code", "other")],
        2.0,
    )
    .await;
    let text = scrape(&server).await;
    for chosen in ["peer-chosen", "4321", "3999"] {
        assert!(!text.contains(chosen), "{chosen} became a label:\n{text}");
    }

    server.shutdown().await;
}
