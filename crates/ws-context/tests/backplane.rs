//! The fan-out seam: two hubs ("instances") linked by an in-memory backplane share rooms and
//! broadcasts, with handlers unchanged.

use std::sync::{Arc, Mutex};

use test_support::room_chat;
use tokio::sync::mpsc;
use ws_context::{Backplane, BackplaneError, BackplaneFuture, ConnectionHub, Envelope, Inbound};
use ws_test::{TestServer, eventually};

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

/// One instance: `hub` serving the room chat.
async fn instance(hub: &ConnectionHub) -> TestServer {
    TestServer::router_with_hub(room_chat(hub, |endpoint| endpoint), hub.clone()).await
}

#[tokio::test]
async fn rooms_and_broadcasts_span_hubs_linked_by_a_backplane() {
    let bus = MemoryBus::new();
    let hub_a = ConnectionHub::with_backplane(bus.clone());
    let hub_b = ConnectionHub::with_backplane(bus.clone());
    let (a, b) = (instance(&hub_a).await, instance(&hub_b).await);

    let mut on_a = a.connect("/ws/red").await;
    let mut on_b = b.connect("/ws/red").await;
    let mut other_room = b.connect("/ws/blue").await;
    eventually("all joined", || {
        hub_a.room_members("red").len() == 1 && hub_b.rooms().len() == 2
    })
    .await;

    // A handler on instance A reaches the room's member on instance B, once.
    on_a.send_text("hi red").await;
    assert_eq!(on_a.recv_text().await, "hi red");
    assert_eq!(on_b.recv_text().await, "hi red");
    // A broadcast from B reaches everyone on both; blue saw nothing of red before it.
    assert_eq!(hub_b.broadcast(ws_context::Message::text("all")).await, 2);
    for client in [&mut on_a, &mut on_b, &mut other_room] {
        assert_eq!(client.recv_text().await, "all");
    }

    on_a.close(1000, "").await;
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
