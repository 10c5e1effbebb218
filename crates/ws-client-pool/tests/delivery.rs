//! Sending in order, the bounded queue, and reading what the service sends.

use std::time::Duration;

use futures_util::StreamExt as _;
use http::HeaderMap;
use tokio_tungstenite::tungstenite::Message as WireMessage;
use ws_client_pool::{Message, PoolError, ServiceOptions, ServiceState, WsClientPool};

use crate::support::{Behaviour, Service, WAIT, eventually, free_addr};

#[tokio::test]
async fn delivers_1000_messages_in_order() {
    let service = Service::start(Behaviour::default()).await;
    let pool = WsClientPool::new();
    pool.add_ws_service(
        "svc",
        &service.url(),
        HeaderMap::new(),
        true,
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    for i in 0..1000 {
        pool.write_message_to_service("svc", &format!("m{i}"))
            .unwrap();
    }
    eventually("1000 messages arrive", || service.log.count() >= 1000).await;
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(service.log.texts(), expected);
    let status = pool.status("svc").unwrap();
    assert_eq!(
        (status.sent, status.queued, status.possibly_lost),
        (1000, 0, 0)
    );
}

#[tokio::test]
async fn values_are_encoded_like_write_message_to_socket() {
    let service = Service::start(Behaviour::default()).await;
    let pool = WsClientPool::new();
    pool.add_ws_service(
        "svc",
        &service.url(),
        HeaderMap::new(),
        false,
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    pool.write_message_to_service("svc", "text").unwrap();
    pool.write_message_to_service("svc", &vec![0u8, 255])
        .unwrap();
    pool.write_message_to_service("svc", &serde_json::json!({"title": "New Message"}))
        .unwrap();
    pool.write_message_to_service("svc", &()).unwrap(); // nothing
    let error = pool
        .write_message_to_service("svc", &Message::Ping(Default::default()))
        .unwrap_err();
    assert!(
        matches!(error, PoolError::NotData { kind: "ping" }),
        "{error}"
    );
    eventually("three messages arrive", || service.log.count() >= 3).await;
    assert_eq!(
        *service.log.received.lock().unwrap(),
        [
            WireMessage::text("text"),
            WireMessage::binary(vec![0u8, 255]),
            WireMessage::text(r#"{"title":"New Message"}"#),
        ]
    );
}

#[tokio::test]
async fn a_full_queue_is_a_typed_error_and_memory_stays_bounded() {
    let addr = free_addr().await;
    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(format!("ws://{addr}/ws"))
        .queue_capacity(10)
        .reconnect(ws_client_pool::Reconnect::fixed(Duration::from_secs(60)))
        .build()
        .expect("valid options");
    pool.add_ws_service_with("svc", options).await.unwrap();
    let payload = "x".repeat(1024);
    for _ in 0..10 {
        pool.write_message_to_service("svc", &payload).unwrap();
    }
    for _ in 0..1000 {
        let error = pool.write_message_to_service("svc", &payload).unwrap_err();
        assert!(
            matches!(error, PoolError::QueueFull { capacity: 10, .. }),
            "{error}"
        );
    }
    // Capacity × message size: 10 messages of 1 KiB held, the other 1000 refused.
    let status = pool.status("svc").unwrap();
    assert_eq!(
        (status.queued, status.state),
        (10, ServiceState::Reconnecting)
    );
}

#[tokio::test]
async fn messages_from_the_service_arrive_through_the_stream() {
    let service = Service::start(Behaviour {
        echo: true,
        ..Default::default()
    })
    .await;
    let pool = WsClientPool::new();
    pool.add_ws_service(
        "svc",
        &service.url(),
        HeaderMap::new(),
        true,
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    let mut messages = pool.messages("svc").unwrap();
    pool.write_message_to_service("svc", "ping me").unwrap();
    pool.write_message_to_service("svc", &vec![1u8, 2, 3])
        .unwrap();
    for _ in 0..100 {
        pool.write_message_to_service("svc", "more").unwrap();
    }
    let next = async |messages: &mut ws_client_pool::ServiceMessages| {
        tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("a message in time")
            .expect("stream open")
    };
    assert_eq!(next(&mut messages).await, Message::text("ping me"));
    assert_eq!(next(&mut messages).await, Message::binary(vec![1u8, 2, 3]));
    for _ in 0..100 {
        assert_eq!(next(&mut messages).await, Message::text("more"));
    }
    assert_eq!(pool.status("svc").unwrap().received, 102);
    // The stream ends with the pool.
    pool.shutdown().await;
    assert_eq!(
        tokio::time::timeout(WAIT, messages.next()).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_slow_reader_pauses_reading_instead_of_buffering_without_limit() {
    let service = Service::start(Behaviour {
        echo: true,
        ..Default::default()
    })
    .await;
    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(service.url())
        .inbound_capacity(4)
        .build()
        .expect("valid options");
    pool.add_ws_service_with("svc", options).await.unwrap();
    let mut messages = pool.messages("svc").unwrap();
    for i in 0..50 {
        pool.write_message_to_service("svc", &format!("{i}"))
            .unwrap();
    }
    eventually("the service echoed everything", || {
        service.log.count() == 50
    })
    .await;
    // Nothing is lost while the reader catches up.
    for i in 0..50 {
        let message = tokio::time::timeout(WAIT, messages.recv()).await.unwrap();
        assert_eq!(message, Some(Message::text(format!("{i}"))));
    }
    assert_eq!(pool.status("svc").unwrap().discarded, 0);
}

#[tokio::test]
async fn a_paused_reader_is_not_mistaken_for_a_dead_service() {
    let ping = Duration::from_millis(50);
    let service = Service::start(Behaviour {
        echo: true,
        ..Default::default()
    })
    .await;
    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(service.url())
        .inbound_capacity(1)
        .ping_interval(ping)
        .build()
        .expect("valid options");
    pool.add_ws_service_with("svc", options).await.unwrap();
    let mut messages = pool.messages("svc").unwrap();
    for i in 0..5 {
        pool.write_message_to_service("svc", &format!("{i}"))
            .unwrap();
    }
    eventually("the service echoed everything", || service.log.count() == 5).await;
    // Nobody reads for several ping intervals: reading the socket pauses, the pongs wait
    // unread, and the connection must stay.
    let until = tokio::time::Instant::now() + ping * 6;
    while tokio::time::Instant::now() < until {
        let status = pool.status("svc").unwrap();
        assert_eq!(
            (status.state, status.reconnects),
            (ServiceState::Connected, 0)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..5 {
        let message = tokio::time::timeout(WAIT, messages.recv()).await.unwrap();
        assert_eq!(message, Some(Message::text(format!("{i}"))));
    }
}
