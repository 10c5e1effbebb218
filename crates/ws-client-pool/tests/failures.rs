//! Services that stop, die or hang while messages flow.

use std::time::Duration;

use ws_client_pool::{ServiceOptions, ServiceState};

use ws_test::eventually_within;

use crate::support::{WAIT, pool_of, pool_with, state};
use test_support::{Behaviour, Service};

const RETRY: Duration = Duration::from_millis(20);

#[tokio::test]
async fn five_graceful_restarts_under_a_steady_producer_lose_and_repeat_nothing() {
    let mut service = Service::start(Behaviour::default()).await;
    let addr = service.addr;
    let log = service.log.clone();
    let pool = pool_with(&service.url(), true, RETRY).await;

    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for i in 0..1000 {
                tick.tick().await;
                pool.write_message_to_service("svc", &format!("m{i}"))
                    .unwrap();
            }
        })
    };
    for restart in 1..=5 {
        // Restart while the producer is mid-stream: after each further 150 messages.
        eventually_within(WAIT, "the service makes progress", || {
            log.count() >= restart * 150
        })
        .await;
        service.stop_gracefully().await;
        service = Service::restart(addr, log.clone(), Behaviour::default()).await;
    }
    tokio::time::timeout(WAIT, producer).await.unwrap().unwrap();
    eventually_within(WAIT, "all 1000 arrive", || log.count() >= 1000).await;

    let expected: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(log.texts(), expected, "in order, none lost, none twice");
    assert_eq!(*log.connections.lock().unwrap(), 6);
    // The pool answered every close frame: 1001 from the service, echoed back.
    assert_eq!(*log.close_codes.lock().unwrap(), [1001; 5]);
    let status = pool.status("svc").unwrap();
    assert_eq!(status.reconnects, 5);
    assert_eq!(status.possibly_lost, 0);
    assert_eq!(status.state, ServiceState::Connected);
    drop(service);
}

#[tokio::test]
async fn a_killed_service_is_noticed_and_reconnected_to() {
    let service = Service::start(Behaviour::default()).await;
    let addr = service.addr;
    let log = service.log.clone();
    let pool = pool_with(&service.url(), true, RETRY).await;
    pool.write_message_to_service("svc", "before").unwrap();
    eventually_within(WAIT, "the first message arrives", || log.count() == 1).await;

    service.kill().await;
    eventually_within(WAIT, "the pool notices", || {
        state(&pool, "svc") != ServiceState::Connected
    })
    .await;
    let status = pool.status("svc").unwrap();
    assert!(status.last_error.is_some(), "{status:?}");
    // No ping was answered after "before": it may have been lost, and the pool says so.
    assert_eq!(status.possibly_lost, 1, "{status:?}");

    pool.write_message_to_service("svc", "while down").unwrap();
    let _service = Service::restart(addr, log.clone(), Behaviour::default()).await;
    eventually_within(WAIT, "the queued message arrives", || log.count() == 2).await;
    assert_eq!(log.texts(), ["before", "while down"]);
    assert_eq!(pool.status("svc").unwrap().reconnects, 1);
}

#[tokio::test]
async fn a_hung_service_is_dropped_after_an_unanswered_ping_and_possible_loss_is_reported() {
    let ping = Duration::from_millis(200);
    // The first connection reads 5 messages, then hangs without closing anything.
    let service = Service::start(Behaviour {
        freeze_after: Some(5),
        ..Default::default()
    })
    .await;
    let pool = pool_of(
        ServiceOptions::builder(service.url())
            .reconnect(ws_client_pool::Reconnect::fixed(RETRY))
            .ping_interval(ping),
    )
    .await;
    for i in 0..5 {
        pool.write_message_to_service("svc", &format!("read {i}"))
            .unwrap();
    }
    eventually_within(WAIT, "5 messages are read", || service.log.count() == 5).await;
    // These sit in the kernels' buffers of the hung connection.
    for i in 0..20 {
        pool.write_message_to_service("svc", &format!("stuck {i}"))
            .unwrap();
    }
    eventually_within(WAIT, "all 25 are written", || {
        pool.status("svc").unwrap().sent == 25
    })
    .await;
    let hung_at = tokio::time::Instant::now();

    // The second connection is served normally.
    eventually_within(WAIT, "the pool reconnects", || {
        pool.status("svc").unwrap().reconnects == 1
    })
    .await;
    // One interval to the unanswered ping, one more to give up on it, plus scheduling slack.
    assert!(
        hung_at.elapsed() < ping * 2 + Duration::from_secs(1),
        "{:?}",
        hung_at.elapsed()
    );
    let status = pool.status("svc").unwrap();
    assert!(
        (20..=25).contains(&status.possibly_lost),
        "the 20 unread messages are reported: {status:?}"
    );
    let (_, error) = status.last_error.unwrap();
    assert!(error.contains("ping"), "{error}");

    pool.write_message_to_service("svc", "after").unwrap();
    eventually_within(WAIT, "the new connection carries it", || {
        service.log.texts().last().map(String::as_str) == Some("after")
    })
    .await;
    assert_eq!(
        service.log.count(),
        6,
        "the stuck messages were lost, not sent twice"
    );
}
