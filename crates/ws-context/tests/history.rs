//! Room history: positions, and a member that comes back with its last position gets what
//! it missed, once, in order, then the live messages; or is told it cannot.

use std::time::Duration;

use ws_context::{
    CloseFrame, Connection, ConnectionHub, Context, Endpoint, RecoveryError, RoomPosition,
};
use ws_test::{TestServer, eventually};

/// Joins the room of the path; with `?since=POS`, recovers from there first, and when that
/// is not possible says `recovery failed: <why>` before joining.
async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    let hub = conn.hub();
    if let Some(since) = conn.query_param("since") {
        let result = match since.parse::<RoomPosition>() {
            Ok(since) => hub.join_since(conn.id(), &room, &since).await.map(|_| ()),
            Err(_) => Err(RecoveryError::EpochChanged),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(error) => {
                let _ = conn
                    .socket()
                    .text(format!("recovery failed: {error}"))
                    .await;
            }
        }
    }
    hub.join(conn.id(), &room).await;
    Ok(())
}

/// Every text goes to the room as "<pos> <text>".
async fn to_room(ctx: Context) -> Result<(), anyhow::Error> {
    let text: String = ctx.bind()?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub()
        .send_to_room_with(room, |pos| {
            let pos = pos.map_or_else(|| "-".to_owned(), ToString::to_string);
            ws_context::Message::text(format!("{pos} {text}"))
        })
        .await;
    Ok(())
}

async fn room_server(hub: &ConnectionHub) -> TestServer {
    let endpoint = Endpoint::new(to_room)
        .hub(hub.clone())
        .on_connect(join_room);
    TestServer::endpoint("/ws/{room}", endpoint).await
}

/// "<pos> <text>" split.
fn parts(text: String) -> (String, String) {
    let (pos, text) = text.split_once(' ').unwrap();
    (pos.to_owned(), text.to_owned())
}

#[tokio::test]
async fn a_member_that_comes_back_gets_what_it_missed_once_in_order_then_live_ones() {
    let hub = ConnectionHub::new();
    assert_eq!(hub.room_position("r"), None, "off by default");
    hub.set_history_limits(
        ws_context::DEFAULT_HISTORY_LEN,
        ws_context::DEFAULT_HISTORY_AGE,
    );
    let server = room_server(&hub).await;
    let mut sender = server.connect("/ws/r").await;
    let mut dropper = server.connect("/ws/r").await;
    eventually("joined", || hub.room_members("r").len() == 2).await;
    // Position set at join: valid before anything was received.
    let at_join = hub.room_position("r").unwrap();
    assert_eq!(at_join.offset(), 0);

    sender.send_text("one").await;
    let (first_pos, text) = parts(dropper.recv_text().await);
    assert_eq!(text, "one");
    let first: RoomPosition = first_pos.parse().unwrap();
    assert_eq!(first.offset(), 1);
    assert_eq!(first.epoch(), at_join.epoch());
    drop(dropper);
    eventually("dropped", || hub.room_members("r").len() == 1).await;

    for i in 0..20 {
        sender.send_text(format!("m{i}")).await;
    }
    for _ in 0..21 {
        sender.recv().await;
    }
    let mut back = server.connect(&format!("/ws/r?since={first}")).await;
    // Live messages right after the join, while the missed ones are being sent.
    sender.send_text("live").await;
    for i in 0..20 {
        let (pos, text) = parts(back.recv_text().await);
        assert_eq!(text, format!("m{i}"));
        assert_eq!(pos.parse::<RoomPosition>().unwrap().offset(), 2 + i);
    }
    let (pos, text) = parts(back.recv_text().await);
    assert_eq!(
        (pos.parse::<RoomPosition>().unwrap().offset(), &*text),
        (22, "live")
    );

    // From the position at join, a member that received nothing gets everything.
    let mut late = server.connect(&format!("/ws/r?since={at_join}")).await;
    for i in 0..22 {
        let (pos, _) = parts(late.recv_text().await);
        assert_eq!(pos.parse::<RoomPosition>().unwrap().offset(), 1 + i);
    }
}

#[tokio::test]
async fn recovery_that_is_not_possible_is_said_first() {
    let hub = ConnectionHub::new();
    hub.set_history_limits(5, Duration::from_secs(60));
    let server = room_server(&hub).await;
    let mut sender = server.connect("/ws/r").await;
    eventually("joined", || hub.room_members("r").len() == 1).await;
    sender.send_text("first").await;
    let (first, _) = parts(sender.recv_text().await);
    for i in 0..10 {
        sender.send_text(format!("m{i}")).await;
        sender.recv().await;
    }
    let epoch = first.split_once('.').unwrap().1.to_owned();

    // Older than the five kept, another epoch, from the future, not a position at all.
    for (since, why) in [
        (first.clone(), "older"),
        (format!("3.{}", "0".repeat(16)), "changed"),
        (format!("99.{epoch}"), "changed"),
        ("garbage".to_owned(), "changed"),
    ] {
        let mut client = server.connect(&format!("/ws/r?since={since}")).await;
        let notice = client.recv_text().await;
        assert!(
            notice.starts_with("recovery failed") && notice.contains(why),
            "{since}: {notice}"
        );
        // Then it is a member like any other.
        eventually("joined", || hub.room_members("r").len() == 2).await;
        sender.send_text("after").await;
        assert_eq!(parts(client.recv_text().await).1, "after");
        sender.recv().await;
        drop(client);
        eventually("left", || hub.room_members("r").len() == 1).await;
    }
    // 15 messages so far, the last five kept: from just before the oldest kept is fine.
    let mut client = server.connect(&format!("/ws/r?since=10.{epoch}")).await;
    for offset in 11..=15 {
        let (pos, _) = parts(client.recv_text().await);
        assert_eq!(pos.parse::<RoomPosition>().unwrap().offset(), offset);
    }
}

/// `join_at` in memory: the greeting carries the room's position and comes before any
/// later room message; recovering from it gives what was sent after.
#[tokio::test]
async fn join_at_greets_with_the_position_before_any_later_message() {
    let hub = ConnectionHub::new();
    hub.set_history_limits(16, Duration::from_secs(60));
    let endpoint =
        Endpoint::new(to_room)
            .hub(hub.clone())
            .on_connect(|conn: Connection| async move {
                let room = conn.path_param("room").unwrap_or("lobby").to_owned();
                let joined = conn
                    .hub()
                    .join_at(conn.id(), &room, |pos| {
                        ws_context::Message::text(format!("{pos} joined"))
                    })
                    .await;
                assert!(matches!(joined, Ok(Some(_))), "{joined:?}");
                Ok(())
            });
    let server = TestServer::endpoint("/ws/{room}", endpoint).await;
    let mut ann = server.connect("/ws/g").await;
    let (at_join, text) = parts(ann.recv_text().await);
    assert_eq!(text, "joined");
    assert_eq!(at_join.parse::<RoomPosition>().unwrap().offset(), 0);
    ann.send_text("first").await;
    let (pos, text) = parts(ann.recv_text().await);
    assert_eq!(text, "first");
    assert_eq!(pos.parse::<RoomPosition>().unwrap().offset(), 1);
    // A member greeted now is at 1, and gets only what follows.
    let mut bob = server.connect("/ws/g").await;
    let (bob_at, _) = parts(bob.recv_text().await);
    assert_eq!(bob_at, pos);
    ann.send_text("second").await;
    assert_eq!(parts(bob.recv_text().await).1, "second");
}

/// A shared history in memory, as a backplane would keep it, whose live deliveries can be
/// lost on the way (as pub/sub messages are while Redis drops a connection).
#[derive(Clone, Default)]
struct LossyShared(std::sync::Arc<std::sync::Mutex<Lossy>>);

#[derive(Default)]
struct Lossy {
    entries: Vec<ws_context::Message>,
    inbound: Option<ws_context::Inbound>,
    lose_next: usize,
}

impl LossyShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lossy> {
        self.0.lock().unwrap()
    }
}

fn at(offset: usize) -> RoomPosition {
    RoomPosition::new("e", offset as u64)
}

impl ws_context::Backplane for LossyShared {
    fn publish(&self, _: ws_context::Envelope) -> Result<(), ws_context::BackplaneError> {
        Ok(())
    }
    fn attach(&self, inbound: ws_context::Inbound) {
        self.lock().inbound = Some(inbound);
    }
    fn status(&self) -> ws_context::BackplaneStatus {
        ws_context::BackplaneStatus::Up
    }
    fn shared_history(&self) -> bool {
        true
    }
    fn room_position(
        &self,
        _: &str,
    ) -> ws_context::HistoryFuture<'_, Result<RoomPosition, ws_context::BackplaneError>> {
        let len = self.lock().entries.len();
        Box::pin(async move { Ok(at(len)) })
    }
    fn append(
        &self,
        room: &str,
        _: &str,
        position: RoomPosition,
        message: ws_context::Message,
    ) -> ws_context::HistoryFuture<'_, Result<ws_context::Appended, ws_context::BackplaneError>>
    {
        let mut state = self.lock();
        let next = state.entries.len() + 1;
        let answer = if position.offset() != next as u64 {
            ws_context::Appended::Moved(at(next - 1))
        } else {
            state.entries.push(message.clone());
            if state.lose_next > 0 {
                state.lose_next -= 1;
            } else if let Some(inbound) = &state.inbound {
                inbound.deliver_entry(room, at(next), message);
            }
            ws_context::Appended::At(at(next))
        };
        Box::pin(async move { Ok(answer) })
    }
    fn history_since(
        &self,
        _: &str,
        since: &RoomPosition,
    ) -> ws_context::HistoryFuture<
        '_,
        Result<(Vec<ws_context::HistoryEntry>, RoomPosition), RecoveryError>,
    > {
        let state = self.lock();
        let from = since.offset() as usize;
        let missed: Vec<ws_context::HistoryEntry> = state
            .entries
            .iter()
            .enumerate()
            .skip(from)
            .map(|(i, message)| (at(i + 1), message.clone()))
            .collect();
        let last = at(state.entries.len());
        Box::pin(async move { Ok((missed, last)) })
    }
}

/// Messages that never arrived live (a gap in the offsets) are read back from the shared
/// history before the next one: the member gets every message once, in order.
#[tokio::test]
async fn a_gap_in_live_delivery_is_filled_from_the_shared_history() {
    let backplane = LossyShared::default();
    let hub = ConnectionHub::with_backplane(backplane.clone());
    hub.set_history_limits(100, Duration::from_secs(60));
    let server = room_server(&hub).await;
    let mut ann = server.connect("/ws/gap").await;
    eventually("ann joined", || hub.room_members("gap").len() == 1).await;
    for n in 1..=6 {
        if n == 3 {
            backplane.lock().lose_next = 2;
        }
        let sent = hub
            .send_to_room("gap", ws_context::Message::text(n.to_string()))
            .await;
        assert_eq!(sent.position.map(|p| p.offset()), Some(n));
    }
    for n in 1..=6 {
        assert_eq!(ann.recv_text().await, n.to_string(), "each once, in order");
    }
}
