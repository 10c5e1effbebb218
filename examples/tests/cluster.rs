//! `examples/chat` in cluster mode: two chat processes on one real `redis-server`, all on
//! 127.0.0.1, driven by real WebSocket clients.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use test_support::{RedisCluster, RedisServer};
use ws_test::{AppProcess, DEFAULT_TIMEOUT as WAIT, WsClient, http_get};

use crate::{chat::chat_json, chat_line};

/// Two chat instances on one Redis (which the fields' order stops first).
struct Cluster {
    redis: RedisServer,
    a: AppProcess,
    b: AppProcess,
}

/// The live hubs an instance's health lists.
fn nodes(health: &serde_json::Value) -> usize {
    health["cluster"]["nodes"].as_array().map_or(0, Vec::len)
}

/// None when Redis is not installed (outside CI, see `RedisServer::start`).
fn cluster() -> Option<Cluster> {
    cluster_with(&[])
}

/// [`cluster`] with more environment variables for both instances.
fn cluster_with(extra: &[(&str, &str)]) -> Option<Cluster> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    // Two instances of one app share APP_NAME, which names their Redis channels.
    let mut env = vec![("REDIS_URL", url.as_str()), ("APP_NAME", "chat")];
    env.extend_from_slice(extra);
    let a = AppProcess::example("chat", &env);
    let b = AppProcess::example("chat", &env);
    Some(Cluster { redis, a, b })
}

/// Joins a room and learns its connection id with `/me`. The answer comes after the join
/// (and its Redis subscription) completed, so from then on the client is a member.
async fn join(server: &AppProcess, room: &str) -> (WsClient, String) {
    let mut client = server.connect(&format!("/ws/{room}")).await;
    client.send_text("/me").await;
    let me = chat_line(&mut client).await;
    assert_eq!(me["from"], "server", "{me}");
    let id = me["text"].as_str().unwrap().to_owned();
    (client, id)
}

async fn health(server: &AppProcess) -> serde_json::Value {
    let health = http_get(&server.http_url("/.well-known/health")).await;
    assert_eq!(health.status, 200, "{health}");
    health.json::<serde_json::Value>()["data"].clone()
}

/// Polls the health endpoint, bounded, until `check` holds; returns how long it took.
async fn health_until(
    server: &AppProcess,
    wait: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let health = health(server).await;
        if check(&health) {
            return start.elapsed();
        }
        assert!(start.elapsed() < wait, "waited for {what}: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unlabelled counter or gauge from the instance's `/metrics` (0 when not recorded yet).
async fn metric(server: &AppProcess, name: &str) -> f64 {
    let text = http_get(&server.metrics_url().expect("metrics address"))
        .await
        .body;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The text of the next chat line.
async fn said(client: &mut WsClient) -> String {
    chat_line(client).await["text"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_on_two_instances_get_every_room_message_once_in_order() {
    const CLIENTS: usize = 1000;
    const ROOMS: usize = 10;
    const PER_SENDER: usize = 5;
    // Our 1,000 sockets, plus slack for the test binary's other tests.
    rlimit::increase_nofile_limit(4096).expect("cannot raise the open-files limit");
    let Some(cluster) = cluster() else {
        return;
    };
    // Client i is on instance i % 2, in room (i / 2) % 10: 50 members of each room on each.
    let room_of = |i: usize| (i / 2) % ROOMS;
    let mut clients = Vec::with_capacity(CLIENTS);
    for batch in (0..CLIENTS).collect::<Vec<_>>().chunks(100) {
        let joins = batch.iter().map(|&i| {
            let server = if i % 2 == 0 { &cluster.a } else { &cluster.b };
            let room = format!("room{}", room_of(i));
            async move { join(server, &room).await }
        });
        clients.extend(futures_util::future::join_all(joins).await);
    }

    // Two senders per room, one on each instance (clients 2r and 2r + 1), 5 messages each.
    for (i, (client, _)) in clients.iter_mut().enumerate().take(2 * ROOMS) {
        for n in 0..PER_SENDER {
            let text = format!("{}|{i}|{n}", room_of(i));
            client.send_text(text).await;
        }
    }
    // Every client reads until it has a room's worth, then a little longer for extras.
    let readers = clients.into_iter().map(|(mut client, _)| {
        tokio::spawn(async move {
            let mut lines = Vec::new();
            while lines.len() < 2 * PER_SENDER {
                match tokio::time::timeout(WAIT, chat_line(&mut client)).await {
                    Ok(line) => lines.push(line["text"].as_str().unwrap_or("").to_owned()),
                    Err(_) => break,
                }
            }
            while let Ok(line) =
                tokio::time::timeout(Duration::from_millis(300), chat_line(&mut client)).await
            {
                lines.push(line["text"].as_str().unwrap_or("").to_owned());
            }
            lines
        })
    });
    let results = futures_util::future::join_all(readers).await;

    let (mut missing, mut duplicates, mut foreign, mut out_of_order) = (0, 0, 0, 0);
    for (i, lines) in results.into_iter().enumerate() {
        let mut next_from: HashMap<usize, usize> = HashMap::new();
        let mut received = 0;
        for text in lines.unwrap() {
            let parts: Vec<usize> = text.split('|').filter_map(|p| p.parse().ok()).collect();
            let [room, sender, n] = parts[..] else {
                panic!("unexpected line {text:?}");
            };
            if room != room_of(i) {
                foreign += 1;
                continue;
            }
            let next = next_from.entry(sender).or_insert(0);
            if n < *next {
                duplicates += 1;
            } else {
                if n > *next {
                    out_of_order += 1;
                }
                *next = n + 1;
                received += 1;
            }
        }
        missing += 2 * PER_SENDER - received.min(2 * PER_SENDER);
    }
    assert_eq!(
        (missing, duplicates, foreign, out_of_order),
        (0, 0, 0, 0),
        "missing, duplicates, foreign, out of order"
    );
    // Half of what each member got came from the other instance.
    assert!(metric(&cluster.a, "backplane_messages_received_total").await >= 50.0);
    assert!(metric(&cluster.b, "backplane_messages_received_total").await >= 50.0);
    assert!(metric(&cluster.b, "backplane_delivery_latency_seconds_count").await >= 50.0);
    assert!(metric(&cluster.a, "backplane_messages_published_total").await >= 50.0);
}

#[tokio::test]
async fn direct_message_and_kick_reach_a_connection_on_the_other_instance() {
    let Some(cluster) = cluster() else {
        return;
    };
    let (mut on_b, b_id) = join(&cluster.b, "x").await;
    let (mut on_a, a_id) = join(&cluster.a, "y").await;

    on_a.send_text(format!("/dm {b_id} psst")).await;
    let line = chat_line(&mut on_b).await;
    assert_eq!(
        (line["from"].as_str(), line["text"].as_str()),
        (Some(&*a_id), Some("psst"))
    );

    on_a.send_text(format!("/kick {b_id}")).await;
    assert_eq!(on_b.expect_close(4000).await, format!("removed by {a_id}"));
}

#[tokio::test]
async fn a_room_with_members_on_one_instance_sends_nothing_to_the_other() {
    let Some(cluster) = cluster() else {
        return;
    };
    let (mut first, _) = join(&cluster.a, "solo").await;
    let (mut second, _) = join(&cluster.a, "solo").await;
    // Only A subscribed to the room's channel, so Redis has nobody else to send it to. The
    // channel is prefixed with the app's name.
    assert_eq!(
        cluster.redis.cli(&["PUBSUB", "NUMSUB", "{chat:solo}:room"]),
        "{chat:solo}:room\n1"
    );
    let before = metric(&cluster.b, "backplane_messages_received_total").await;
    for n in 0..20 {
        first.send_text(format!("m{n}")).await;
    }
    for n in 0..20 {
        assert_eq!(said(&mut second).await, format!("m{n}"));
        assert_eq!(said(&mut first).await, format!("m{n}"));
    }
    assert_eq!(
        metric(&cluster.b, "backplane_messages_received_total").await,
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_two_seconds_later() {
    let Some(mut cluster) = cluster() else {
        return;
    };
    let (mut sender, _) = join(&cluster.a, "r").await;
    let (mut local, _) = join(&cluster.a, "r").await;
    let (mut remote, _) = join(&cluster.b, "r").await;
    // The sender is a member too, on the same instance as `local`: it reads its own line
    // back after each send, Redis or not.
    let mut say = async |n: u32| {
        sender.send_text(n.to_string()).await;
        assert_eq!(said(&mut sender).await, n.to_string());
    };
    let mut n = 0;
    let mut local_got = Vec::new();
    let mut remote_got = Vec::new();

    // Before: everyone gets everything.
    for _ in 0..10 {
        say(n).await;
        n += 1;
    }
    for _ in 0..10 {
        local_got.push(said(&mut local).await);
        remote_got.push(said(&mut remote).await);
    }

    cluster.redis.kill();
    let killed = Instant::now();
    for app in [&cluster.a, &cluster.b] {
        health_until(app, WAIT, "DEGRADED", |h| h["status"] == "DEGRADED").await;
    }
    // While Redis is away, members on the same instance still get every message.
    for _ in 0..10 {
        say(n).await;
        n += 1;
        local_got.push(said(&mut local).await);
    }
    let now = Instant::now();
    if let Some(rest) = (killed + Duration::from_secs(2)).checked_duration_since(now) {
        tokio::time::sleep(rest).await;
    }

    cluster.redis.restart();
    let answered = Instant::now();
    // Cross-instance delivery is back within 3 s of Redis answering.
    loop {
        say(n).await;
        n += 1;
        local_got.push(said(&mut local).await);
        if let Ok(line) =
            tokio::time::timeout(Duration::from_millis(50), chat_line(&mut remote)).await
        {
            remote_got.push(line["text"].as_str().unwrap().to_owned());
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(3),
            "no cross-instance delivery 3 s after Redis answered"
        );
    }
    let resumed_after = answered.elapsed();
    for app in [&cluster.a, &cluster.b] {
        health_until(app, WAIT, "UP again", |h| {
            h["status"] == "UP" && h["cluster"]["status"] == "UP"
        })
        .await;
    }
    // One more message, to flush anything still on its way, then count.
    say(n).await;
    n += 1;
    local_got.push(said(&mut local).await);
    while let Ok(line) =
        tokio::time::timeout(Duration::from_millis(300), chat_line(&mut remote)).await
    {
        remote_got.push(line["text"].as_str().unwrap().to_owned());
    }

    let numbers = |got: &[String]| {
        got.iter()
            .map(|t| t.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        numbers(&local_got),
        (0..n).collect::<Vec<_>>(),
        "same-instance delivery"
    );
    let remote_numbers = numbers(&remote_got);
    assert!(
        remote_numbers.windows(2).all(|w| w[0] < w[1]),
        "duplicates or disorder across instances: {remote_numbers:?}"
    );
    assert_eq!(remote_numbers[..10], (0..10).collect::<Vec<_>>());
    assert_eq!(remote_numbers.last(), Some(&(n - 1)));
    assert!(metric(&cluster.b, "backplane_gaps_total").await >= 1.0);
    assert!(metric(&cluster.a, "backplane_reconnects_total").await >= 1.0);
    assert!(metric(&cluster.b, "backplane_reconnects_total").await >= 1.0);
    assert!(metric(&cluster.a, "backplane_publish_errors_total").await >= 1.0);
    eprintln!("cross-instance delivery resumed {resumed_after:?} after Redis answered");
}

#[tokio::test]
async fn a_killed_instance_leaves_the_live_nodes_within_three_heartbeats() {
    let Some(cluster) = cluster() else {
        return;
    };
    let Cluster {
        redis: _redis,
        a,
        b,
    } = cluster;
    health_until(&a, WAIT, "two nodes", |h| nodes(h) == 2).await;
    drop(b);
    // Three heartbeats of 2 s, counted from the last one B sent (at most 2 s before the kill).
    let took = health_until(&a, Duration::from_secs(8), "B dropped", |h| nodes(h) == 1).await;
    assert!(took <= Duration::from_millis(6_500), "{took:?}");
    assert_eq!(health(&a).await["status"], "UP");
}

#[test]
fn an_unreachable_redis_stops_the_app_with_a_clear_message() {
    let url = format!("redis://127.0.0.1:{}/", test_support::free_port());
    let output = std::process::Command::new(ws_test::example_path("chat"))
        .env("REDIS_URL", &url)
        .env("HTTP_PORT", "0")
        .env("METRICS_PORT", "0")
        .output()
        .expect("example runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot join the cluster") && stderr.contains(&url),
        "{stderr}"
    );
}

/// `/who` lists the room's members on both instances, by name (or id), and forgets one that
/// left.
#[tokio::test]
async fn who_lists_members_on_every_instance() {
    let Some(cluster) = cluster() else {
        return;
    };
    let connect = |server: &AppProcess, name: &str| server.connect(&format!("/ws/who?name={name}"));
    let mut ann = connect(&cluster.a, "ann").await;
    let _bob = connect(&cluster.b, "bob").await;
    let cy = connect(&cluster.b, "cy").await;
    let started = Instant::now();
    loop {
        let names = who(&mut ann).await;
        if names == ["ann", "bob", "cy"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{names:?}");
    }
    drop(cy);
    let started = Instant::now();
    loop {
        let names = who(&mut ann).await;
        if names == ["ann", "bob"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{names:?}");
    }
}

/// Asks `/who` and returns the names, sorted.
async fn who(client: &mut WsClient) -> Vec<String> {
    client.send_text("/who").await;
    loop {
        let line = chat_line(client).await;
        if let Some(members) = line["members"].as_array() {
            let mut names: Vec<String> = members
                .iter()
                .map(|name| name.as_str().unwrap_or_default().to_owned())
                .collect();
            names.sort();
            return names;
        }
    }
}

/// Connects to `room` as `name` and reads its join line: from then on it gets presence lines.
async fn greeted(server: &AppProcess, room: &str, name: &str) -> WsClient {
    let mut client = server.connect(&format!("/ws/{room}?name={name}")).await;
    let joined = chat_json(&mut client).await;
    assert_eq!(joined["joined"], true, "{joined}");
    client
}

/// The next presence line within `wait`, as (name, "joined" or "left"); other lines skipped.
async fn presence_line(client: &mut WsClient, wait: Duration) -> Option<(String, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ws_test::Message::Text(text) = client.recv_within(left).await? else {
            continue;
        };
        let line: serde_json::Value =
            serde_json::from_str(text.as_str()).expect("chat lines are JSON");
        if let (Some(name), Some(what)) = (line["name"].as_str(), line["presence"].as_str()) {
            return Some((name.to_owned(), what.to_owned()));
        }
    }
}

/// The next `n` presence lines (each within `wait`), sorted.
async fn presence_lines(client: &mut WsClient, n: usize, wait: Duration) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    while lines.len() < n {
        match presence_line(client, wait).await {
            Some(line) => lines.push(line),
            None => panic!("{} presence lines, not {n}: {lines:?}", lines.len()),
        }
    }
    lines.sort();
    lines
}

fn event(name: &str, what: &str) -> (String, String) {
    (name.to_owned(), what.to_owned())
}

/// Presence lines on both instances: joins and leaves on either reach both within a second,
/// `/who` agrees on both, a reconnect within the leave delay makes no lines, a longer absence
/// makes a leave and a join, and the members of an instance killed with SIGKILL leave on the
/// survivor within three heartbeats.
#[tokio::test]
async fn presence_lines_on_both_instances_with_the_leave_delay_and_a_killed_instance() {
    let delay = Duration::from_secs(1);
    let Some(cluster) = cluster_with(&[("WS_PRESENCE_LEAVE_DELAY", "1s")]) else {
        return;
    };
    let Cluster {
        redis: _redis,
        a,
        b,
    } = cluster;
    health_until(&a, WAIT, "two nodes", |h| nodes(h) == 2).await;
    health_until(&b, WAIT, "two nodes", |h| nodes(h) == 2).await;
    let second = Duration::from_secs(1);
    let mut on_a = greeted(&a, "pr", "wa").await;
    let mut on_b = greeted(&b, "pr", "wb").await;
    assert_eq!(
        presence_line(&mut on_a, second).await,
        Some(event("wb", "joined"))
    );

    // ann joins on A, bob on B: both watchers see both within a second.
    let ann = greeted(&a, "pr", "ann").await;
    let mut bob = greeted(&b, "pr", "bob").await;
    let joins = vec![event("ann", "joined"), event("bob", "joined")];
    assert_eq!(presence_lines(&mut on_a, 2, second).await, joins);
    assert_eq!(presence_lines(&mut on_b, 2, second).await, joins);
    let everyone = ["ann", "bob", "wa", "wb"];
    assert_eq!(who(&mut on_a).await, everyone);
    assert_eq!(who(&mut on_b).await, everyone);

    // ann drops and is back, on the other instance, within the delay: no lines at all.
    drop(ann);
    tokio::time::sleep(delay / 4).await;
    let _ann = greeted(&b, "pr", "ann").await;
    assert_eq!(presence_line(&mut on_a, delay * 2).await, None);
    assert_eq!(presence_line(&mut on_b, Duration::ZERO).await, None);

    // bob leaves for longer than the delay: a leave, then a join when he is back.
    bob.close(1000, "").await;
    drop(bob);
    let started = Instant::now();
    assert_eq!(
        presence_line(&mut on_a, delay * 3).await,
        Some(event("bob", "left"))
    );
    assert!(
        started.elapsed() >= delay * 3 / 4,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        presence_line(&mut on_b, second).await,
        Some(event("bob", "left"))
    );
    let _bob = greeted(&b, "pr", "bob").await;
    assert_eq!(
        presence_line(&mut on_a, second).await,
        Some(event("bob", "joined"))
    );
    assert_eq!(
        presence_line(&mut on_b, second).await,
        Some(event("bob", "joined"))
    );

    // B is killed (SIGKILL, by PID): its members (ann, bob, wb) leave on A within three
    // heartbeats of 2 s, counted from B's last one (at most 2 s before the kill).
    drop(on_b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Instant::now();
    drop(b);
    let left = presence_lines(&mut on_a, 3, Duration::from_secs(8)).await;
    let took = killed.elapsed();
    assert_eq!(
        left,
        [
            event("ann", "left"),
            event("bob", "left"),
            event("wb", "left")
        ]
    );
    assert!(took <= Duration::from_millis(7_000), "{took:?}");
    assert_eq!(who(&mut on_a).await, ["wa"]);
    eprintln!("chat presence: a killed instance's 3 members left on the survivor after {took:?}");
}

/// `REDIS_URL` naming a Redis Cluster (three masters, three replicas): a room's messages
/// cross instances; the master of the room's shard killed -9 makes both instances' health
/// `DEGRADED` until its replica takes over, then `UP` and delivery again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_master_failover_shows_in_health_and_delivery_resumes() {
    let Some(mut redis) = RedisCluster::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str()), ("APP_NAME", "chat")];
    let a = AppProcess::example("chat", &env);
    let b = AppProcess::example("chat", &env);
    let (mut say, _) = join(&a, "failover").await;
    let (mut remote, _) = join(&b, "failover").await;
    for app in [&a, &b] {
        health_until(app, WAIT, "UP", |h| h["cluster"]["status"] == "UP").await;
    }
    say.send_text("before").await;
    assert_eq!(said(&mut say).await, "before");
    assert_eq!(said(&mut remote).await, "before");

    // The room's channel shares the hash tag `{<APP_NAME>:<room>}` with its keys.
    let slot = redis.slot("{chat:failover}:room");
    let dead = redis.master_of(slot).expect("a master");
    redis.kill(dead);
    for app in [&a, &b] {
        health_until(app, WAIT, "DEGRADED", |h| {
            h["status"] == "DEGRADED" && h["cluster"]["status"] == "DEGRADED"
        })
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.master_of(slot).is_none_or(|master| master == dead) {
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_over = Instant::now();
    let resume = Duration::from_secs(5);
    for app in [&a, &b] {
        health_until(app, resume, "UP again", |h| {
            h["status"] == "UP" && h["cluster"]["status"] == "UP"
        })
        .await;
    }
    // Delivery across instances resumes.
    let mut n = 0;
    loop {
        let text = format!("after {n}");
        say.send_text(text.clone()).await;
        assert_eq!(said(&mut say).await, text);
        if let Some(ws_test::Message::Text(text)) =
            remote.recv_within(Duration::from_millis(200)).await
        {
            let line: serde_json::Value =
                serde_json::from_str(text.as_str()).expect("chat lines are JSON");
            if line.get("presence").is_none() {
                // This one or an earlier one, late.
                assert!(
                    line["text"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("after ")),
                    "{line}"
                );
                break;
            }
        }
        n += 1;
        assert!(
            failed_over.elapsed() < resume,
            "no delivery 5 s after the failover"
        );
    }
    eprintln!(
        "delivery resumed {:?} after the failover",
        failed_over.elapsed()
    );
}
