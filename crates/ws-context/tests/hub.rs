//! DESIGN.md point 8: the hub, rooms, lifecycle hooks and the connection limit.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use ws_context::{CloseFrame, Connection, ConnectionHub, Context, Endpoint};
use ws_test::{ConnectErrorKind, DEFAULT_TIMEOUT as WAIT, TestServer, eventually};

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    conn.hub().join(conn.id(), &room).await;
    Ok(())
}

/// Every message goes to the sender's room as "<sender id> <text>".
async fn to_room(ctx: Context) -> Result<(), anyhow::Error> {
    let text: String = ctx.bind()?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub()
        .send_to_room(
            room,
            ws_context::Message::text(format!("{} {text}", ctx.id())),
        )
        .await;
    Ok(())
}

async fn whoami(ctx: Context) -> Result<String, anyhow::Error> {
    Ok(ctx.id().to_string())
}

#[tokio::test]
async fn two_hundred_clients_in_four_rooms_get_exactly_their_rooms_messages_once() {
    const ROOMS: usize = 4;
    const PER_ROOM: usize = 50;
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(to_room)
        .hub(hub.clone())
        .on_connect(join_room);
    let router = axum::Router::new()
        .route(
            "/ws/{room}",
            endpoint.into_route().expect("valid endpoint options"),
        )
        .route(
            "/id",
            Endpoint::new(whoami)
                .hub(hub.clone())
                .into_route()
                .expect("valid endpoint options"),
        );
    let server = TestServer::router(router).await;

    let mut clients = Vec::new();
    for n in 0..ROOMS * PER_ROOM {
        let room = format!("room-{}", n % ROOMS);
        clients.push((room.clone(), server.connect(&format!("/ws/{room}")).await));
    }
    eventually("every client joined its room", || {
        hub.rooms().len() == ROOMS
            && (0..ROOMS).all(|r| hub.room_members(&format!("room-{r}")).len() == PER_ROOM)
    })
    .await;
    // Each member's id, by room, from the hub's own listing.
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for info in hub.list() {
        assert_eq!(&*info.route, "/ws/{room}");
        assert!(info.remote_addr.is_some());
        assert!(info.connected_at <= std::time::SystemTime::now());
        assert_eq!(info.protocol, None);
        assert_eq!(info.rooms.len(), 1);
        members
            .entry(info.rooms[0].to_string())
            .or_default()
            .push(info.id.to_string());
    }

    let (done_tx, mut done_rx) = mpsc::channel(ROOMS * PER_ROOM);
    for (n, (room, mut client)) in clients.into_iter().enumerate() {
        let done = done_tx.clone();
        tokio::spawn(async move {
            client.send_text(format!("m{n}")).await;
            let mut got = Vec::new();
            for _ in 0..PER_ROOM {
                got.push(client.recv_text().await);
            }
            done.send((room, got, client)).await.unwrap();
        });
    }
    let mut finished = Vec::new();
    for _ in 0..ROOMS * PER_ROOM {
        finished.push(
            tokio::time::timeout(WAIT * 4, done_rx.recv())
                .await
                .expect("a client did not get its room's messages")
                .unwrap(),
        );
    }
    for (room, got, _) in &finished {
        let mut senders: Vec<&str> = got.iter().map(|t| t.split(' ').next().unwrap()).collect();
        senders.sort_unstable();
        let mut expected: Vec<&str> = members[room].iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(
            senders, expected,
            "{room}: one message from each member, none from others"
        );
    }
    // Nothing else is on the way: the next frame each client sees is this broadcast.
    assert_eq!(
        hub.broadcast(ws_context::Message::text("end")).await,
        ROOMS * PER_ROOM
    );
    for (_, _, client) in &mut finished {
        assert_eq!(client.recv_text().await, "end");
    }
}

#[tokio::test]
async fn leaving_a_room_and_closing_take_the_connection_out_of_it() {
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(whoami).hub(hub.clone()).on_connect(join_room);
    let server = TestServer::endpoint("/ws/{room}", endpoint).await;
    let mut a = server.connect("/ws/blue").await;
    let mut b = server.connect("/ws/blue").await;
    eventually("both joined", || hub.room_members("blue").len() == 2).await;
    a.send_text("id?").await;
    let a_id = ws_context::ConnectionId::from(a.recv_text().await.as_str());

    assert!(hub.join(&a_id, "green").await);
    let mut rooms = hub.info(&a_id).unwrap().rooms;
    rooms.sort();
    assert_eq!(rooms, vec![Arc::from("blue"), Arc::from("green")]);
    assert!(hub.leave(&a_id, "blue"));
    assert!(!hub.leave(&a_id, "blue"), "not a member any more");
    assert_eq!(
        hub.send_to_room("blue", ws_context::Message::text("to blue"))
            .await
            .delivered,
        1
    );
    assert_eq!(b.recv_text().await, "to blue");

    a.close(1000, "").await;
    eventually("a left every room", || {
        hub.rooms() == vec![Arc::from("blue")]
    })
    .await;
    assert!(
        !hub.join(&a_id, "green").await,
        "a closed connection joins nothing"
    );
}

async fn gatekeeper(conn: Connection) -> Result<(), CloseFrame> {
    if conn.query_param("token").as_deref() == Some("ok") {
        conn.socket()
            .text("welcome")
            .await
            .map_err(|_| CloseFrame::internal("?"))?;
        Ok(())
    } else {
        Err(CloseFrame::new(4001, "missing token")?)
    }
}

#[tokio::test]
async fn hooks_accept_refuse_and_see_the_close_code_and_reason() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let endpoint = Endpoint::new(whoami).on_connect(gatekeeper).on_close(
        move |conn: Connection, close: CloseFrame| {
            let closed = closed_tx.clone();
            async move {
                let _ = closed.send((conn.id().clone(), close.code(), close.reason().to_owned()));
            }
        },
    );
    let server = TestServer::endpoint("/ws", endpoint).await;

    let mut refused = server.connect("/ws").await;
    refused.expect_close(4001).await;

    let mut client = server.connect("/ws?token=ok").await;
    assert_eq!(client.recv_text().await, "welcome");
    client.send_text("id?").await;
    let id = client.recv_text().await;
    client.close(4321, "bye now").await;
    let (closed_id, code, reason) = tokio::time::timeout(WAIT, closed_rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Only the accepted connection reaches the close hook.
    assert_eq!(closed_id.as_str(), id.as_str());
    assert_eq!((code, reason.as_str()), (4321, "bye now"));
    assert!(closed_rx.try_recv().is_err());
}

#[tokio::test]
async fn over_the_connection_limit_the_upgrade_gets_503_with_a_reason() {
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(whoami).hub(hub.clone()).max_connections(2);
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut first = server.connect("/ws").await;
    let _second = server.connect("/ws").await;

    let refused = server.client("/ws").expect_refused(503).await;
    assert!(
        refused.to_string().contains("too many connections"),
        "{refused}"
    );
    // A place frees up when a connection ends.
    first.close(1000, "").await;
    eventually("the first connection is gone", || hub.len() == 1).await;
    let _third = server.connect("/ws").await;
}

async fn ignore(_ctx: Context) -> Result<(), anyhow::Error> {
    Ok(())
}

#[tokio::test]
async fn a_slow_peer_is_closed_with_1008_and_the_others_get_every_message() {
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore)
        .hub(hub.clone())
        .queue_capacity(4)
        .send_timeout(Duration::from_millis(300));
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut slow = server.connect("/ws").await;
    let fast = server.connect("/ws").await;
    eventually("both connected", || hub.len() == 2).await;

    const MESSAGES: usize = 400;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        for n in 0..MESSAGES {
            let message = fast.recv_binary().await;
            assert_eq!(message.len(), 64 * 1024);
            assert_eq!(message[0], n as u8, "in order, none missing");
        }
    });
    // 25 MiB: far more than the socket buffers and the slow peer's queue hold.
    let payload = vec![0u8; 64 * 1024];
    for n in 0..MESSAGES {
        let mut payload = payload.clone();
        payload[0] = n as u8;
        let _ = hub.broadcast(ws_context::Message::binary(payload)).await;
    }
    tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
    // The slow peer still gets what was already on its way, then the close.
    let close = slow.recv_until_close().await;
    assert_eq!(
        close.map(|frame| frame.code()),
        Some(ws_context::SLOW_PEER_CLOSE_CODE)
    );
    eventually("the slow peer is gone", || hub.len() == 1).await;
}

async fn echo_text(ctx: Context) -> Result<String, anyhow::Error> {
    Ok(ctx.bind()?)
}

#[tokio::test]
async fn after_shutdown_new_upgrades_get_503_and_one_already_answered_gets_the_frame() {
    // An upgrade answered before the shutdown but registered after it (here a middleware
    // holds its 101 for 300 ms) must get the same 1001 as the others; an upgrade asked for
    // after the shutdown is refused with 503 and Retry-After.
    async fn hold_the_101(
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let held = request.headers().contains_key("x-hold");
        let response = next.run(request).await;
        if held {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        response
    }
    let hub = ConnectionHub::new();
    let router = axum::Router::new()
        .route(
            "/ws",
            Endpoint::new(echo_text)
                .hub(hub.clone())
                .into_route()
                .expect("valid endpoint options"),
        )
        .layer(axum::middleware::from_fn(hold_the_101));
    let server = TestServer::router(router).await;
    let mut before = server.connect("/ws").await;
    eventually("the first connection registers", || hub.len() == 1).await;
    let held = tokio::spawn(server.client("/ws").header("x-hold", "1").connect());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        hub.shutdown(CloseFrame::going_away("server shutting down")),
        1
    );
    before.expect_close(1001).await;
    let mut held = held.await.unwrap();
    held.expect_close(1001).await;
    let refusal = server.client("/ws").expect_refused(503).await;
    let ConnectErrorKind::Refused { headers, .. } = refusal.kind() else {
        unreachable!("expect_refused returns refusals");
    };
    assert!(headers.contains(&("retry-after".to_owned(), "5".to_owned())));
    // close_all, unlike shutdown, leaves later connections alone.
    let other = ConnectionHub::new();
    let router = axum::Router::new().route(
        "/ws",
        Endpoint::new(echo_text)
            .hub(other.clone())
            .into_route()
            .expect("valid endpoint options"),
    );
    let server = TestServer::router(router).await;
    other.close_all(CloseFrame::going_away("bye"));
    let mut later = server.connect("/ws").await;
    later.send_text("still open").await;
    assert_eq!(later.recv_text().await, "still open");
}

/// Issue 12: the outbound queue is bounded in bytes as well as in messages. A peer that never
/// reads, written large messages, stops taking them near the byte bound (plus what the socket
/// buffers hold), long before the bound in messages, then is closed with 1008.
#[tokio::test]
async fn large_messages_to_a_peer_that_never_reads_stop_at_the_byte_bound() {
    const MESSAGE: usize = 256 * 1024;
    let hub = ConnectionHub::new();
    let endpoint = Endpoint::new(ignore)
        .hub(hub.clone())
        .queue_capacity(1024)
        .queue_bytes(1024 * 1024)
        .send_timeout(Duration::from_millis(300));
    let server = TestServer::endpoint("/ws", endpoint).await;
    let mut slow = server.connect("/ws").await;
    eventually("connected", || hub.len() == 1).await;
    let id = hub.list()[0].id.clone();

    let payload = ws_context::Bytes::from(vec![7u8; MESSAGE]);
    let mut accepted = 0usize;
    while accepted < 1024 {
        match hub
            .send_to(&id, ws_context::Message::Binary(payload.clone()))
            .await
        {
            Ok(()) => accepted += 1,
            Err(_) => break,
        }
    }
    // 1 MiB in the queue, plus the kernel's socket buffers and the engine's write buffer
    // (a few MiB on loopback); a bound in messages alone took all 1024 (256 MiB).
    assert!(
        accepted * MESSAGE <= 24 * 1024 * 1024,
        "{accepted} messages of 256 KiB were taken"
    );
    let close = slow.recv_until_close().await;
    assert_eq!(
        close.map(|frame| frame.code()),
        Some(ws_context::SLOW_PEER_CLOSE_CODE)
    );
    eventually("the slow peer is gone", || hub.is_empty()).await;
}
