//! A real Redis Cluster (three masters, three replicas): two instances, 1,000 clients in 50
//! rooms spread over the shards get every room message once, in order; a master killed -9
//! makes the instances `Degraded` until its replica takes over, then delivery, recovery and
//! `Up` come back within 5 s, with no duplicate.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use ws_backplane_redis::Settings;
use ws_context::{Backplane as _, BackplaneStatus, Message, RoomPosition};

use test_support::{RedisCluster, RedisServer, cpu_seconds};
use ws_test::eventually_within;

use crate::support::Instance;

const ROOMS: usize = 50;
/// Members of each room on each instance.
const PER_INSTANCE: usize = 10;
/// Messages per room before and after the failover.
const BURST: usize = 10;
/// How soon delivery, recovery and `Up` must be back once the replica took over.
const RESUME: Duration = Duration::from_secs(5);

fn room(i: usize) -> String {
    format!("room-{i}")
}

/// A client that keeps every text it receives.
struct Reader {
    texts: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    async fn join(instance: &Instance, room: &str) -> Reader {
        let mut client = instance.connect(room).await;
        let texts = Arc::new(Mutex::new(Vec::new()));
        let kept = texts.clone();
        let task = tokio::spawn(async move {
            loop {
                match client.recv_within(Duration::from_secs(60)).await {
                    Some(Message::Text(text)) => kept.lock().unwrap().push(text.to_string()),
                    Some(Message::Close(_)) => break,
                    _ => {}
                }
            }
        });
        Reader { texts, task }
    }

    /// What it received, without the probes sent during the failover.
    fn lines(&self) -> Vec<String> {
        self.texts
            .lock()
            .unwrap()
            .iter()
            .filter(|text| !text.starts_with("probe"))
            .cloned()
            .collect()
    }

    fn got(&self, text: &str) -> bool {
        self.texts.lock().unwrap().iter().any(|t| t == text)
    }

    /// Each text at most once (every text sent is distinct).
    fn no_duplicates(&self) -> bool {
        let texts = self.texts.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        texts.iter().all(|text| seen.insert(text))
    }
}

fn line(room: usize, k: usize) -> String {
    format!("r{room}-{k}")
}

/// Sends messages `from..to` to every room (each room's in order, alternating instances,
/// rooms at once); the position of each room's last.
async fn burst(instances: &[Instance; 2], from: usize, to: usize) -> Vec<RoomPosition> {
    let sends = (0..ROOMS).map(|r| async move {
        let mut last = None;
        for k in from..to {
            let sent = instances[k % 2]
                .hub
                .send_to_room(&room(r), Message::text(line(r, k)))
                .await;
            last = sent.position;
        }
        last.unwrap_or_else(|| panic!("room {r}: no position (not in the shared history)"))
    });
    futures_util::future::join_all(sends).await
}

async fn all_lines(readers: &[Vec<Reader>], upto: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let short: Vec<(usize, usize, usize)> = readers
            .iter()
            .enumerate()
            .flat_map(|(r, room)| {
                room.iter()
                    .enumerate()
                    .map(move |(i, reader)| (r, i, reader.lines().len()))
            })
            .filter(|(_, _, got)| *got < upto)
            .collect();
        if short.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients short of {upto} lines (room, client, got): {:?}",
            &short[..short.len().min(40)]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (r, room) in readers.iter().enumerate() {
        let expected: Vec<String> = (0..upto).map(|k| line(r, k)).collect();
        for reader in room {
            assert_eq!(reader.lines(), expected, "room {r}");
            assert!(reader.no_duplicates(), "room {r}: a duplicate");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_rooms_and_survives_a_master_failover() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.url();
    let settings = || {
        Settings::builder()
            .prefix("clu")
            .heartbeat(Duration::from_millis(200))
    };
    let instances = [
        Instance::start_with(&url, settings()).await,
        Instance::start_with(&url, settings()).await,
    ];
    for instance in &instances {
        instance
            .hub
            .set_history_limits(1000, Duration::from_secs(300));
        assert_eq!(instance.hub.backplane_status(), BackplaneStatus::Up);
    }

    // The rooms' channels spread over the three shards.
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "three masters");
    let channel = |r: usize| instances[0].backplane.room_channel(&room(r));
    let shard_of: Vec<u16> = (0..ROOMS)
        .map(|r| {
            cluster
                .master_of(cluster.slot(&channel(r)))
                .expect("a master")
        })
        .collect();
    for master in &masters {
        assert!(
            shard_of.contains(master),
            "no room on the shard of {master}"
        );
    }
    // A room's channel and its history stream share a slot.
    assert_eq!(
        cluster.slot(&channel(0)),
        cluster.slot("{clu:room-0}:history")
    );

    // 1,000 clients: 10 per room on each instance.
    let joins = (0..ROOMS).map(|r| {
        let instances = &instances;
        async move {
            let mut readers = Vec::new();
            for instance in instances {
                for _ in 0..PER_INSTANCE {
                    readers.push(Reader::join(instance, &room(r)).await);
                }
            }
            readers
        }
    });
    let readers: Vec<Vec<Reader>> = futures_util::future::join_all(joins).await;
    eventually_within(Duration::from_secs(10), "every member joined", || {
        instances.iter().all(|instance| {
            (0..ROOMS).all(|r| instance.hub.room_members(&room(r)).len() == PER_INSTANCE)
        })
    })
    .await;

    // A member counts as soon as it joined; its instance's subscription to the room
    // follows (the first join here waits for it, the connect does not).
    eventually_within(Duration::from_secs(10), "both instances subscribed", || {
        (0..ROOMS).all(|r| cluster.subscribers(&channel(r)) >= 2)
    })
    .await;
    // Presence hashes are written in pipelines per key (one slot each): every room lists
    // its members of both instances.
    for r in [0, ROOMS / 2, ROOMS - 1] {
        let hub = &instances[1].hub;
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.presence(&room(r)).await.len() != 2 * PER_INSTANCE {
            assert!(Instant::now() < deadline, "room {r}: presence incomplete");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let started = Instant::now();
    let positions = burst(&instances, 0, BURST).await;
    all_lines(&readers, BURST, Duration::from_secs(10)).await;
    eprintln!(
        "{} deliveries over the cluster in {:?}",
        ROOMS * BURST * 2 * PER_INSTANCE,
        started.elapsed()
    );

    // Kill the master of room 0's shard.
    let victim = 0;
    let slot = cluster.slot(&channel(victim));
    let dead = cluster.master_of(slot).expect("a master");
    cluster.kill(dead);
    let killed_at = Instant::now();
    eventually_within(Duration::from_secs(5), "both instances degraded", || {
        instances
            .iter()
            .all(|i| i.hub.backplane_status() == BackplaneStatus::Degraded)
    })
    .await;
    // Rooms on the other shards keep working meanwhile.
    let healthy = (0..ROOMS)
        .find(|r| shard_of[*r] != dead)
        .expect("a room on another shard");
    instances[0]
        .hub
        .send_to_room(&room(healthy), Message::text("probe-healthy"))
        .await;
    eventually_within(RESUME, "a healthy shard's room", || {
        readers[healthy]
            .iter()
            .all(|reader| reader.got("probe-healthy"))
    })
    .await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.master_of(slot).is_none_or(|master| master == dead) {
        assert!(
            Instant::now() < deadline,
            "no replica took over:\n{}",
            cluster.nodes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed_over = Instant::now();
    eprintln!(
        "replica took over {:?} after the kill",
        failed_over - killed_at
    );

    // Delivery: a message sent on one instance reaches the room's members on the other.
    let mut n = 0;
    let delivered = loop {
        n += 1;
        let probe = format!("probe-{n}");
        instances[0]
            .hub
            .send_to_room(&room(victim), Message::text(probe.clone()))
            .await;
        let wait = Instant::now() + Duration::from_millis(100);
        while Instant::now() < wait && !readers[victim][PER_INSTANCE].got(&probe) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if readers[victim][PER_INSTANCE].got(&probe) {
            break failed_over.elapsed();
        }
        assert!(failed_over.elapsed() < RESUME, "delivery did not resume");
    };
    // Recovery: the history after the last message before the kill.
    let recovered = loop {
        match instances[1]
            .backplane
            .history_since(&room(victim), &positions[victim])
            .await
        {
            Ok((entries, _)) => {
                let offsets: Vec<u64> = entries.iter().map(|(p, _)| p.offset()).collect();
                assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
                assert!(
                    !entries.is_empty(),
                    "the probe that got through is in history"
                );
                break failed_over.elapsed();
            }
            Err(error) => {
                assert!(
                    failed_over.elapsed() < RESUME,
                    "recovery did not resume: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eventually_within(RESUME, "both instances up", || {
        instances
            .iter()
            .all(|i| i.hub.backplane_status() == BackplaneStatus::Up)
    })
    .await;
    eprintln!(
        "after the failover: delivery back in {delivered:?}, recovery in {recovered:?}, up in {:?}",
        failed_over.elapsed()
    );

    // Every room, the failed-over one included, carries on: once each, in order.
    burst(&instances, BURST, 2 * BURST).await;
    all_lines(&readers, 2 * BURST, Duration::from_secs(10)).await;
    for (r, room) in readers.iter().enumerate() {
        for reader in room {
            assert!(reader.no_duplicates(), "room {r}: a duplicate probe");
        }
    }
    for instance in &instances {
        assert_eq!(instance.backplane.stats().invalid, 0);
    }
}

/// Room messages a second through one Redis and through the three-shard cluster: two
/// instances, 50 rooms, one member per room on the other instance, 50 senders (one per
/// room, each awaiting its send) on the first, history on (one script per message).
/// Measures, does not judge: `cargo test -p ws-backplane-redis --release --test tests
/// throughput -- --ignored --nocapture` prints the figures the guide quotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn throughput_one_redis_and_a_cluster() {
    const PER_ROOM: usize = 400;
    let Some(single) = RedisServer::start() else {
        return;
    };
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    for (name, url) in [
        ("one Redis", single.url()),
        ("3-shard cluster", cluster.url()),
    ] {
        let settings = || Settings::builder().prefix("tput");
        let a = Instance::start_with(&url, settings()).await;
        let b = Instance::start_with(&url, settings()).await;
        for instance in [&a, &b] {
            instance
                .hub
                .set_history_limits(1000, Duration::from_secs(60));
        }
        let mut readers = Vec::new();
        for r in 0..ROOMS {
            readers.push(Reader::join(&b, &room(r)).await);
        }
        eventually_within(Duration::from_secs(10), "members joined", || {
            (0..ROOMS).all(|r| b.hub.room_members(&room(r)).len() == 1)
        })
        .await;
        // Let every subscription settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let redis_cpu = || -> Vec<f64> {
            if name == "one Redis" {
                vec![cpu_seconds(&single.cli(&["INFO", "cpu"]))]
            } else {
                cluster
                    .master_cpu()
                    .into_iter()
                    .map(|(_, cpu)| cpu)
                    .collect()
            }
        };
        let cpu_before = redis_cpu();
        let started = Instant::now();
        let sends = (0..ROOMS).map(|r| {
            let hub = a.hub.clone();
            async move {
                for k in 0..PER_ROOM {
                    hub.send_to_room(&room(r), Message::text(line(r, k))).await;
                }
            }
        });
        futures_util::future::join_all(sends).await;
        let sent = started.elapsed();
        eventually_within(Duration::from_secs(60), "every delivery", || {
            readers
                .iter()
                .all(|reader| reader.lines().len() >= PER_ROOM)
        })
        .await;
        let total = ROOMS * PER_ROOM;
        let elapsed = started.elapsed();
        let cpu: Vec<String> = redis_cpu()
            .iter()
            .zip(&cpu_before)
            .map(|(after, before)| {
                format!("{:.0} %", 100.0 * (after - before) / elapsed.as_secs_f64())
            })
            .collect();
        eprintln!(
            "{name}: {total} room messages sent in {sent:?}, all delivered in {elapsed:?}: \
             {:.0} msgs/s; Redis CPU per master: {}",
            total as f64 / elapsed.as_secs_f64(),
            cpu.join(", ")
        );
        a.backplane.disconnect();
        b.backplane.disconnect();
    }
}

/// A failover to a replica that had not received the last messages takes a room's offsets
/// back; simulated on one Redis by setting the offset back and trimming the stream. The
/// next message starts a new epoch instead of reusing offsets the members saw: it is
/// delivered, and positions of the old epoch are refused as `EpochChanged`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_that_went_back_start_a_new_epoch() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let instance = Instance::start_with(&redis.url(), Settings::builder().prefix("back")).await;
    instance
        .hub
        .set_history_limits(100, Duration::from_secs(60));
    let reader = Reader::join(&instance, "r").await;
    eventually_within(Duration::from_secs(5), "joined", || {
        instance.hub.room_members("r").len() == 1
    })
    .await;
    let mut last = None;
    for k in 0..5 {
        last = instance
            .hub
            .send_to_room("r", Message::text(line(0, k)))
            .await
            .position;
    }
    let last = last.expect("a position");
    eventually_within(Duration::from_secs(5), "five lines", || {
        reader.lines().len() == 5
    })
    .await;

    // The last three messages are lost, as a replica that had not received them would.
    assert_eq!(redis.cli(&["SET", "{back:r}:offset", "2"]), "OK");
    redis.cli(&["XTRIM", "{back:r}:history", "MAXLEN", "2"]);
    let after = instance
        .hub
        .send_to_room("r", Message::text(line(0, 5)))
        .await
        .position
        .expect("a position");
    assert_ne!(after.epoch(), last.epoch(), "a new epoch");
    eventually_within(Duration::from_secs(5), "the next line", || {
        reader.lines().len() == 6
    })
    .await;
    assert_eq!(
        reader.lines(),
        (0..6).map(|k| line(0, k)).collect::<Vec<_>>()
    );
    assert!(matches!(
        instance.backplane.history_since("r", &last).await,
        Err(ws_context::RecoveryError::EpochChanged)
    ));
    assert!(instance.backplane.stats().gaps >= 1);
}
