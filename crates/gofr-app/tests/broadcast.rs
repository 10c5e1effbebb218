//! An HTTP route pushes one message to 1000 WebSocket connections through the app's hub.

use gofr_app::{App, Context, Error, HttpContext, Message};
use ws_test::{HttpResponse, TestServer, http_post_text};

use crate::support::config;

const CONNECTIONS: usize = 1000;

async fn ignore(_ctx: Context) -> Result<(), Error> {
    Ok(())
}

async fn announce(ctx: HttpContext) -> Result<usize, Error> {
    let text: String = ctx.bind()?;
    Ok(ctx.hub().broadcast(Message::text(text)).await)
}

/// Client and server sockets of this process, plus the runtime's: about 2000 descriptors,
/// over the common soft limit of 1024. Raises the soft limit up to the hard limit, and fails
/// with the numbers if even that is not enough.
fn ensure_open_files(needed: u64) {
    let raised = rlimit::increase_nofile_limit(needed).expect("cannot read the open-files limit");
    assert!(
        raised >= needed,
        "this test needs {needed} open files; the hard limit allows {raised} (raise it with ulimit -Hn)"
    );
}

#[tokio::test]
async fn an_http_route_broadcasts_to_a_thousand_connections() {
    ensure_open_files(2 * CONNECTIONS as u64 + 256);
    let mut app = App::with_config(config());
    app.websocket("/ws", ignore);
    app.post("/announce", announce);
    let server = TestServer::app(app).await;

    // Connect in batches of 50 so the accept queue never overflows.
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 50 {
        let batch = (0..50).map(|_| server.connect("/ws"));
        clients.extend(futures_util::future::join_all(batch).await);
    }
    server.expect_connections(CONNECTIONS).await;

    let HttpResponse { status, body, .. } =
        http_post_text(&server.http_url("/announce"), "deploy finished").await;
    assert_eq!(
        (status, body),
        (201, format!(r#"{{"data":{CONNECTIONS}}}"#))
    );

    let reads = clients.iter_mut().map(|client| client.recv_text());
    let received = futures_util::future::join_all(reads).await;
    assert_eq!(received.len(), CONNECTIONS);
    assert!(received.iter().all(|text| text == "deploy finished"));
    server.shutdown().await;
}
