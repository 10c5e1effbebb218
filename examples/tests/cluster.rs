//! `examples/chat` in cluster mode: two chat processes on one real `redis-server`, all on
//! 127.0.0.1, driven by real WebSocket clients.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::{Client, Running, WAIT, chat_line, http_get, redis_server::RedisServer};

/// Two chat instances on one Redis (which the fields' order stops first).
struct Cluster {
    redis: RedisServer,
    a: Running,
    b: Running,
}

/// None when Redis is not installed (outside CI, see `RedisServer::start`).
fn cluster() -> Option<Cluster> {
    let redis = RedisServer::start()?;
    let url = redis.url();
    // Two instances of one app share APP_NAME, which names their Redis channels.
    let env = [("REDIS_URL", url.as_str()), ("APP_NAME", "chat")];
    let a = Running::start_with("chat", &env);
    let b = Running::start_with("chat", &env);
    Some(Cluster { redis, a, b })
}

/// Joins a room and learns its connection id with `/me`. The answer comes after the join
/// (and its Redis subscription) completed, so from then on the client is a member.
async fn join(server: &Running, room: &str) -> (Client, String) {
    let url = format!("ws://{}/ws/{room}", server.addr);
    let (mut client, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    client.send(Message::text("/me")).await.unwrap();
    let me = chat_line(&mut client).await;
    assert_eq!(me["from"], "server", "{me}");
    let id = me["text"].as_str().unwrap().to_owned();
    (client, id)
}

async fn health(server: &Running) -> serde_json::Value {
    let (status, body) = http_get(server.addr, "/.well-known/health").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["data"].clone()
}

/// Polls the health endpoint, bounded, until `check` holds; returns how long it took.
async fn health_until(
    server: &Running,
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
async fn metric(server: &Running, name: &str) -> f64 {
    let (_, text) = http_get(server.metrics.expect("metrics address"), "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The text of the next chat line.
async fn said(client: &mut Client) -> String {
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
            client.send(Message::text(text)).await.unwrap();
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

    on_a.send(Message::text(format!("/dm {b_id} psst")))
        .await
        .unwrap();
    let line = chat_line(&mut on_b).await;
    assert_eq!(
        (line["from"].as_str(), line["text"].as_str()),
        (Some(&*a_id), Some("psst"))
    );

    on_a.send(Message::text(format!("/kick {b_id}")))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, on_b.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), format!("removed by {a_id}"));
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
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
        first.send(Message::text(format!("m{n}"))).await.unwrap();
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
    let (sender, _) = join(&cluster.a, "r").await;
    let (mut local, _) = join(&cluster.a, "r").await;
    let (mut remote, _) = join(&cluster.b, "r").await;
    // The sender is a member too: keep its queue drained.
    let (mut say, mut echoes) = sender.split();
    tokio::spawn(async move { while echoes.next().await.is_some() {} });
    let mut n = 0;
    let mut local_got = Vec::new();
    let mut remote_got = Vec::new();

    // Before: everyone gets everything.
    for _ in 0..10 {
        say.send(Message::text(n.to_string())).await.unwrap();
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
        say.send(Message::text(n.to_string())).await.unwrap();
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
        say.send(Message::text(n.to_string())).await.unwrap();
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
    say.send(Message::text(n.to_string())).await.unwrap();
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
    let nodes = |h: &serde_json::Value| h["cluster"]["nodes"].as_array().map_or(0, Vec::len);
    health_until(&a, WAIT, "two nodes", |h| nodes(h) == 2).await;
    drop(b);
    // Three heartbeats of 2 s, counted from the last one B sent (at most 2 s before the kill).
    let took = health_until(&a, Duration::from_secs(8), "B dropped", |h| nodes(h) == 1).await;
    assert!(took <= Duration::from_millis(6_500), "{took:?}");
    assert_eq!(health(&a).await["status"], "UP");
}

#[test]
fn an_unreachable_redis_stops_the_app_with_a_clear_message() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}/", free.local_addr().unwrap().port());
    drop(free);
    let output = std::process::Command::new(crate::example_path("chat"))
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
    let connect = |addr: std::net::SocketAddr, name: &'static str| async move {
        let url = format!("ws://{addr}/ws/who?name={name}");
        let (client, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        client
    };
    let mut ann = connect(cluster.a.addr, "ann").await;
    let _bob = connect(cluster.b.addr, "bob").await;
    let cy = connect(cluster.b.addr, "cy").await;
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
async fn who(client: &mut Client) -> Vec<String> {
    client.send(Message::text("/who")).await.unwrap();
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

/// `REDIS_URL` naming a Redis Cluster (three masters, three replicas): a room's messages
/// cross instances; the master of the room's shard killed -9 makes both instances' health
/// `DEGRADED` until its replica takes over, then `UP` and delivery again within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_master_failover_shows_in_health_and_delivery_resumes() {
    let Some(mut redis) = crate::redis_server::RedisCluster::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str()), ("APP_NAME", "chat")];
    let a = Running::start_with("chat", &env);
    let b = Running::start_with("chat", &env);
    let (mut say, _) = join(&a, "failover").await;
    let (mut remote, _) = join(&b, "failover").await;
    for app in [&a, &b] {
        health_until(app, WAIT, "UP", |h| h["cluster"]["status"] == "UP").await;
    }
    say.send(Message::text("before")).await.unwrap();
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
        say.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(said(&mut say).await, text);
        if let Ok(line) =
            tokio::time::timeout(Duration::from_millis(200), chat_line(&mut remote)).await
        {
            // This one or an earlier one, late.
            assert!(
                line["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("after ")),
                "{line}"
            );
            break;
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
