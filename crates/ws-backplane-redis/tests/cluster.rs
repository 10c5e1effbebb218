//! Two instances (two hubs, each with its own backplane and server) linked by a real Redis.

use std::time::Duration;

use ws_backplane_redis::{RedisBackplane, RedisBackplaneError, Settings};
use ws_context::{Backplane as _, BackplaneStatus, CloseFrame, ConnectionHub, ConnectionId};
use ws_test::{DEFAULT_TIMEOUT, eventually, eventually_within};

use crate::support::two_instances;

const HEARTBEAT: Duration = Duration::from_millis(100);

/// The id of the only member of `room` on `hub`.
async fn only_member(hub: &ConnectionHub, room: &str) -> ConnectionId {
    eventually("the member joined", || hub.room_members(room).len() == 1).await;
    hub.room_members(room).remove(0)
}

#[tokio::test]
async fn rooms_broadcasts_send_to_id_and_close_reach_the_other_instance() {
    let settings = Settings::builder().heartbeat(HEARTBEAT);
    let Some((_redis, a, b)) = two_instances(settings).await else {
        return;
    };
    assert_eq!(a.hub.backplane_status(), BackplaneStatus::Up);

    let mut on_a = a.connect("red").await;
    let mut on_b = b.connect("red").await;
    let mut blue_on_b = b.connect("blue").await;
    only_member(&a.hub, "red").await;
    let red_b = only_member(&b.hub, "red").await;
    only_member(&b.hub, "blue").await;

    // A room message from A reaches B's member once; B's blue member gets nothing.
    on_a.send_text("hi red").await;
    assert_eq!(on_a.recv_text().await, "hi red");
    assert_eq!(on_b.recv_text().await, "hi red");
    // In each sender's order, both ways.
    for i in 0..20 {
        on_b.send_text(format!("b{i}")).await;
    }
    for i in 0..20 {
        assert_eq!(on_a.recv_text().await, format!("b{i}"));
        assert_eq!(on_b.recv_text().await, format!("b{i}"));
    }

    // A broadcast from A reaches every connection on B.
    a.hub.broadcast(ws_context::Message::text("everyone")).await;
    assert_eq!(on_b.recv_text().await, "everyone");
    assert_eq!(blue_on_b.recv_text().await, "everyone");
    assert_eq!(on_a.recv_text().await, "everyone");

    // Send-to-id and close-with-code from A reach a connection that lives on B.
    a.hub
        .send_to(&red_b, ws_context::Message::text("just you"))
        .await
        .unwrap();
    assert_eq!(on_b.recv_text().await, "just you");
    assert!(a.hub.close(&red_b, CloseFrame::new(4001, "moved").unwrap()));
    on_b.expect_close(4001).await;
    // Nothing leaked to the others.
    blue_on_b
        .expect_nothing_for(Duration::from_millis(200))
        .await;
    on_a.expect_nothing_for(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_room_with_members_on_one_instance_stays_off_the_other() {
    let settings = Settings::builder().heartbeat(HEARTBEAT);
    let Some((redis, a, b)) = two_instances(settings).await else {
        return;
    };
    let channel = a.backplane.room_channel("solo");

    let mut first = a.connect("solo").await;
    let mut second = a.connect("solo").await;
    eventually("both joined", || a.hub.room_members("solo").len() == 2).await;
    // Only A listens to the room's channel: Redis sends B none of its traffic.
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMSUB", &channel]),
        format!("{channel}\n1")
    );
    first.send_text("local").await;
    assert_eq!(second.recv_text().await, "local");
    assert!(b.hub.rooms().is_empty());

    // After the last local member leaves, A unsubscribes too.
    first.close(1000, "").await;
    second.close(1000, "").await;
    let deadline = std::time::Instant::now() + DEFAULT_TIMEOUT;
    while redis.cli(&["PUBSUB", "NUMSUB", &channel]) != format!("{channel}\n0") {
        assert!(std::time::Instant::now() < deadline, "A kept the channel");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_local_delivery_goes_on_and_cross_resumes() {
    let Some((mut redis, a, b)) = two_instances(Settings::builder().heartbeat(HEARTBEAT)).await
    else {
        return;
    };
    let mut sender = a.connect("r").await;
    let mut local = a.connect("r").await;
    let mut remote = b.connect("r").await;
    eventually("joined", || {
        a.hub.room_members("r").len() == 2 && b.hub.room_members("r").len() == 1
    })
    .await;

    redis.kill();
    eventually("A noticed", || {
        a.hub.backplane_status() == BackplaneStatus::Down
    })
    .await;
    // Local members are still served while Redis is away.
    for i in 0..5 {
        sender.send_text(format!("down{i}")).await;
        assert_eq!(local.recv_text().await, format!("down{i}"));
        assert_eq!(sender.recv_text().await, format!("down{i}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    redis.restart();
    let answered = std::time::Instant::now();
    eventually_within(Duration::from_secs(3), "both back", || {
        a.hub.backplane_status() == BackplaneStatus::Up
            && b.hub.backplane_status() == BackplaneStatus::Up
    })
    .await;
    sender.send_text("back").await;
    // Lost messages are lost (at most once): the first thing B's member sees is "back".
    assert_eq!(remote.recv_text().await, "back");
    assert!(
        answered.elapsed() < Duration::from_secs(3),
        "{:?}",
        answered.elapsed()
    );
    assert_eq!(local.recv_text().await, "back");
    // ... and only once.
    remote.expect_nothing_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_dead_instance_is_dropped_after_three_missed_heartbeats() {
    let settings = Settings::builder().heartbeat(HEARTBEAT);
    let Some((_redis, a, b)) = two_instances(settings).await else {
        return;
    };
    eventually("A sees both", || a.hub.nodes().len() == 2).await;
    assert!(a.hub.nodes().iter().any(|n| **n == *b.hub.origin()));

    b.backplane.disconnect();
    let stopped = std::time::Instant::now();
    eventually("A dropped B", || a.hub.nodes().len() == 1).await;
    // Three heartbeats, plus one for the heartbeat in flight and timer slack.
    assert!(
        stopped.elapsed() <= HEARTBEAT * 4 + Duration::from_millis(100),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(*a.hub.nodes()[0], *a.hub.origin());
}

#[tokio::test]
async fn connect_errors_are_specific() {
    let unattached = RedisBackplane::new();
    assert!(matches!(
        unattached.connect("redis://127.0.0.1:1/").await,
        Err(RedisBackplaneError::NotAttached)
    ));

    let backplane = RedisBackplane::new();
    let _hub = ConnectionHub::with_backplane(backplane.clone());
    let error = backplane.connect("http://nope").await.unwrap_err();
    assert!(matches!(error, RedisBackplaneError::Url { .. }), "{error}");
    // Nothing listens on this port: a clear error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let error = backplane
        .connect(&format!("redis://:pw@127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, RedisBackplaneError::Connect { .. }),
        "{text}"
    );
    assert!(!text.contains("pw"), "{text}");
    // Not connected, it is the in-process default.
    assert_eq!(backplane.status(), BackplaneStatus::Standalone);
}
