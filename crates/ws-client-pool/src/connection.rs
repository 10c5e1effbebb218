//! One service: its dial, and the task that owns its socket and reconnects it.

use std::{
    future::poll_fn,
    sync::{Arc, Mutex, OnceLock},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{self, client::IntoClientRequest as _, protocol::frame::coding::CloseCode},
};
use ws_message::{Bytes, Message, Utf8Bytes, close_code};

use crate::{
    ServiceOptions, ServiceState,
    queue::SendQueue,
    status::{ServiceStatus, Tracker},
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames written before one flush at most, so a busy queue still flushes regularly.
const BATCH: usize = 64;

/// One registered service, shared by the pool (writers, status) and its connection task.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) options: ServiceOptions,
    pub(crate) queue: SendQueue,
    pub(crate) tracker: Tracker,
    /// Where received messages go; `None` until someone asks for them.
    pub(crate) inbound: Mutex<Option<mpsc::Sender<Message>>>,
}

impl Service {
    pub(crate) fn new(name: &str, options: ServiceOptions) -> Self {
        Service {
            name: name.to_owned(),
            queue: SendQueue::new(options.queue_capacity),
            tracker: Tracker::new(name),
            inbound: Mutex::new(None),
            options,
        }
    }

    pub(crate) fn status(&self) -> ServiceStatus {
        self.tracker.snapshot(&self.options.url, self.queue.len())
    }

    fn inbound(&self) -> Option<mpsc::Sender<Message>> {
        self.inbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn requeue(&self, message: Message) {
        let depth = self.queue.push_front(message);
        self.tracker.queue_depth(depth);
    }
}

/// Dials the service once: TCP, TLS for `wss://`, the handshake, within the connect timeout.
pub(crate) async fn dial(options: &ServiceOptions) -> Result<Socket, String> {
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().extend(options.headers.clone());
    let connector = if options.is_tls() {
        Some(Connector::Rustls(tls_config()?))
    } else {
        None
    };
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector);
    match tokio::time::timeout(options.connect_timeout, connect).await {
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!(
            "no handshake within the connect timeout ({:?})",
            options.connect_timeout
        )),
    }
}

/// rustls with the ring provider and Mozilla's roots (webpki-roots): the same trust on every
/// machine, whatever certificates the OS image carries. Built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                })
                .map_err(|e| format!("TLS setup failed: {e}"))
        })
        .clone()
}

/// Why one connection ended.
enum End {
    /// The pool is shutting down; the service is closed.
    Stopped,
    /// The connection is gone; reconnect if allowed.
    Dropped(String),
}

/// The service's task: owns the socket, reconnects with the policy, stops on `stop`.
pub(crate) async fn run(
    service: Arc<Service>,
    mut socket: Option<Socket>,
    mut stop: watch::Receiver<bool>,
) {
    let policy = service.options.reconnect;
    let mut delays = policy.map(|p| p.delays());
    let mut connected_before = false;
    loop {
        let current = match socket.take() {
            Some(socket) => socket,
            None => {
                let Some(delay) = delays.as_mut().and_then(Iterator::next) else {
                    break;
                };
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stop) => break,
                }
                service.tracker.refresh_gauges(service.queue.len());
                tracing::debug!(service = %service.name, url = %service.options.url, ?delay, "reconnecting to WebSocket service");
                let dialled = tokio::select! {
                    dialled = dial(&service.options) => dialled,
                    () = stopped(&mut stop) => break,
                };
                match dialled {
                    Ok(socket) => socket,
                    Err(error) => {
                        tracing::debug!(service = %service.name, %error, "dial failed");
                        service.tracker.set_error(error);
                        continue;
                    }
                }
            }
        };
        if connected_before {
            service.tracker.reconnected();
        }
        connected_before = true;
        delays = policy.map(|p| p.delays());
        service.tracker.set_state(ServiceState::Connected);
        tracing::info!(service = %service.name, url = %service.options.url, "connected to WebSocket service");
        match drive(&service, current, &mut stop).await {
            End::Stopped => break,
            End::Dropped(reason) => {
                tracing::warn!(service = %service.name, %reason, "WebSocket service connection lost");
                service.tracker.set_error(reason);
                if policy.is_none() {
                    break;
                }
                service.tracker.set_state(ServiceState::Reconnecting);
            }
        }
    }
    service.tracker.set_state(ServiceState::Closed);
    // Ends the reader's stream.
    *service
        .inbound
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    let unsent = service.queue.len();
    if unsent > 0 {
        tracing::warn!(service = %service.name, unsent, "WebSocket service closed with messages still queued");
    }
}

/// Per-connection bookkeeping of what was written and what the service confirmed.
struct Delivery {
    /// Data messages the engine accepted on this connection.
    written: u64,
    /// How many of those the service has read: the count carried by the last answered ping.
    confirmed: u64,
    /// The last data message accepted but not yet flushed: after a failed flush it cannot
    /// have reached the peer whole, so it goes back to the queue.
    unflushed: Option<Message>,
}

impl Delivery {
    /// The write of the unflushed message failed: back to the head of the queue.
    fn requeue_unflushed(&mut self, service: &Service) {
        if let Some(message) = self.unflushed.take() {
            self.written -= 1;
            service.requeue(message);
        }
    }

    /// The connection died without a closing handshake: whatever was not confirmed may be
    /// lost in the kernels' buffers.
    fn report_unconfirmed(&self, service: &Service) {
        let lost = self.written.saturating_sub(self.confirmed);
        if lost > 0 {
            tracing::warn!(service = %service.name, possibly_lost = lost, "messages written but not confirmed before the connection died");
        }
        service.tracker.possibly_lost(lost);
    }
}

/// Runs one connection until it ends: writes the queue, reads into the inbound channel, pings.
async fn drive(service: &Service, socket: Socket, stop: &mut watch::Receiver<bool>) -> End {
    let (mut sink, mut stream) = socket.split();
    let interval = service.options.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut delivery = Delivery {
        written: 0,
        confirmed: 0,
        unflushed: None,
    };
    // A ping to send when the socket takes writes, and the count it carries once sent.
    let mut ping_due = false;
    let mut awaiting_pong: Option<u64> = None;
    let mut batched = 0usize;
    let mut needs_flush = false;
    // A received message waiting for room in the inbound channel; reading pauses meanwhile.
    let mut held: Option<(mpsc::Sender<Message>, Message)> = None;
    // Set when the service sent its close frame: the deadline for it to close the TCP side.
    let mut peer_closing: Option<(Instant, String)> = None;

    let end = loop {
        let may_write =
            peer_closing.is_none() && batched < BATCH && (ping_due || !service.queue.is_empty());
        let close_deadline = peer_closing.as_ref().map(|(deadline, _)| *deadline);
        tokio::select! {
            biased;
            () = stopped(stop) => {
                close(service, &mut sink, &mut stream, &mut delivery).await;
                return End::Stopped;
            }
            frame = stream.next(), if held.is_none() => match frame {
                Some(Ok(tungstenite::Message::Pong(payload))) => {
                    if let Ok(count) = <[u8; 8]>::try_from(payload.as_ref()).map(u64::from_be_bytes)
                        && awaiting_pong == Some(count)
                    {
                        awaiting_pong = None;
                        delivery.confirmed = delivery.confirmed.max(count);
                    }
                }
                Some(Ok(tungstenite::Message::Ping(_))) => needs_flush = true, // the engine queued the pong
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // The engine queued our reply; the service reads until it arrives, so
                    // everything written before it is delivered.
                    needs_flush = true;
                    let reason = match frame {
                        Some(frame) => format!("service closed the connection with {} {:?}", u16::from(frame.code), frame.reason.as_str()),
                        None => "service closed the connection".to_owned(),
                    };
                    peer_closing = Some((Instant::now() + service.options.close_timeout, reason));
                }
                Some(Ok(tungstenite::Message::Frame(_))) => {}
                Some(Ok(data)) => {
                    if let Some(message) = from_engine(data) {
                        service.tracker.received();
                        held = deliver(service, message);
                    }
                }
                // Once our close reply is flushed, however the TCP side ends, the service has
                // everything we wrote before it.
                Some(Err(error)) => break match peer_closing.take() {
                    Some((_, reason)) if !needs_flush => Ok(reason),
                    _ => Err(error.to_string()),
                },
                // The engine ends the stream only after the closing handshake.
                None => break match peer_closing.take() {
                    Some((_, reason)) => Ok(reason),
                    None => Err("connection closed without a close frame".to_owned()),
                },
            },
            permit = reserve(held.as_ref().map(|(inbound, _)| inbound.clone())), if held.is_some() => {
                match (permit, held.take()) {
                    (Ok(permit), Some((_, message))) => {
                        permit.send(message);
                    }
                    // The reader went away.
                    _ => service.tracker.discarded(),
                }
            }
            _ = ping.tick() => {
                service.tracker.refresh_gauges(service.queue.len());
                if held.is_some() {
                    // Reading is paused for a slow reader, so a pong may sit unread: the
                    // service is not at fault. Liveness checks resume with reading.
                    awaiting_pong = None;
                    continue;
                }
                if awaiting_pong.is_some() || ping_due {
                    break Err(format!("no answer to a ping within {interval:?}"));
                }
                ping_due = true;
            }
            // One branch owns the sink: write while something is ready, then flush once.
            (writing, result) = poll_fn(|cx| {
                if may_write {
                    sink.poll_ready_unpin(cx).map(|r| (true, r))
                } else {
                    sink.poll_flush_unpin(cx).map(|r| (false, r))
                }
            }), if may_write || needs_flush => {
                if let Err(error) = result {
                    delivery.requeue_unflushed(service);
                    break Err(error.to_string());
                }
                if !writing {
                    delivery.unflushed = None;
                    needs_flush = false;
                    batched = 0;
                    continue;
                }
                let (frame, message) = if ping_due {
                    ping_due = false;
                    awaiting_pong = Some(delivery.written);
                    (tungstenite::Message::Ping(Bytes::copy_from_slice(&delivery.written.to_be_bytes())), None)
                } else {
                    match service.queue.pop_front() {
                        Some(message) => (to_engine(&message), Some(message)),
                        None => continue,
                    }
                };
                if let Err(error) = sink.start_send_unpin(frame) {
                    if let Some(message) = message {
                        service.requeue(message);
                    }
                    delivery.requeue_unflushed(service);
                    break Err(error.to_string());
                }
                if let Some(message) = message {
                    delivery.written += 1;
                    delivery.unflushed = Some(message);
                    service.tracker.sent();
                    service.tracker.queue_depth(service.queue.len());
                }
                batched += 1;
                needs_flush = true;
            }
            () = service.queue.pushed(), if !may_write && peer_closing.is_none() => {}
            () = sleep_until_opt(close_deadline), if close_deadline.is_some() => {
                break Ok("service sent a close frame but kept the connection open".to_owned());
            }
        }
    };
    match end {
        // A completed closing handshake: the service read up to our close reply.
        Ok(reason) => End::Dropped(reason),
        Err(reason) => {
            delivery.report_unconfirmed(service);
            End::Dropped(reason)
        }
    }
}

/// Shutdown: writes what is still queued, sends close 1001 and waits for the service's reply,
/// all within the close timeout.
async fn close(
    service: &Service,
    sink: &mut futures_util::stream::SplitSink<Socket, tungstenite::Message>,
    stream: &mut futures_util::stream::SplitStream<Socket>,
    delivery: &mut Delivery,
) {
    let handshake = async {
        while let Some(message) = service.queue.pop_front() {
            if let Err(error) = sink.feed(to_engine(&message)).await {
                service.requeue(message);
                return Err(error.to_string());
            }
            delivery.written += 1;
            service.tracker.sent();
        }
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::from(close_code::GOING_AWAY),
            reason: "client shutting down".into(),
        };
        sink.send(tungstenite::Message::Close(Some(frame)))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(tungstenite::Message::Close(_)) => return Ok(()),
                Ok(data) => {
                    if let Some(message) = from_engine(data) {
                        service.tracker.received();
                        // Shutting down: nobody waits for more, so never block here.
                        if let Some(inbound) = service.inbound() {
                            let _ = inbound.try_send(message);
                        }
                    }
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(service.options.close_timeout, handshake).await {
        Ok(Ok(())) => {
            tracing::info!(service = %service.name, "closed WebSocket service connection with 1001")
        }
        Ok(Err(error)) => {
            delivery.report_unconfirmed(service);
            tracing::warn!(service = %service.name, %error, "closing handshake failed");
        }
        Err(_) => {
            delivery.report_unconfirmed(service);
            tracing::warn!(service = %service.name, "no close reply within the close timeout");
        }
    }
    service.tracker.queue_depth(service.queue.len());
}

/// Hands a received message to the reader; returns it when the reader is behind.
fn deliver(service: &Service, message: Message) -> Option<(mpsc::Sender<Message>, Message)> {
    let Some(inbound) = service.inbound() else {
        service.tracker.discarded();
        return None;
    };
    match inbound.try_send(message) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(message)) => Some((inbound, message)),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            service.tracker.discarded();
            None
        }
    }
}

async fn reserve(
    inbound: Option<mpsc::Sender<Message>>,
) -> Result<mpsc::OwnedPermit<Message>, mpsc::error::SendError<()>> {
    match inbound {
        Some(inbound) => inbound.reserve_owned().await,
        None => std::future::pending().await,
    }
}

/// Completes when the pool asks its tasks to stop, or is dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the pool was dropped: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn to_engine(message: &Message) -> tungstenite::Message {
    match message {
        Message::Text(text) => tungstenite::Message::Text(
            tungstenite::Utf8Bytes::try_from(text.as_bytes().clone())
                .unwrap_or_else(|_| tungstenite::Utf8Bytes::from(text.as_str().to_owned())),
        ),
        Message::Binary(data) => tungstenite::Message::Binary(data.clone()),
        Message::Ping(data) => tungstenite::Message::Ping(data.clone()),
        Message::Pong(data) => tungstenite::Message::Pong(data.clone()),
        // A frame that only reports (1005, 1006) goes out without a code.
        Message::Close(frame) => {
            tungstenite::Message::Close(frame.as_ref().filter(|f| f.is_sendable()).map(|f| {
                tungstenite::protocol::CloseFrame {
                    code: CloseCode::from(f.code()),
                    reason: f.reason().into(),
                }
            }))
        }
    }
}

/// Text and binary messages; control frames are the engine's business.
fn from_engine(message: tungstenite::Message) -> Option<Message> {
    match message {
        tungstenite::Message::Text(text) => {
            let bytes = Bytes::from(text);
            Utf8Bytes::try_from_bytes(bytes).ok().map(Message::Text)
        }
        tungstenite::Message::Binary(data) => Some(Message::Binary(data)),
        _ => None,
    }
}
