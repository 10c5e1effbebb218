//! The first dial, and what is refused before any dial.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::{io::AsyncReadExt as _, net::TcpListener, sync::mpsc};
use ws_client_pool::{ConfigError, PoolError, ServiceOptions, ServiceState, WsClientPool};

use ws_test::eventually_within;

use crate::support::{WAIT, free_addr, pool_of, pool_with, state};
use test_support::{Behaviour, Service};

const RETRY: Duration = Duration::from_millis(50);

#[tokio::test]
async fn connects_to_a_live_service_and_sends_the_handshake_headers() {
    let service = Service::start(Behaviour::default()).await;
    let pool = WsClientPool::new();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer t"));
    pool.add_ws_service("svc", &service.url(), headers, false, RETRY)
        .await
        .unwrap();
    assert_eq!(state(&pool, "svc"), ServiceState::Connected);
    pool.write_message_to_service("svc", "hello").unwrap();
    eventually_within(WAIT, "the message arrives", || {
        service.log.texts() == ["hello"]
    })
    .await;
    assert_eq!(
        *service.log.authorization.lock().unwrap(),
        [Some("Bearer t".to_owned())]
    );
}

#[tokio::test]
async fn first_dial_to_nothing_with_reconnection_returns_ok_and_connects_later() {
    let addr = free_addr();
    let pool = WsClientPool::new();
    pool.add_ws_service(
        "svc",
        &format!("ws://{addr}/ws"),
        HeaderMap::new(),
        true,
        RETRY,
    )
    .await
    .expect("reconnection on: Ok even though nothing listens");
    let status = pool.status("svc").unwrap();
    assert_eq!(status.state, ServiceState::Reconnecting);
    assert!(status.last_error.is_some(), "{status:?}");
    // Written while nobody listens: queued, sent once the service appears.
    pool.write_message_to_service("svc", "early").unwrap();
    assert_eq!(pool.status("svc").unwrap().queued, 1);

    let service = Service::restart(addr, Default::default(), Behaviour::default()).await;
    eventually_within(WAIT, "the queued message arrives", || {
        service.log.texts() == ["early"]
    })
    .await;
    assert_eq!(state(&pool, "svc"), ServiceState::Connected);
    assert_eq!(pool.status("svc").unwrap().queued, 0);
}

#[tokio::test]
async fn first_dial_to_nothing_without_reconnection_is_an_error() {
    let addr = free_addr();
    let pool = WsClientPool::new();
    let error = pool
        .add_ws_service(
            "svc",
            &format!("ws://{addr}/ws"),
            HeaderMap::new(),
            false,
            RETRY,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, PoolError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
    // Not registered: the name is free and writes say so.
    assert!(pool.status("svc").is_none());
    assert!(matches!(
        pool.write_message_to_service("svc", "x"),
        Err(PoolError::ServiceNotFound { .. })
    ));
}

#[tokio::test]
async fn a_bad_url_is_an_error_with_or_without_reconnection() {
    let pool = WsClientPool::new();
    for url in [
        "http://127.0.0.1/ws",
        "127.0.0.1:80/ws",
        "ws://",
        "not a url",
    ] {
        for reconnect in [true, false] {
            let error = pool
                .add_ws_service("svc", url, HeaderMap::new(), reconnect, RETRY)
                .await
                .unwrap_err();
            assert!(
                matches!(error, PoolError::Config(ConfigError::Url { .. })),
                "{url}: {error}"
            );
        }
    }
    assert!(pool.names().is_empty());
}

#[tokio::test]
async fn handshake_headers_and_zero_values_are_refused_up_front() {
    let pool = WsClientPool::new();
    for name in [
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static("x"));
        let error = pool
            .add_ws_service("svc", "ws://127.0.0.1:1/ws", headers, true, RETRY)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                PoolError::Config(ConfigError::ForbiddenHeader { .. })
            ),
            "{error}"
        );
        assert!(error.to_string().contains(name), "{error}");
    }
    let error = pool
        .add_ws_service(
            "svc",
            "ws://127.0.0.1:1/ws",
            HeaderMap::new(),
            true,
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            PoolError::Config(ConfigError::ZeroDuration {
                option: "reconnect",
                ..
            })
        ),
        "{error}"
    );
    let error = ServiceOptions::builder("ws://127.0.0.1:1/ws")
        .queue_capacity(0)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Size {
                option: "queue_capacity",
                value: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_name_is_registered_once() {
    let service = Service::start(Behaviour::default()).await;
    let pool = pool_with(&service.url(), true, RETRY).await;
    let error = pool
        .add_ws_service("svc", &service.url(), HeaderMap::new(), true, RETRY)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PoolError::DuplicateService { .. }),
        "{error}"
    );
}

/// A TCP listener that accepts connections and never answers; the first three bytes of
/// each come out of the receiver. Each connection is then held open (`hold`) or dropped.
async fn silent_listener(hold: bool) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<[u8; 3]>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 3];
                if tcp.read_exact(&mut head).await.is_ok() {
                    let _ = heads.send(head);
                }
                if hold {
                    // Unanswered until the test ends.
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test]
async fn wss_urls_speak_tls() {
    // The first bytes a wss:// client sends are a TLS ClientHello.
    let (addr, mut heads) = silent_listener(false).await;
    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(format!("wss://{addr}/ws"))
        .no_reconnect()
        .build()
        .unwrap();
    let dial = pool.add_ws_service_with("secure", options);
    let (dialled, head) = tokio::time::timeout(WAIT, async { tokio::join!(dial, heads.recv()) })
        .await
        .unwrap();
    // Record type 22 (handshake), protocol major version 3.
    assert_eq!(&head.unwrap()[..2], &[0x16, 0x03]);
    // The listener never answered the TLS handshake: a dial error, not a hang.
    assert!(
        matches!(dialled, Err(PoolError::Connect { .. })),
        "{dialled:?}"
    );
}

#[tokio::test]
async fn a_cancelled_first_dial_leaves_the_name_free() {
    // Accepts TCP but never answers the handshake.
    let (addr, _heads) = silent_listener(true).await;
    let pool = WsClientPool::new();
    let url = format!("ws://{addr}/ws");
    let dial = pool.add_ws_service("svc", &url, HeaderMap::new(), true, RETRY);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), dial)
            .await
            .is_err()
    );
    assert!(pool.status("svc").is_none());
}

#[tokio::test]
async fn exponential_backoff_reconnects_when_the_service_appears() {
    let addr = free_addr();
    let pool = pool_of(
        ServiceOptions::builder(format!("ws://{addr}/ws")).reconnect(
            ws_client_pool::Reconnect::exponential(
                Duration::from_millis(10),
                Duration::from_millis(80),
            ),
        ),
    )
    .await;
    pool.write_message_to_service("svc", "queued").unwrap();
    let service = Service::restart(addr, Default::default(), Behaviour::default()).await;
    eventually_within(WAIT, "the queued message arrives", || {
        service.log.texts() == ["queued"]
    })
    .await;
}
