//! One service: its dial, and the task that owns its socket and reconnects it.
//!
//! [`run`] is the service's task: dial, drive the connection until it ends, wait the policy's
//! delay, dial again. A connection is driven by a [`Link`], which owns the socket's two halves
//! and the state below; each turn waits for one event, hands it to one method, and either goes
//! on or ends the connection with an [`Outcome`].
//!
//! # State
//!
//! | field | values | meaning |
//! |---|---|---|
//! | `liveness` | `Quiet`, `PingDue`, `AwaitingPong(n)` | the liveness check; `n` is the count of messages the ping confirms |
//! | `batched`, `needs_flush` | frames since the last flush; whether one is owed | writes are coalesced, at most [`BATCH`] per flush |
//! | `held` | a received message, or none | the reader is behind: reading the socket pauses |
//! | `peer_closing` | deadline and reason, or none | the service sent its close frame |
//! | `delivery` | handed, confirmed, unsent | what was written, what the service confirmed, what never reached the kernel |
//!
//! # Transitions
//!
//! | event | method | effect |
//! |---|---|---|
//! | the pool stops | [`Link::shutdown`] | write what is queued, close 1001, wait for the reply (close timeout) |
//! | a frame (or the end of the stream) | [`Link::on_frame`] | pong: `AwaitingPong(n)` → `Quiet`, `n` confirmed; ping: `needs_flush`; close: `peer_closing`; data: to the reader or `held`; a message over the limits: close 1009, failed; an error or end: graceful after our close reply, else failed |
//! | room in the inbound channel | [`Link::on_room`] | `held` → none, reading resumes |
//! | the ping interval | [`Link::on_ping_tick`] | `Quiet` → `PingDue`; still `PingDue` or `AwaitingPong`: failed (while `held`, the check is suspended) |
//! | the socket takes a write | [`Link::on_writable`] | `PingDue` → `AwaitingPong(handed)` and a ping, else the next queued message; `batched += 1` |
//! | the socket is flushed | [`Link::on_writable`] | `batched = 0`, `needs_flush = false` |
//! | the close deadline | (in the loop) | graceful: the service closed and kept the TCP side open |
//! | the connection ends | [`Link::finish`] | unsent messages back to the head of the queue; if failed, unconfirmed ones reported as `possibly_lost` |
//!
//! The write side may write while the service has not sent a close frame, fewer than [`BATCH`]
//! frames wait for a flush, and a ping is due or the queue is not empty; otherwise it flushes
//! when a flush is owed, and waits for a push to the queue.
//!
//! # What may have left
//!
//! Every data message handed to the engine is kept in `delivery.unsent` until the [`Ledger`]
//! (see `wire.rs`) says the kernel took one of its bytes. When the connection ends, whatever
//! is still there goes back to the head of the send queue, in order, for the next connection;
//! the rest may have reached the service. Of those, the ones a pong confirmed did; the others
//! are `possibly_lost` when the connection failed, and delivered when it closed gracefully.

use std::{
    collections::VecDeque,
    future::poll_fn,
    ops::ControlFlow,
    sync::{Arc, Mutex, OnceLock},
};

use futures_util::{
    SinkExt as _, StreamExt as _,
    stream::{SplitSink, SplitStream},
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, watch},
    time::{Instant, Interval, MissedTickBehavior},
};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self, Message as WireMessage,
        client::IntoClientRequest as _,
        protocol::{WebSocketConfig, frame::coding::CloseCode},
    },
};
use ws_message::{Bytes, Message, Utf8Bytes, close_code};

use crate::{
    ServiceOptions, ServiceState,
    queue::SendQueue,
    status::{ServiceStatus, Tracker},
    wire::{Counted, Ledger, Tap},
};

/// The byte stream under the engine: TCP counted by the kernel, TLS for `wss://`, and the tap
/// that follows the frames.
type Socket = WebSocketStream<Tap<MaybeTlsStream<Counted<TcpStream>>>>;

/// Frames written before one flush at most, so a busy queue still flushes regularly.
const BATCH: usize = 64;

/// A message over the limits: RFC 6455's "message too big".
const MESSAGE_TOO_BIG: u16 = 1009;

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
        self.tracker
            .snapshot(&self.options.shown_url(), self.queue.len())
    }

    fn inbound(&self) -> Option<mpsc::Sender<Message>> {
        self.inbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// An established connection: the socket and what its wrappers measure.
pub(crate) struct Connection {
    socket: Socket,
    ledger: Arc<Ledger>,
}

/// Dials the service once: TCP, TLS for `wss://`, the handshake, within the connect timeout.
pub(crate) async fn dial(options: &ServiceOptions) -> Result<Connection, String> {
    match tokio::time::timeout(options.connect_timeout, connect(options)).await {
        Ok(connected) => connected,
        Err(_) => Err(format!(
            "no handshake within the connect timeout ({:?})",
            options.connect_timeout
        )),
    }
}

async fn connect(options: &ServiceOptions) -> Result<Connection, String> {
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().extend(options.headers.clone());
    let uri = request.uri();
    let host = uri
        .host()
        .map(|host| {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .ok_or_else(|| format!("no host in {}", options.url))?;
    let port = uri
        .port_u16()
        .unwrap_or(if options.is_tls() { 443 } else { 80 });
    let ledger = Arc::new(Ledger::default());
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("TCP connection to {host}:{port} failed: {e}"))?;
    let tcp = Counted::new(tcp, ledger.clone());
    let transport = if options.is_tls() {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        let tls = TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(options.max_message_size))
        .max_frame_size(Some(options.max_frame_size));
    let (socket, _response) = tokio_tungstenite::client_async_with_config(
        request,
        Tap::new(transport, ledger.clone()),
        Some(config),
    )
    .await
    .map_err(|e| e.to_string())?;
    ledger.start();
    Ok(Connection { socket, ledger })
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
    mut socket: Option<Connection>,
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
                tracing::debug!(service = %service.name, url = %service.options.shown_url(), ?delay, "reconnecting to WebSocket service");
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
        tracing::info!(service = %service.name, url = %service.options.shown_url(), "connected to WebSocket service");
        match Link::new(&service, current).drive(&mut stop).await {
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

/// How one connection ended, as far as delivery is concerned.
enum Outcome {
    /// A completed closing handshake: the service read everything written before it.
    Graceful(String),
    /// Anything else: what the kernels held may be lost.
    Failed(String),
}

/// One turn of the loop: go on, or the connection is over.
type Turn = ControlFlow<Outcome>;

/// Where the liveness check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Nothing outstanding.
    Quiet,
    /// A ping is to be written as soon as the socket takes writes.
    PingDue,
    /// A ping carrying this count of written messages went out; its pong has not come back.
    AwaitingPong(u64),
}

/// Per-connection bookkeeping of what was written, what may have left and what the service
/// confirmed.
struct Delivery {
    ledger: Arc<Ledger>,
    /// Data messages handed to the engine on this connection.
    handed: u64,
    /// How many of those the service has read: the count carried by the last answered ping.
    confirmed: u64,
    /// The last `unsent.len()` messages handed, oldest first: not one byte of them has reached
    /// the kernel (as far as the ledger knows), so they can go to the next connection.
    unsent: VecDeque<Message>,
}

impl Delivery {
    fn new(ledger: Arc<Ledger>) -> Self {
        Delivery {
            ledger,
            handed: 0,
            confirmed: 0,
            unsent: VecDeque::new(),
        }
    }

    /// A data message goes to the engine.
    fn hand_over(&mut self, message: Message) {
        self.handed += 1;
        self.unsent.push_back(message);
    }

    /// Messages of which the kernel took a byte: those that may have reached the service.
    fn left(&self) -> u64 {
        self.ledger.left().min(self.handed)
    }

    /// Forgets the messages that have left.
    fn settle(&mut self) {
        let left = self.left();
        let first_unsent = self.handed - self.unsent.len() as u64;
        for _ in first_unsent..left {
            self.unsent.pop_front();
        }
    }

    /// A pong confirmed that the service read the first `count` messages.
    fn confirm(&mut self, count: u64) {
        self.confirmed = self.confirmed.max(count);
    }

    /// The connection is over: what never left goes back to the head of the queue, in order.
    fn requeue_unsent(&mut self, service: &Service) {
        self.settle();
        if self.unsent.is_empty() {
            return;
        }
        let count = self.unsent.len();
        let depth = service.queue.requeue(self.unsent.drain(..));
        service.tracker.queue_depth(depth);
        tracing::debug!(service = %service.name, count, "messages that never left requeued for the next connection");
    }

    /// The connection died without a closing handshake: what may have left and was not
    /// confirmed may be lost in the kernels' buffers.
    fn report_unconfirmed(&self, service: &Service) {
        let lost = self.left().saturating_sub(self.confirmed);
        if lost > 0 {
            tracing::warn!(service = %service.name, possibly_lost = lost, "messages written but not confirmed before the connection died");
        }
        service.tracker.possibly_lost(lost);
    }
}

/// One connection's task: writes the queue, reads into the inbound channel, pings.
struct Link<'a> {
    service: &'a Service,
    sink: SplitSink<Socket, WireMessage>,
    stream: SplitStream<Socket>,
    ping: Interval,
    liveness: Liveness,
    /// Frames written since the last flush.
    batched: usize,
    /// Something was written (by us, or by the engine: a pong, a close reply) and not flushed.
    needs_flush: bool,
    /// A received message waiting for room in the inbound channel; reading pauses meanwhile.
    held: Option<(mpsc::Sender<Message>, Message)>,
    /// Set when the service sent its close frame: the deadline for it to close the TCP side.
    peer_closing: Option<(Instant, String)>,
    delivery: Delivery,
}

impl<'a> Link<'a> {
    fn new(service: &'a Service, connection: Connection) -> Self {
        let (sink, stream) = connection.socket.split();
        let interval = service.options.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Link {
            service,
            sink,
            stream,
            ping,
            liveness: Liveness::Quiet,
            batched: 0,
            needs_flush: false,
            held: None,
            peer_closing: None,
            delivery: Delivery::new(connection.ledger),
        }
    }

    /// Runs the connection until it ends.
    async fn drive(mut self, stop: &mut watch::Receiver<bool>) -> End {
        let outcome = loop {
            let may_write = self.may_write();
            let close_deadline = self.peer_closing.as_ref().map(|(deadline, _)| *deadline);
            let sink = &mut self.sink;
            let turn = tokio::select! {
                biased;
                () = stopped(stop) => return self.shutdown().await,
                frame = self.stream.next(), if self.held.is_none() => self.on_frame(frame).await,
                permit = reserve(self.held.as_ref().map(|(inbound, _)| inbound.clone())), if self.held.is_some() => self.on_room(permit),
                _ = self.ping.tick() => self.on_ping_tick(),
                // One branch owns the sink: write while something is ready, then flush once.
                (writing, result) = poll_fn(|cx| {
                    if may_write {
                        sink.poll_ready_unpin(cx).map(|r| (true, r))
                    } else {
                        sink.poll_flush_unpin(cx).map(|r| (false, r))
                    }
                }), if may_write || self.needs_flush => self.on_writable(writing, result),
                () = self.service.queue.pushed(), if !may_write && self.peer_closing.is_none() => Turn::Continue(()),
                () = sleep_until_opt(close_deadline), if close_deadline.is_some() => Turn::Break(Outcome::Graceful(
                    "service sent a close frame but kept the connection open".to_owned(),
                )),
            };
            if let ControlFlow::Break(outcome) = turn {
                break outcome;
            }
        };
        self.finish(outcome)
    }

    /// Whether the write side has something to write and may write it.
    fn may_write(&self) -> bool {
        self.peer_closing.is_none()
            && self.batched < BATCH
            && (self.liveness == Liveness::PingDue || !self.service.queue.is_empty())
    }

    /// A frame from the service, an error, or the end of the stream.
    async fn on_frame(&mut self, frame: Option<Result<WireMessage, tungstenite::Error>>) -> Turn {
        match frame {
            Some(Ok(WireMessage::Pong(payload))) => self.on_pong(&payload),
            // The engine queued the pong.
            Some(Ok(WireMessage::Ping(_))) => self.needs_flush = true,
            Some(Ok(WireMessage::Close(frame))) => {
                // The engine queued our reply; the service reads until it arrives, so
                // everything written before it is delivered.
                self.needs_flush = true;
                let reason = match frame {
                    Some(frame) => format!(
                        "service closed the connection with {} {:?}",
                        u16::from(frame.code),
                        frame.reason.as_str()
                    ),
                    None => "service closed the connection".to_owned(),
                };
                self.peer_closing =
                    Some((Instant::now() + self.service.options.close_timeout, reason));
            }
            Some(Ok(WireMessage::Frame(_))) => {}
            Some(Ok(data)) => {
                if let Some(message) = from_engine(data) {
                    self.service.tracker.received();
                    self.held = deliver(self.service, message);
                }
            }
            Some(Err(tungstenite::Error::Capacity(error))) => {
                return Turn::Break(self.too_big(error).await);
            }
            // Once our close reply is flushed, however the TCP side ends, the service has
            // everything we wrote before it.
            Some(Err(error)) => {
                return Turn::Break(match self.peer_closing.take() {
                    Some((_, reason)) if !self.needs_flush => Outcome::Graceful(reason),
                    _ => Outcome::Failed(error.to_string()),
                });
            }
            // The engine ends the stream only after the closing handshake.
            None => {
                return Turn::Break(match self.peer_closing.take() {
                    Some((_, reason)) => Outcome::Graceful(reason),
                    None => Outcome::Failed("connection closed without a close frame".to_owned()),
                });
            }
        }
        Turn::Continue(())
    }

    /// A pong: if it answers our ping, the messages written before the ping were read.
    fn on_pong(&mut self, payload: &[u8]) {
        if let Ok(count) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes)
            && self.liveness == Liveness::AwaitingPong(count)
        {
            self.liveness = Liveness::Quiet;
            self.delivery.confirm(count);
        }
    }

    /// The service sent a message or frame over the limits: close 1009 (within the close
    /// timeout, without waiting for the reply) and give up the connection.
    async fn too_big(&mut self, error: tungstenite::error::CapacityError) -> Outcome {
        let reason = format!("service sent a message over the limits: {error}");
        tracing::warn!(service = %self.service.name, %error, "closing the WebSocket service connection with 1009");
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::from(MESSAGE_TOO_BIG),
            reason: "message too big".into(),
        };
        let close = self.sink.send(WireMessage::Close(Some(frame)));
        match tokio::time::timeout(self.service.options.close_timeout, close).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(service = %self.service.name, %error, "close 1009 not sent");
            }
            Err(_) => {
                tracing::debug!(service = %self.service.name, "close 1009 not sent within the close timeout");
            }
        }
        Outcome::Failed(reason)
    }

    /// The reader made room: hand it the held message, and read again.
    fn on_room(
        &mut self,
        permit: Result<mpsc::OwnedPermit<Message>, mpsc::error::SendError<()>>,
    ) -> Turn {
        match (permit, self.held.take()) {
            (Ok(permit), Some((_, message))) => {
                permit.send(message);
            }
            // The reader went away.
            _ => self.service.tracker.discarded(),
        }
        Turn::Continue(())
    }

    /// The ping interval: ping, or give up on a service that did not answer the last one.
    fn on_ping_tick(&mut self) -> Turn {
        self.service
            .tracker
            .refresh_gauges(self.service.queue.len());
        if self.held.is_some() {
            // Reading is paused for a slow reader, so a pong may sit unread: the service is
            // not at fault. Liveness checks resume with reading.
            if let Liveness::AwaitingPong(_) = self.liveness {
                self.liveness = Liveness::Quiet;
            }
            return Turn::Continue(());
        }
        match self.liveness {
            Liveness::Quiet => {
                self.liveness = Liveness::PingDue;
                Turn::Continue(())
            }
            Liveness::PingDue | Liveness::AwaitingPong(_) => Turn::Break(Outcome::Failed(format!(
                "no answer to a ping within {:?}",
                self.service.options.ping_interval
            ))),
        }
    }

    /// The sink is ready for a frame (`writing`) or flushed (not `writing`).
    fn on_writable(&mut self, writing: bool, result: Result<(), tungstenite::Error>) -> Turn {
        if let Err(error) = result {
            return Turn::Break(Outcome::Failed(error.to_string()));
        }
        if !writing {
            self.needs_flush = false;
            self.batched = 0;
            self.delivery.settle();
            return Turn::Continue(());
        }
        let (frame, data) = if self.liveness == Liveness::PingDue {
            let count = self.delivery.handed;
            self.liveness = Liveness::AwaitingPong(count);
            let ping = Bytes::copy_from_slice(&count.to_be_bytes());
            (WireMessage::Ping(ping), false)
        } else {
            let Some(message) = self.service.queue.pop_front() else {
                return Turn::Continue(());
            };
            let frame = to_engine(&message);
            // Before the engine sees it: a failed write may still have taken some of it.
            self.delivery.hand_over(message);
            (frame, true)
        };
        if let Err(error) = self.sink.start_send_unpin(frame) {
            return Turn::Break(Outcome::Failed(error.to_string()));
        }
        if data {
            self.service.tracker.sent();
            self.service.tracker.queue_depth(self.service.queue.len());
        }
        self.batched += 1;
        self.needs_flush = true;
        Turn::Continue(())
    }

    /// The connection is over: requeue what never left, report what may be lost.
    fn finish(mut self, outcome: Outcome) -> End {
        self.delivery.requeue_unsent(self.service);
        match outcome {
            // A completed closing handshake: the service read up to our close reply.
            Outcome::Graceful(reason) => End::Dropped(reason),
            Outcome::Failed(reason) => {
                self.delivery.report_unconfirmed(self.service);
                End::Dropped(reason)
            }
        }
    }

    /// Shutdown: writes what is still queued, sends close 1001 and waits for the service's
    /// reply, all within the close timeout.
    async fn shutdown(mut self) -> End {
        let close_timeout = self.service.options.close_timeout;
        let service = self.service;
        match tokio::time::timeout(close_timeout, self.close_handshake()).await {
            Ok(Ok(())) => {
                self.delivery.requeue_unsent(service);
                tracing::info!(service = %service.name, "closed WebSocket service connection with 1001");
            }
            Ok(Err(error)) => {
                self.delivery.requeue_unsent(service);
                self.delivery.report_unconfirmed(service);
                tracing::warn!(service = %service.name, %error, "closing handshake failed");
            }
            Err(_) => {
                self.delivery.requeue_unsent(service);
                self.delivery.report_unconfirmed(service);
                tracing::warn!(service = %service.name, "no close reply within the close timeout");
            }
        }
        service.tracker.queue_depth(service.queue.len());
        End::Stopped
    }

    async fn close_handshake(&mut self) -> Result<(), String> {
        while let Some(message) = self.service.queue.pop_front() {
            let frame = to_engine(&message);
            self.delivery.hand_over(message);
            self.sink.feed(frame).await.map_err(|e| e.to_string())?;
            self.delivery.settle();
            self.service.tracker.sent();
        }
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::from(close_code::GOING_AWAY),
            reason: "client shutting down".into(),
        };
        self.sink
            .send(WireMessage::Close(Some(frame)))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(frame) = self.stream.next().await {
            match frame {
                Ok(WireMessage::Close(_)) => return Ok(()),
                Ok(data) => {
                    if let Some(message) = from_engine(data) {
                        self.service.tracker.received();
                        // Shutting down: nobody waits for more, so never block here.
                        if let Some(inbound) = self.service.inbound() {
                            let _ = inbound.try_send(message);
                        }
                    }
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(())
    }
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

fn to_engine(message: &Message) -> WireMessage {
    match message {
        Message::Text(text) => WireMessage::Text(
            tungstenite::Utf8Bytes::try_from(text.as_bytes().clone())
                .unwrap_or_else(|_| tungstenite::Utf8Bytes::from(text.as_str().to_owned())),
        ),
        Message::Binary(data) => WireMessage::Binary(data.clone()),
        Message::Ping(data) => WireMessage::Ping(data.clone()),
        Message::Pong(data) => WireMessage::Pong(data.clone()),
        // A frame that only reports (1005, 1006) goes out without a code.
        Message::Close(frame) => {
            WireMessage::Close(frame.as_ref().filter(|f| f.is_sendable()).map(|f| {
                tungstenite::protocol::CloseFrame {
                    code: CloseCode::from(f.code()),
                    reason: f.reason().into(),
                }
            }))
        }
    }
}

/// Text and binary messages; control frames are the engine's business.
fn from_engine(message: WireMessage) -> Option<Message> {
    match message {
        WireMessage::Text(text) => {
            let bytes = Bytes::from(text);
            Utf8Bytes::try_from_bytes(bytes).ok().map(Message::Text)
        }
        WireMessage::Binary(data) => Some(Message::Binary(data)),
        _ => None,
    }
}
