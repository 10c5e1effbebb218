//! The per-message pieces of the framework path, without sockets: `bind` (decode) and encode
//! of messages, and the hub's fan-out. Run with `cargo bench -p bench`.
#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented public function"
)]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use bench::Event;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use tokio::{net::TcpListener, sync::Semaphore};
use ws_context::{ConnectionHub, Context, Endpoint};
use ws_message::{Message, decode, encode, encode_owned};

const EVENT: &str = r#"{"id":42,"kind":"order.created","user":"user-4711","tags":["alpha","beta","gamma"],"score":12.5,"active":true,"note":"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"}"#;

fn codec(c: &mut Criterion) {
    let text = Message::text("0123456789abcdef0123456789abcdef");
    let binary = Message::binary(vec![7u8; 64 * 1024]);
    let json = Message::text(EVENT);

    c.bench_function("decode Message (32 B text)", |b| {
        b.iter(|| decode::<Message>(black_box(&text)))
    });
    c.bench_function("decode String (32 B text)", |b| {
        b.iter(|| decode::<String>(black_box(&text)))
    });
    c.bench_function("decode Bytes (64 KiB binary)", |b| {
        b.iter(|| decode::<bytes::Bytes>(black_box(&binary)))
    });
    c.bench_function("decode struct (200 B JSON)", |b| {
        b.iter(|| decode::<Event>(black_box(&json)))
    });
    // A handler's reply: moved into the message.
    c.bench_function("encode Message (32 B text)", |b| {
        b.iter_batched(|| text.clone(), encode_owned, BatchSize::SmallInput)
    });
    // `write_message_to_socket(&message)`: borrowed, the payload shared.
    c.bench_function("encode &Message (32 B text)", |b| {
        b.iter(|| encode(black_box(&text)))
    });
    let event: Event = decode(&json).expect("valid JSON");
    c.bench_function("encode struct (200 B JSON)", |b| {
        b.iter(|| encode(black_box(&event)))
    });
}

/// Connections the fan-out bench opens.
const RECEIVERS: usize = 1000;

/// `ConnectionHub::broadcast` to 1,000 real connections on 127.0.0.1, timed until the last
/// client has the message: the queueing, each connection's write and the wake-ups.
fn hub_fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (hub, received) = runtime.block_on(serve_receivers(RECEIVERS));
    let message = Message::text("0123456789abcdef0123456789abcdef");
    c.bench_function(
        "hub broadcast to 1,000 connections until all received",
        |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        let queued = hub.broadcast(message.clone()).await;
                        assert_eq!(queued, RECEIVERS, "every connection takes the message");
                        let all = u32::try_from(RECEIVERS).expect("fits");
                        received.acquire_many(all).await.expect("open").forget();
                    }
                    start.elapsed()
                })
            })
        },
    );
}

/// An endpoint on 127.0.0.1:0 and `count` clients connected to it, each adding a permit to
/// the returned semaphore for every message it receives.
async fn serve_receivers(count: usize) -> (ConnectionHub, Arc<Semaphore>) {
    async fn echo(ctx: Context) -> Result<Message, ws_context::BindError> {
        ctx.bind()
    }
    let hub = ConnectionHub::new();
    let router = axum::Router::new().route(
        "/ws",
        Endpoint::new(echo)
            .hub(hub.clone())
            .into_route()
            .expect("valid endpoint options"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let received = Arc::new(Semaphore::new(0));
    for _ in 0..count {
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("connect");
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(Ok(_)) = client.next().await {
                received.add_permits(1);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.len() < count {
        assert!(Instant::now() < deadline, "connections did not register");
        tokio::task::yield_now().await;
    }
    (hub, received)
}

criterion_group!(benches, codec, hub_fan_out);
criterion_main!(benches);
