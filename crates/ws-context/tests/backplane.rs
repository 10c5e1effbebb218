//! The fan-out seam: two hubs ("instances") linked by an in-memory backplane share rooms and
//! broadcasts, with handlers unchanged.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use ws_context::{
    Backplane, BackplaneError, BackplaneFuture, CloseFrame, Connection, ConnectionHub, Context,
    Endpoint, Envelope, Inbound,
};

use crate::support::{connect, eventually, next_data, serve};

/// Links hubs in one process: one bounded queue, one reader delivering to every hub in order.
#[derive(Clone)]
struct MemoryBus {
    tx: mpsc::Sender<Envelope>,
    hubs: Arc<Mutex<Vec<Inbound>>>,
    interests: Arc<Mutex<Vec<String>>>,
}

impl MemoryBus {
    fn new() -> Self {
        let (tx, mut rx) = mpsc::channel::<Envelope>(64);
        let hubs: Arc<Mutex<Vec<Inbound>>> = Arc::default();
        let reader_hubs = hubs.clone();
        tokio::spawn(async move {
            while let Some(envelope) = rx.recv().await {
                let hubs = reader_hubs.lock().unwrap().clone();
                for hub in hubs {
                    hub.deliver(envelope.clone()).await;
                }
            }
        });
        MemoryBus {
            tx,
            hubs,
            interests: Arc::default(),
        }
    }
}

impl Backplane for MemoryBus {
    fn publish(&self, envelope: Envelope) -> Result<(), BackplaneError> {
        self.tx
            .try_send(envelope)
            .map_err(|error| BackplaneError::Unavailable(error.to_string()))
    }

    fn join_interest(&self, room: &str) -> BackplaneFuture<'_> {
        self.interests.lock().unwrap().push(format!("+{room}"));
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave_interest(&self, room: &str) {
        self.interests.lock().unwrap().push(format!("-{room}"));
    }

    fn attach(&self, inbound: Inbound) {
        self.hubs.lock().unwrap().push(inbound);
    }
}

async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    conn.hub()
        .join(conn.id(), conn.path_param("room").unwrap_or("lobby"))
        .await;
    Ok(())
}

async fn to_room(ctx: Context) -> Result<(), anyhow::Error> {
    let text: String = ctx.bind()?;
    let room = ctx.path_param("room").unwrap_or("lobby");
    ctx.hub()
        .send_to_room(room, ws_context::Message::text(text))
        .await;
    Ok(())
}

async fn instance(hub: &ConnectionHub) -> std::net::SocketAddr {
    let endpoint = Endpoint::new(to_room)
        .hub(hub.clone())
        .on_connect(join_room);
    serve(axum::Router::new().route(
        "/ws/{room}",
        endpoint.into_route().expect("valid endpoint options"),
    ))
    .await
}

#[tokio::test]
async fn rooms_and_broadcasts_span_hubs_linked_by_a_backplane() {
    let bus = MemoryBus::new();
    let hub_a = ConnectionHub::with_backplane(bus.clone());
    let hub_b = ConnectionHub::with_backplane(bus.clone());
    let (addr_a, addr_b) = (instance(&hub_a).await, instance(&hub_b).await);

    let mut on_a = connect(addr_a, "/ws/red").await;
    let mut on_b = connect(addr_b, "/ws/red").await;
    let mut other_room = connect(addr_b, "/ws/blue").await;
    eventually("all joined", || {
        hub_a.room_members("red").len() == 1 && hub_b.rooms().len() == 2
    })
    .await;

    // A handler on instance A reaches the room's member on instance B, once.
    futures_util::SinkExt::send(&mut on_a, Message::text("hi red"))
        .await
        .unwrap();
    assert_eq!(next_data(&mut on_a).await, Message::text("hi red"));
    assert_eq!(next_data(&mut on_b).await, Message::text("hi red"));
    // A broadcast from B reaches everyone on both; blue saw nothing of red before it.
    assert_eq!(hub_b.broadcast(ws_context::Message::text("all")).await, 2);
    for client in [&mut on_a, &mut on_b, &mut other_room] {
        assert_eq!(next_data(client).await, Message::text("all"));
    }

    on_a.close(None).await.unwrap();
    eventually("the last local member left red on A", || {
        bus.interests
            .lock()
            .unwrap()
            .iter()
            .filter(|i| *i == "-red")
            .count()
            == 1
    })
    .await;
    let interests = bus.interests.lock().unwrap().clone();
    assert_eq!(
        interests.iter().filter(|i| *i == "+red").count(),
        2,
        "{interests:?}"
    );
}

#[test]
fn a_hub_without_a_backplane_is_standalone() {
    let hub = ConnectionHub::new();
    assert_eq!(
        hub.backplane_status(),
        ws_context::BackplaneStatus::Standalone
    );
    assert!(hub.nodes().is_empty());
    assert!(hub.origin().starts_with(ws_context::node_id()));
}
