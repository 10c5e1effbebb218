//! Presence across instances: who is in a room, on every instance; members of an instance
//! that stops are left out within three heartbeats; join and leave events per presence key,
//! with the leave delay, on every instance.

use std::time::{Duration, Instant};

use test_support::RedisServer;
use ws_backplane_redis::Settings;
use ws_context::{ConnectionHub, PresenceEventKind};
use ws_test::{DEFAULT_TIMEOUT as WAIT, eventually_within};

use crate::support::{Instance, two_instances};

const HEARTBEAT: Duration = Duration::from_millis(100);
/// For tests that count no instance out: long enough that a busy machine does not make
/// three heartbeats late (which counts an instance out and reports its members as left).
const STEADY: Duration = Duration::from_millis(500);

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

/// Presence events as `(room, key, joined)`.
type Seen = (String, String, bool);

/// Collects `hub`'s presence events in the background, to read with [`events_until`].
fn record(hub: &ConnectionHub) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let mut events = hub.presence_events();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let joined = event.kind == PresenceEventKind::Joined;
            if tx
                .send((event.room.to_string(), event.key.to_string(), joined))
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Waits (at most `wait`) until `n` events arrived, then returns them sorted.
async fn events_until(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    n: usize,
    wait: Duration,
) -> Vec<Seen> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => seen.push(event),
            _ => panic!(
                "{} presence events, not {n}, within {wait:?}: {seen:?}",
                seen.len()
            ),
        }
    }
    seen.sort();
    seen
}

/// Whether no event arrives within `wait`.
async fn quiet(events: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>, wait: Duration) -> bool {
    match tokio::time::timeout(wait, events.recv()).await {
        Err(_) => true,
        Ok(event) => {
            eprintln!("unexpected presence event {event:?}");
            false
        }
    }
}

fn seen(room: &str, key: &str, joined: bool) -> Seen {
    (room.to_owned(), key.to_owned(), joined)
}

/// Two instances with `STEADY` heartbeats and the leave delay `delay`, each with its events
/// recorded, once each has heard the other (before anyone joins).
async fn steady_pair(
    redis: &RedisServer,
    delay: Duration,
) -> (
    Instance,
    Instance,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
) {
    let a = Instance::start_with(&redis.url(), Settings::builder().heartbeat(STEADY)).await;
    let b = Instance::start_with(&redis.url(), Settings::builder().heartbeat(STEADY)).await;
    for instance in [&a, &b] {
        instance.hub.set_presence_leave_delay(delay);
    }
    let (on_a, on_b) = (record(&a.hub), record(&b.hub));
    eventually_within(WAIT, "both instances alive", || {
        a.hub.nodes().len() == 2 && b.hub.nodes().len() == 2
    })
    .await;
    (a, b, on_a, on_b)
}

#[tokio::test]
async fn join_and_leave_events_reach_both_instances_once_per_key_after_the_leave_delay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let delay = Duration::from_millis(600);
    let (a, b, mut on_a, mut on_b) = steady_pair(&redis, delay).await;

    // ann on A, bob on B, and ann again on B (a second tab): two joins, on both.
    let ann = a.connect("p?name=ann").await;
    let bob = b.connect("p?name=bob").await;
    let ann_too = b.connect("p?name=ann").await;
    let joins = vec![seen("p", "ann", true), seen("p", "bob", true)];
    let second = Duration::from_secs(1);
    assert_eq!(events_until(&mut on_a, 2, second).await, joins);
    assert_eq!(events_until(&mut on_b, 2, second).await, joins);

    // ann's tab on A closes: ann is still there (on B), so nothing happens.
    drop(ann);
    assert!(quiet(&mut on_a, delay * 2).await);
    assert!(quiet(&mut on_b, Duration::ZERO).await);

    // bob drops and comes back on the other instance within the delay: no leave/join pair.
    drop(bob);
    tokio::time::sleep(delay / 3).await;
    let bob = a.connect("p?name=bob").await;
    assert!(quiet(&mut on_a, delay * 2).await);
    assert!(quiet(&mut on_b, Duration::ZERO).await);

    // bob drops for longer than the delay: he leaves, then joins again, on both.
    let started = Instant::now();
    drop(bob);
    let left = vec![seen("p", "bob", false)];
    assert_eq!(events_until(&mut on_a, 1, delay * 3).await, left);
    assert_eq!(events_until(&mut on_b, 1, second).await, left);
    assert!(
        started.elapsed() >= delay,
        "left after {:?}",
        started.elapsed()
    );
    let _bob = b.connect("p?name=bob").await;
    let joined = vec![seen("p", "bob", true)];
    assert_eq!(events_until(&mut on_a, 1, second).await, joined);
    assert_eq!(events_until(&mut on_b, 1, second).await, joined);
    drop(ann_too);
}

#[tokio::test]
async fn a_dead_instances_members_leave_on_the_survivor_within_three_heartbeats() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = Instance::start_with(&redis.url(), Settings::builder().heartbeat(HEARTBEAT)).await;
    let b = Instance::start_with(&redis.url(), Settings::builder().heartbeat(HEARTBEAT)).await;
    // Longer than three heartbeats: a dead instance's members must not wait for it.
    b.hub.set_presence_leave_delay(Duration::from_secs(30));
    let mut on_b = record(&b.hub);
    eventually_within(Duration::from_secs(2), "both instances alive", || {
        a.hub.nodes().len() == 2 && b.hub.nodes().len() == 2
    })
    .await;
    let _carl = a.connect("q?name=carl").await;
    let _dora = a.connect("r?name=dora").await;
    let _eve = b.connect("q?name=eve").await;
    let joins = events_until(&mut on_b, 3, Duration::from_secs(1)).await;
    assert_eq!(
        joins,
        [
            seen("q", "carl", true),
            seen("q", "eve", true),
            seen("r", "dora", true)
        ]
    );
    // B must have been up for three heartbeats before it counts anyone out.
    tokio::time::sleep(HEARTBEAT * 4).await;
    let stopped = Instant::now();
    a.backplane.disconnect();
    let left = events_until(&mut on_b, 2, Duration::from_secs(2)).await;
    let took = stopped.elapsed();
    assert_eq!(left, [seen("q", "carl", false), seen("r", "dora", false)]);
    assert!(took <= HEARTBEAT * 4, "left after {took:?}");
    assert!(quiet(&mut on_b, HEARTBEAT * 3).await, "eve stays");
    eprintln!(
        "presence: a dead instance's 2 members left on the survivor after {took:?} (heartbeat {HEARTBEAT:?})"
    );
}

#[tokio::test]
async fn an_instance_started_later_learns_who_is_there() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = Instance::start_with(&redis.url(), Settings::builder().heartbeat(STEADY)).await;
    let _ann = a.connect("p?name=ann").await;
    eventually_within(WAIT, "ann joined", || a.hub.room_members("p").len() == 1).await;
    let b = Instance::start_with(&redis.url(), Settings::builder().heartbeat(STEADY)).await;
    let mut on_b = record(&b.hub);
    assert_eq!(
        events_until(&mut on_b, 1, WAIT).await,
        [seen("p", "ann", true)]
    );
}

#[tokio::test]
async fn changes_missed_while_redis_was_away_are_caught_up_when_it_is_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let delay = Duration::from_millis(300);
    let (a, b, mut on_a, mut on_b) = steady_pair(&redis, delay).await;
    let ann = a.connect("p?name=ann").await;
    let bob = b.connect("p?name=bob").await;
    let joins = vec![seen("p", "ann", true), seen("p", "bob", true)];
    assert_eq!(
        events_until(&mut on_a, 2, Duration::from_secs(1)).await,
        joins
    );
    assert_eq!(
        events_until(&mut on_b, 2, Duration::from_secs(1)).await,
        joins
    );

    // Redis goes away; meanwhile ann leaves A, carl joins A and bob leaves B: none of it
    // reaches the other instance now.
    redis.kill();
    eventually_within(WAIT, "both see Redis down", || {
        a.hub.backplane_status() == ws_context::BackplaneStatus::Down
            && b.hub.backplane_status() == ws_context::BackplaneStatus::Down
    })
    .await;
    drop(ann);
    let _carl = a.connect("p?name=carl").await;
    drop(bob);
    // Each instance reports its own members' changes at once (and the leaves after the delay).
    let own_a = vec![seen("p", "ann", false), seen("p", "carl", true)];
    assert_eq!(events_until(&mut on_a, 2, delay * 4).await, own_a);
    assert_eq!(
        events_until(&mut on_b, 1, delay * 4).await,
        [seen("p", "bob", false)]
    );

    // Back: every hub lists its members again, and each learns what it missed.
    redis.restart();
    let back = Duration::from_secs(5);
    assert_eq!(
        events_until(&mut on_a, 1, back).await,
        [seen("p", "bob", false)]
    );
    assert_eq!(
        events_until(&mut on_b, 2, back).await,
        [seen("p", "ann", false), seen("p", "carl", true)]
    );
    assert!(quiet(&mut on_a, STEADY * 2).await);
    assert!(quiet(&mut on_b, Duration::ZERO).await);
}
