//! Presence across instances: who is in a room, on every instance; members of an instance
//! that stops are left out within three heartbeats.

use std::time::{Duration, Instant};

use ws_backplane_redis::Settings;
use ws_context::ConnectionHub;

use crate::support::two_instances;

const HEARTBEAT: Duration = Duration::from_millis(100);

/// Waits (at most `wait`) until `hub`'s presence of `room` has `n` members; returns them
/// and how long it took.
async fn presence_of(
    hub: &ConnectionHub,
    room: &str,
    n: usize,
    wait: Duration,
) -> (Vec<String>, Duration) {
    let started = Instant::now();
    loop {
        let members: Vec<String> = hub
            .presence(room)
            .await
            .into_iter()
            .map(|member| member.id.to_string())
            .collect();
        if members.len() == n {
            return (members, started.elapsed());
        }
        assert!(
            started.elapsed() < wait,
            "presence of {room}: {} members, not {n}, after {wait:?}",
            members.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn presence_is_the_same_on_both_instances_and_drops_a_dead_ones_members() {
    let settings = Settings::builder().heartbeat(HEARTBEAT);
    let Some((_redis, a, b)) = two_instances(settings).await else {
        return;
    };
    let mut on_a = Vec::new();
    for _ in 0..3 {
        on_a.push(a.connect("p").await);
    }
    let mut on_b = Vec::new();
    for _ in 0..2 {
        on_b.push(b.connect("p").await);
    }
    let second = Duration::from_secs(1);
    let (seen_by_a, _) = presence_of(&a.hub, "p", 5, second).await;
    let (seen_by_b, _) = presence_of(&b.hub, "p", 5, second).await;
    assert_eq!(seen_by_a, seen_by_b, "the same members on both instances");

    // One leaves (its socket closes): gone on both within a second.
    let mut leaving = on_b.pop().unwrap();
    leaving.close(1000, "").await;
    drop(leaving);
    let (seen_by_a, _) = presence_of(&a.hub, "p", 4, second).await;
    let (seen_by_b, _) = presence_of(&b.hub, "p", 4, second).await;
    assert_eq!(seen_by_a, seen_by_b);

    // A stops heartbeating (as a killed process would): B lists only its own member
    // within three heartbeats (plus the time to notice).
    tokio::time::sleep(HEARTBEAT * 4).await;
    a.backplane.disconnect();
    let (left, took) = presence_of(&b.hub, "p", 1, Duration::from_secs(2)).await;
    assert!(took <= HEARTBEAT * 4, "dead members dropped after {took:?}");
    assert_eq!(left, [b.hub.room_members("p")[0].to_string()]);
    eprintln!(
        "presence: 5 members on 2 instances equal within 1 s; a dead instance's 3 dropped after {took:?} (heartbeat {HEARTBEAT:?})"
    );
}
