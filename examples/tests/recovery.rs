//! `examples/chat`'s recovery contract: `"pos"` on every room line and in the greeting at
//! join, `?since=POS` after a drop delivers what was missed first, once, in order (on one
//! instance, or across instances through Redis); `"recovered": false` when it cannot.

use std::time::Duration;

use test_support::RedisServer;
use ws_test::{AppProcess, DEFAULT_TIMEOUT as WAIT, Message, WsClient};

use crate::{EXIT_WAIT, chat::chatter, chat_line};

async fn said(client: &mut WsClient) -> (String, String) {
    let line = chat_line(client).await;
    (
        line["text"].as_str().unwrap().to_owned(),
        line["pos"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn chat_a_client_cut_off_comes_back_with_its_last_pos_and_misses_nothing() {
    let server = AppProcess::example("chat", &[]);
    let mut ann = chatter(&server, "rec", "ann").await;
    let mut bob = chatter(&server, "rec", "bob").await;
    // Bob's greeting also reached Ann.
    assert_eq!(said(&mut ann).await.0, "hello from bob");

    ann.send_text("m0").await;
    assert_eq!(said(&mut ann).await.0, "m0");
    let (text, last_pos) = said(&mut bob).await;
    assert_eq!(text, "m0");
    assert!(!last_pos.is_empty(), "every room line has a pos");
    bob.reset();

    for i in 1..10 {
        ann.send_text(format!("m{i}")).await;
        assert_eq!(said(&mut ann).await.0, format!("m{i}"));
    }
    let mut bob = server
        .connect(&format!("/ws/rec?name=bob&since={last_pos}"))
        .await;
    ann.send_text("live").await;
    let mut previous = last_pos;
    for expected in (1..10).map(|i| format!("m{i}")).chain(["live".to_owned()]) {
        let (text, pos) = said(&mut bob).await;
        assert_eq!(text, expected);
        assert_ne!(pos, previous);
        previous = pos;
    }

    // A position the server never gave: told so first, then a member as usual.
    let mut cy = server.connect("/ws/rec?name=cy&since=12.abc").await;
    let notice = chat_line(&mut cy).await;
    assert_eq!(notice["from"], "server", "{notice}");
    assert_eq!(notice["recovered"], false, "{notice}");
    ann.send_text("after").await;
    assert_eq!(said(&mut cy).await.0, "after");
}

/// The position given at join: a client that received nothing but it, then dropped, gets
/// every message sent meanwhile when it comes back with it.
#[tokio::test]
async fn chat_the_position_at_join_recovers_a_client_that_received_nothing() {
    let server = AppProcess::example("chat", &[]);
    let mut dan = server.connect("/ws/quiet?name=dan").await;
    let greeting: serde_json::Value = dan.recv_json().await;
    assert_eq!(greeting["from"], "server", "{greeting}");
    assert_eq!(greeting["joined"], true, "{greeting}");
    let at_join = greeting["pos"].as_str().expect("a pos at join").to_owned();
    dan.reset();

    let mut eve = chatter(&server, "quiet", "eve").await;
    eve.send_text("while dan was away").await;
    assert_eq!(said(&mut eve).await.0, "while dan was away");
    let mut dan = server
        .connect(&format!("/ws/quiet?name=dan&since={at_join}"))
        .await;
    assert_eq!(said(&mut dan).await.0, "hello from eve");
    assert_eq!(said(&mut dan).await.0, "while dan was away");
}

/// One member of the room in the rolling-restart test: follows the sender's lines `m0`,
/// `m1`, ... until `last`, coming back to `back` with its last position whenever its
/// connection ends (a SIGTERM'd instance closes it with 1001).
async fn follow(
    first: String,
    back: String,
    name: String,
    last: usize,
) -> (String, Vec<String>, usize) {
    let url = |base: &str, since: Option<&str>| {
        let since = since.map(|pos| format!("&since={pos}")).unwrap_or_default();
        format!("{base}?name={name}{since}")
    };
    let mut client = WsClient::connect(url(&first, None)).await;
    let greeting: serde_json::Value = client.recv_json().await;
    let mut pos = greeting["pos"].as_str().unwrap().to_owned();
    let mut texts = Vec::new();
    let mut reconnects = 0;
    while texts.len() <= last {
        match client.recv_within(WAIT).await {
            Some(Message::Text(text)) => {
                let line: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                assert_ne!(line["recovered"], false, "{name}: recovery refused: {line}");
                if let Some(p) = line["pos"].as_str() {
                    pos = p.to_owned();
                }
                if line["from"] == "tx" {
                    texts.push(line["text"].as_str().unwrap().to_owned());
                }
            }
            // Closed by the instance going away: back on the other one.
            Some(Message::Close(_)) => {
                reconnects += 1;
                assert!(reconnects < 5, "{name}: too many reconnects");
                client = WsClient::connect(url(&back, Some(&pos))).await;
            }
            Some(_) => {}
            None => panic!("{name}: nothing for {WAIT:?} after {texts:?}"),
        }
    }
    (name, texts, reconnects)
}

/// The rolling restart: two chat instances on one Redis, one stopped with SIGTERM
/// and started again while messages flow; its members come back on the other instance with
/// their last position and miss nothing, and members of the new process get the rest.
#[tokio::test]
async fn chat_cluster_a_rolling_restart_loses_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str()), ("APP_NAME", "chat")];
    let mut a = AppProcess::example("chat", &env);
    let b = AppProcess::example("chat", &env);
    const LAST: usize = 199;
    let mut members = Vec::new();
    for i in 0..20 {
        let first = if i % 2 == 0 { &a } else { &b };
        members.push(tokio::spawn(follow(
            first.ws_url("/ws/roll"),
            b.ws_url("/ws/roll"),
            format!("m{i}"),
            LAST,
        )));
    }
    // Every member greeted (so joined) before the first line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tx = b.connect("/ws/roll?name=tx").await;
    let started = std::time::Instant::now();
    let mut late = Vec::new();
    for n in 0..=LAST {
        tx.send_text(format!("m{n}")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if n == 50 {
            a.terminate();
            assert!(a.wait_exit(EXIT_WAIT).success());
            a = AppProcess::example("chat", &env);
        }
        if n == 60 {
            for i in 0..5 {
                late.push(tokio::spawn(follow_from_join(
                    a.ws_url("/ws/roll"),
                    format!("late{i}"),
                )));
            }
        }
    }
    let expected: Vec<String> = (0..=LAST).map(|n| format!("m{n}")).collect();
    let mut moved = 0;
    for member in members {
        let (name, texts, reconnects) = member.await.unwrap();
        assert_eq!(texts, expected, "{name}: every line once, in order");
        moved += reconnects;
    }
    assert!(
        moved >= 10,
        "the stopped instance's 10 members came back: {moved}"
    );
    for member in late {
        member.await.unwrap();
    }
    eprintln!(
        "rolling restart: 20 members (10 on the stopped instance, {moved} reconnects), {} lines \
         in {:?}: 0 missing, 0 duplicates",
        LAST + 1,
        started.elapsed()
    );
}

/// A member joining the restarted instance: from its position at join, every later line
/// with consecutive offsets up to the last.
async fn follow_from_join(url: String, name: String) {
    let mut client = WsClient::connect(format!("{url}?name={name}")).await;
    let greeting: serde_json::Value = client.recv_json().await;
    let mut offset = greeting["pos"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    loop {
        let line = chat_line(&mut client).await;
        let next: u64 = line["pos"]
            .as_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(next, offset + 1, "{name}: no gap after the join: {line}");
        offset = next;
        if line["text"] == "m199" {
            return;
        }
    }
}
