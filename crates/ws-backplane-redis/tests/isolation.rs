//! One app's channels sealed from another's; forged envelopes and sequence numbers; TLS.

use std::time::Duration;

use futures_util::StreamExt as _;
use test_support::RedisServer;
use ws_backplane_redis::{Settings, SettingsBuilder};
use ws_context::{CloseFrame, ConnectionHub};
use ws_test::{DEFAULT_TIMEOUT, eventually};

use crate::support::{Instance, two_instances};

const HEARTBEAT: Duration = Duration::from_millis(100);

fn app(prefix: &str) -> SettingsBuilder {
    Settings::builder().heartbeat(HEARTBEAT).prefix(prefix)
}

/// A frame in the backplane's format (version 2), built by hand as an attacker would.
struct Forged<'a> {
    kind: u8,
    opcode: u8,
    stream: u64,
    seq: u64,
    origin: &'a str,
    target: &'a str,
    payload: Vec<u8>,
}

impl Forged<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![2, 0, self.kind, self.opcode];
        out.extend(self.stream.to_be_bytes());
        out.extend(self.seq.to_be_bytes());
        out.extend(0u64.to_be_bytes());
        out.push(self.origin.len() as u8);
        out.extend(self.origin.as_bytes());
        out.extend((self.target.len() as u16).to_be_bytes());
        out.extend(self.target.as_bytes());
        out.extend((self.payload.len() as u32).to_be_bytes());
        out.extend(&self.payload);
        out
    }

    /// A well-formed close-by-id with `code`.
    fn close(target: &str, code: u16) -> Forged<'_> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend(b"forged");
        Forged {
            kind: 3,
            opcode: 8,
            stream: 1,
            seq: 1,
            origin: "attacker/1",
            target,
            payload,
        }
    }
}

async fn publish(redis: &RedisServer, channel: &str, frame: &[u8]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(frame)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The id of the only member of `room` on `hub`.
async fn only_member(hub: &ConnectionHub, room: &str) -> ws_context::ConnectionId {
    eventually("the member joined", || hub.room_members(room).len() == 1).await;
    hub.room_members(room).remove(0)
}

fn node_of(id: &ws_context::ConnectionId) -> &str {
    id.as_str().split('-').next().unwrap()
}

#[tokio::test]
async fn apps_with_different_prefixes_on_one_redis_never_see_each_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let one_a = Instance::start_with(&redis.url(), app("one")).await;
    let one_b = Instance::start_with(&redis.url(), app("one")).await;
    // Another app, even on another database number: pub/sub ignores it.
    let other_url = format!("{}1", redis.url());
    let two = Instance::start_with(&other_url, app("two")).await;

    let mut on_a = one_a.connect("r").await;
    let mut on_b = one_b.connect("r").await;
    let mut on_two = two.connect("r").await;
    let id_a = only_member(&one_a.hub, "r").await;
    only_member(&one_b.hub, "r").await;
    only_member(&two.hub, "r").await;

    on_a.send_text("one's").await;
    assert_eq!(on_b.recv_text().await, "one's");
    on_two.send_text("two's").await;
    assert_eq!(on_two.recv_text().await, "two's");
    two.hub
        .broadcast(ws_context::Message::text("all of two"))
        .await;
    assert_eq!(on_two.recv_text().await, "all of two");
    // Close-by-id from the other app, with a real id of app one: nothing.
    assert!(
        two.hub
            .close(&id_a, CloseFrame::new(4001, "not yours").unwrap())
    );
    assert_eq!(on_a.recv_text().await, "one's");
    on_a.expect_nothing_for(Duration::from_millis(300)).await;
    on_b.expect_nothing_for(Duration::from_millis(10)).await;
    on_two.expect_nothing_for(Duration::from_millis(10)).await;
    assert_eq!(one_a.backplane.stats().received, 0);
    assert_eq!(one_b.backplane.stats().received, 1);
    assert_eq!(two.backplane.stats().received, 0);
}

#[tokio::test]
async fn without_a_secret_only_well_formed_envelopes_on_the_right_channel_are_taken() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = Instance::start_with(&redis.url(), app("app")).await;
    let mut victim = a.connect("r").await;
    let id = only_member(&a.hub, "r").await;
    let node = node_of(&id);

    // Well-formed, but on another app's channel: never reaches this app.
    let close = Forged::close(id.as_str(), 4001).bytes();
    publish(&redis, &format!("other:node:{node}"), &close).await;
    // On this app's channels but wrong: a close code no peer may send, a close-by-id on the
    // broadcast or a room channel, an unknown kind, a cut frame, trailing bytes.
    publish(
        &redis,
        &a.backplane.node_channel(node),
        &Forged::close(id.as_str(), 1005).bytes(),
    )
    .await;
    publish(&redis, &a.backplane.all_channel(), &close).await;
    publish(&redis, &a.backplane.room_channel("r"), &close).await;
    let mut unknown = Forged::close(id.as_str(), 4001);
    unknown.kind = 7;
    publish(&redis, &a.backplane.node_channel(node), &unknown.bytes()).await;
    publish(
        &redis,
        &a.backplane.node_channel(node),
        &close[..close.len() - 3],
    )
    .await;
    let mut longer = close.clone();
    longer.push(0);
    publish(&redis, &a.backplane.node_channel(node), &longer).await;
    eventually("six counted as invalid", || {
        a.backplane.stats().invalid == 6
    })
    .await;
    victim.expect_nothing_for(Duration::from_millis(200)).await;
    assert_eq!(a.backplane.stats().received, 0);
    // The connection still works.
    victim.send_text("alive").await;
    assert_eq!(victim.recv_text().await, "alive");
}

#[tokio::test]
async fn with_a_secret_unsigned_and_altered_envelopes_close_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let secret = "correct horse battery staple";
    let a = Instance::start_with(&redis.url(), app("app").secret(secret)).await;
    let b = Instance::start_with(&redis.url(), app("app").secret(secret)).await;
    let intruder = Instance::start_with(&redis.url(), app("app").secret("guess")).await;
    let mut victim = a.connect("r").await;
    let mut on_b = b.connect("r").await;
    let id = only_member(&a.hub, "r").await;
    only_member(&b.hub, "r").await;
    let node = node_of(&id);

    // The well-formed close that an unsigned backplane would take, on the right channel.
    publish(
        &redis,
        &a.backplane.node_channel(node),
        &Forged::close(id.as_str(), 4001).bytes(),
    )
    .await;
    // Signed with the wrong secret (an instance that does not know it).
    assert!(
        intruder
            .hub
            .close(&id, CloseFrame::new(4001, "intruder").unwrap())
    );
    intruder
        .hub
        .broadcast(ws_context::Message::text("intruder"))
        .await;
    eventually("counted as invalid", || {
        a.backplane.stats().invalid >= 3 && b.backplane.stats().invalid >= 1
    })
    .await;
    victim.expect_nothing_for(Duration::from_millis(200)).await;
    on_b.expect_nothing_for(Duration::from_millis(10)).await;

    // The instances that share the secret still reach each other, close included.
    on_b.send_text("signed").await;
    assert_eq!(victim.recv_text().await, "signed");
    assert!(b.hub.close(&id, CloseFrame::new(4002, "by b").unwrap()));
    victim.expect_close(4002).await;
}

#[tokio::test]
async fn a_forged_sequence_number_does_not_silence_a_sender() {
    let Some((redis, a, b)) = two_instances(app("app")).await else {
        return;
    };
    let mut on_a = a.connect("r").await;
    let mut on_b = b.connect("r").await;
    only_member(&a.hub, "r").await;
    only_member(&b.hub, "r").await;
    let channel = a.backplane.room_channel("r");

    // Listen as anyone with access to the Redis could, to learn A's stream number.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut spy = client.get_async_pubsub().await.unwrap();
    spy.subscribe(&channel).await.unwrap();
    on_a.send_text("first").await;
    assert_eq!(on_b.recv_text().await, "first");
    let seen = tokio::time::timeout(DEFAULT_TIMEOUT, spy.on_message().next())
        .await
        .unwrap()
        .unwrap();
    let frame = seen.get_payload_bytes().to_vec();
    let stream = u64::from_be_bytes(frame[4..12].try_into().unwrap());
    let seq = u64::from_be_bytes(frame[12..20].try_into().unwrap());
    let origin_len = usize::from(frame[28]);
    let origin = std::str::from_utf8(&frame[29..29 + origin_len]).unwrap();

    // Far ahead, then a few ahead onto a number the real sender is about to use.
    for forged_seq in [u64::MAX - 1, seq + 8] {
        let forged = Forged {
            kind: 2,
            opcode: 1,
            stream,
            seq: forged_seq,
            origin,
            target: "r",
            payload: b"forged".to_vec(),
        };
        publish(&redis, &channel, &forged.bytes()).await;
        // Without a secret a well-formed envelope is taken...
        assert_eq!(on_b.recv_text().await, "forged");
        // ...but every real message after it still arrives.
        for i in 0..5 {
            on_a.send_text(format!("real {forged_seq} {i}")).await;
        }
        for i in 0..5 {
            assert_eq!(on_b.recv_text().await, format!("real {forged_seq} {i}"));
        }
    }
    assert_eq!(b.backplane.stats().duplicates, 0);
}

#[tokio::test]
async fn rediss_urls_connect_over_tls() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let ca = std::fs::read(redis.tls_ca().unwrap()).unwrap();
    let url = format!("rediss://localhost:{}/", redis.port());
    let a = Instance::start_with(&url, app("tls").tls_root_ca(ca.clone())).await;
    let b = Instance::start_with(&url, app("tls").tls_root_ca(ca)).await;
    let mut on_a = a.connect("r").await;
    let mut on_b = b.connect("r").await;
    only_member(&a.hub, "r").await;
    only_member(&b.hub, "r").await;
    on_a.send_text("over tls").await;
    assert_eq!(on_b.recv_text().await, "over tls");
}
