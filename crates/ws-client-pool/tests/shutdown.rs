//! Shutting the pool down.

use std::time::Duration;

use http::HeaderMap;
use ws_client_pool::{PoolError, ServiceState, WsClientPool};

use ws_test::eventually_within;

use crate::support::{WAIT, free_addr, pool_with};
use test_support::{Behaviour, Service};

#[tokio::test]
async fn shutdown_sends_what_is_queued_then_close_1001_and_stops_every_task() {
    let service = Service::start(Behaviour::default()).await;
    let down = free_addr();
    let pool = WsClientPool::new();
    pool.add_ws_service(
        "up",
        &service.url(),
        HeaderMap::new(),
        true,
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    pool.add_ws_service(
        "down",
        &format!("ws://{down}/ws"),
        HeaderMap::new(),
        true,
        Duration::from_millis(20),
    )
    .await
    .unwrap();
    for i in 0..100 {
        pool.write_message_to_service("up", &format!("{i}"))
            .unwrap();
    }
    tokio::time::timeout(WAIT, pool.shutdown())
        .await
        .expect("shutdown ends even with a service that is down");

    eventually_within(WAIT, "the close frame arrives", || {
        !service.log.close_codes.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*service.log.close_codes.lock().unwrap(), [1001]);
    assert_eq!(
        service.log.count(),
        100,
        "queued messages went out before the close"
    );
    for name in ["up", "down"] {
        assert_eq!(pool.status(name).unwrap().state, ServiceState::Closed);
        assert!(matches!(
            pool.write_message_to_service(name, "late"),
            Err(PoolError::Closed { .. })
        ));
    }
    assert!(matches!(
        pool.add_ws_service(
            "new",
            &service.url(),
            HeaderMap::new(),
            true,
            Duration::from_secs(1)
        )
        .await,
        Err(PoolError::Closed { .. })
    ));
    // A second shutdown has nothing left to do.
    tokio::time::timeout(WAIT, pool.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_without_reconnection_closes_the_service() {
    let service = Service::start(Behaviour::default()).await;
    let pool = pool_with(&service.url(), false, Duration::from_secs(1)).await;
    service.stop_gracefully().await;
    eventually_within(WAIT, "the service is closed", || {
        pool.status("svc").unwrap().state == ServiceState::Closed
    })
    .await;
    assert!(matches!(
        pool.write_message_to_service("svc", "x"),
        Err(PoolError::Closed { .. })
    ));
}
