//! Sending in order, the bounded queue, and reading what the service sends.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message as WireMessage;
use ws_client_pool::{
    Message, PoolError, ServiceMessages, ServiceOptions, ServiceOptionsBuilder, ServiceState,
    WsClientPool,
};

use ws_test::eventually_within;

use crate::support::{WAIT, free_addr, pool_of, pool_with};
use test_support::{Behaviour, Service};

#[tokio::test]
async fn delivers_1000_messages_in_order() {
    let service = Service::start(Behaviour::default()).await;
    let pool = pool_with(&service.url(), true, Duration::from_millis(50)).await;
    for i in 0..1000 {
        pool.write_message_to_service("svc", &format!("m{i}"))
            .unwrap();
    }
    eventually_within(WAIT, "1000 messages arrive", || service.log.count() >= 1000).await;
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
    let pool = pool_with(&service.url(), false, Duration::from_secs(1)).await;
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
    eventually_within(WAIT, "three messages arrive", || service.log.count() >= 3).await;
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
    let addr = free_addr();
    let pool = pool_of(
        ServiceOptions::builder(format!("ws://{addr}/ws"))
            .queue_capacity(10)
            .reconnect(ws_client_pool::Reconnect::fixed(Duration::from_secs(60))),
    )
    .await;
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
    let pool = pool_with(&service.url(), true, Duration::from_millis(50)).await;
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

/// An echo service and a pool reading it as `options` say: `count` numbers written, and
/// echoed by the service, none read by the pool's reader yet (returned).
async fn echoed_unread(
    count: usize,
    options: impl FnOnce(ServiceOptionsBuilder) -> ServiceOptionsBuilder,
) -> (Service, WsClientPool, ServiceMessages) {
    let service = Service::start(Behaviour {
        echo: true,
        ..Default::default()
    })
    .await;
    let pool = pool_of(options(ServiceOptions::builder(service.url()))).await;
    let messages = pool.messages("svc").unwrap();
    for i in 0..count {
        pool.write_message_to_service("svc", &format!("{i}"))
            .unwrap();
    }
    eventually_within(WAIT, "the service echoed everything", || {
        service.log.count() == count
    })
    .await;
    (service, pool, messages)
}

/// Reads the numbers `0..count` from `messages`, in order.
async fn read_numbers(messages: &mut ServiceMessages, count: usize) {
    for i in 0..count {
        let message = tokio::time::timeout(WAIT, messages.recv()).await.unwrap();
        assert_eq!(message, Some(Message::text(format!("{i}"))));
    }
}

#[tokio::test]
async fn a_slow_reader_pauses_reading_instead_of_buffering_without_limit() {
    let (_service, pool, mut messages) =
        echoed_unread(50, |options| options.inbound_capacity(4)).await;
    // Nothing is lost while the reader catches up.
    read_numbers(&mut messages, 50).await;
    assert_eq!(pool.status("svc").unwrap().discarded, 0);
}

#[tokio::test]
async fn a_paused_reader_is_not_mistaken_for_a_dead_service() {
    let ping = Duration::from_millis(50);
    let (_service, pool, mut messages) =
        echoed_unread(5, |options| options.inbound_capacity(1).ping_interval(ping)).await;
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
    read_numbers(&mut messages, 5).await;
}
