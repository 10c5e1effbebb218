//! What a hard drop may lose, checked against the kernels' own counts of the bytes they hold.

use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::Message as WireMessage;
use ws_client_pool::{Reconnect, ServiceOptions, ServiceState, WsClientPool};

use ws_test::eventually_within;

use crate::support::WAIT;
use test_support::{Behaviour, Log, Service};

const COUNT: usize = 64;
const SIZE: usize = 64 << 10;
/// One message on the wire: 2 header bytes, a 64-bit length (65536 needs it), the mask, the
/// payload.
const FRAME: usize = 2 + 8 + 4 + SIZE;

/// Message `i`: its index, then filler.
fn message(i: usize) -> Vec<u8> {
    let mut data = vec![0xA5u8; SIZE];
    data[..4].copy_from_slice(&(i as u32).to_be_bytes());
    data
}

fn index(message: &WireMessage) -> usize {
    match message {
        WireMessage::Binary(data) if data.len() == SIZE => {
            u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize
        }
        other => panic!("unexpected message of {} bytes", other.len()),
    }
}

/// `tx_queue` and `rx_queue` of the IPv4 socket from `local` port to `remote` port, from
/// `/proc/net/tcp`: bytes written but not acknowledged by the peer, and bytes received but not
/// read by the application.
fn queues(local: u16, remote: u16) -> Option<(usize, usize)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || port(fields[1])? != local || port(fields[2])? != remote {
            return None;
        }
        let (tx, rx) = fields[4].split_once(':')?;
        Some((
            usize::from_str_radix(tx, 16).ok()?,
            usize::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// The acceptance test of issue 12: a service link that stops reading and is then reset, with
/// 64 messages of 64 KiB queued. Every message that never left arrives after the reconnect,
/// in order, once; `possibly_lost` counts exactly those of which a byte reached the kernel.
#[tokio::test]
async fn a_reset_link_resends_every_message_that_never_left_and_counts_only_those_that_may_have() {
    // The first service: a small receive buffer, so the kernels fill up quickly; it completes
    // the handshake and never reads again.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();

    let pool = WsClientPool::new();
    let options = ServiceOptions::builder(format!("ws://{addr}/ws"))
        .reconnect(Reconnect::fixed(Duration::from_millis(20)))
        // No ping frames between the messages: the byte arithmetic below stays exact.
        .ping_interval(Duration::from_secs(600))
        .build()
        .expect("valid options");
    let accept = async {
        let (tcp, peer) = listener.accept().await.unwrap();
        (tokio_tungstenite::accept_async(tcp).await.unwrap(), peer)
    };
    let (added, (first, peer)) = tokio::join!(pool.add_ws_service_with("svc", options), accept);
    added.unwrap();
    drop(listener);

    for i in 0..COUNT {
        pool.write_message_to_service("svc", &message(i)).unwrap();
    }
    // Wait until the pool is stuck: the kernels' queues and the send queue stop moving.
    let mut last = None;
    let mut stable = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let in_kernels = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link never stalled"
        );
        let (client_tx, _) = queues(peer.port(), addr.port()).expect("the client's socket");
        let (_, server_rx) = queues(addr.port(), peer.port()).expect("the service's socket");
        let now = (client_tx + server_rx, pool.status("svc").unwrap().queued);
        if last == Some(now) && now.0 > 0 {
            stable += 1;
            if stable == 10 {
                break now.0;
            }
        } else {
            stable = 0;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A message may have left if any byte of it did; the service read none of them.
    let may_have_left = in_kernels.div_ceil(FRAME);
    assert!(
        (1..COUNT).contains(&may_have_left),
        "the kernels hold {in_kernels} bytes: the test needs some messages left behind"
    );

    // Reset: SO_LINGER 0, then close. The kernels drop what they held.
    first.get_ref().set_zero_linger().unwrap();
    drop(first);
    let recorder = Service::restart(addr, Log::default(), Behaviour::default()).await;
    eventually_within(WAIT, "the pool reconnects and empties its queue", || {
        let status = pool.status("svc").unwrap();
        status.reconnects == 1 && status.queued == 0 && status.state == ServiceState::Connected
    })
    .await;
    eventually_within(WAIT, "the recorder has everything sent to it", || {
        recorder.log.count() >= COUNT - may_have_left
            || pool.status("svc").unwrap().sent as usize >= COUNT
    })
    .await;
    // Let anything sent twice arrive too.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let recorded: Vec<usize> = recorder
        .log
        .received
        .lock()
        .unwrap()
        .iter()
        .map(index)
        .collect();
    let expected: Vec<usize> = (may_have_left..COUNT).collect();
    assert_eq!(
        recorded, expected,
        "every message that never left, in order, once ({may_have_left} may have left)"
    );
    let status = pool.status("svc").unwrap();
    assert_eq!(
        status.possibly_lost, may_have_left as u64,
        "possibly_lost counts the messages of which a byte reached the kernel: {status:?}"
    );
}
