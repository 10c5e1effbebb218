use std::{
    fmt,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams, Request},
    response::Response,
    routing::{MethodFilter, MethodRouter, on},
};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue, Uri};
use tokio::{sync::mpsc, time::Instant};
use tracing::Instrument as _;
use ws_message::{CloseFrame, Message, close_code};
use ws_upgrader::{WebSocket, WsUpgrader};

use crate::{
    ConnectionHub, ConnectionId, ConnectionInfo, Context, Handler, SocketWriter,
    context::Connection,
    handler::{BoxHandler, Reply, error_frame},
    writer::Outbound,
};

/// Default capacity of each connection's outbound queue, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default time a writer waits for room in a full queue before giving up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a running handler gets to finish when its connection is closed.
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Time allowed to tell a peer that broke the protocol why it is being dropped.
const FAIL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages written from the queue before the I/O task checks the socket again, so a busy
/// writer cannot starve reads.
const MAX_BATCH: usize = 256;

/// A WebSocket route: a handler plus the upgrader, hub and limits it runs with.
///
/// Turn it into an axum route with [`into_route`](Endpoint::into_route). Every connection gets
/// its own task that reads a message, calls the handler once for it and writes the handler's
/// value back, while writes from other tasks go through the same queue.
///
/// ```no_run
/// use axum::Router;
/// use ws_context::{ConnectionHub, Context, Endpoint};
///
/// async fn echo(ctx: Context) -> Result<ws_context::Message, ws_context::BindError> {
///     ctx.bind()
/// }
///
/// let hub = ConnectionHub::new();
/// let app: Router = Router::new().route("/ws", Endpoint::new(echo).hub(hub.clone()).into_route());
/// ```
#[derive(Clone)]
pub struct Endpoint {
    handler: BoxHandler,
    upgrader: WsUpgrader,
    hub: ConnectionHub,
    queue_capacity: usize,
    send_timeout: Duration,
    close_grace: Duration,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("upgrader", &self.upgrader)
            .field("hub", &self.hub)
            .field("queue_capacity", &self.queue_capacity)
            .field("send_timeout", &self.send_timeout)
            .field("close_grace", &self.close_grace)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for `handler` with the default upgrader, its own hub, a queue of
    /// [`DEFAULT_QUEUE_CAPACITY`] messages, a [`DEFAULT_SEND_TIMEOUT`] and a
    /// [`DEFAULT_CLOSE_GRACE`].
    pub fn new<H: Handler<M>, M>(handler: H) -> Self {
        Endpoint {
            handler: handler.into_boxed().0,
            upgrader: WsUpgrader::new(),
            hub: ConnectionHub::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            close_grace: DEFAULT_CLOSE_GRACE,
        }
    }

    /// Upgrades with these options instead of the defaults.
    pub fn upgrader(mut self, upgrader: WsUpgrader) -> Self {
        self.upgrader = upgrader;
        self
    }

    /// Registers connections in this hub (share one hub between routes to reach them all).
    pub fn hub(mut self, hub: ConnectionHub) -> Self {
        self.hub = hub;
        self
    }

    /// Capacity of each connection's outbound queue, in messages (at least 1).
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages.max(1);
        self
    }

    /// How long a write waits for room in a full queue before it fails with
    /// [`WriteError::Full`](crate::WriteError::Full).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How long a running handler may go on after its connection was asked to close (by
    /// [`ConnectionHub::close`], a shutdown, or [`SocketWriter::close`]).
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// The axum route: any method is accepted so that a wrong one gets the upgrader's 405
    /// with a reason, not an empty answer.
    pub fn into_route<S: Clone + Send + Sync + 'static>(self) -> MethodRouter<S> {
        let every_method = [
            MethodFilter::POST,
            MethodFilter::PUT,
            MethodFilter::PATCH,
            MethodFilter::DELETE,
            MethodFilter::HEAD,
            MethodFilter::OPTIONS,
            MethodFilter::TRACE,
        ]
        .into_iter()
        .fold(MethodFilter::GET, MethodFilter::or);
        on(every_method, move |request: Request| {
            let endpoint = self.clone();
            async move { endpoint.serve(request).await }
        })
    }

    /// Upgrades one request and runs the connection; the response is the `101` or the refusal.
    pub async fn serve(&self, request: Request) -> Response {
        let (mut parts, _body) = request.into_parts();
        let pending = match self.upgrader.upgrade(&mut parts) {
            Ok(pending) => pending,
            Err(refusal) => return refusal,
        };
        let route: Arc<str> = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| parts.uri.path().into(), |p| p.as_str().into());
        let path_params = match RawPathParams::from_request_parts(&mut parts, &()).await {
            Ok(params) => params
                .iter()
                .map(|(key, value)| (Arc::from(key), value.to_owned()))
                .collect(),
            Err(_) => Vec::new(),
        };
        let remote_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        let id = ConnectionId::generate();
        let span = tracing::info_span!(
            "ws",
            conn_id = %id,
            route = %route,
            peer = remote_addr.map(tracing::field::display),
        );
        let (writer, outbound) =
            SocketWriter::new(id.clone(), self.queue_capacity, self.send_timeout);
        if let Some(OriginalUri(original)) = parts.extensions.get_mut::<OriginalUri>() {
            *original = owned_uri(original);
        }
        let conn = Arc::new(Connection {
            id,
            route,
            uri: owned_uri(&parts.uri),
            headers: owned_headers(&parts.headers),
            extensions: parts.extensions,
            path_params,
            remote_addr,
            protocol: pending.protocol().map(str::to_owned),
            writer,
            hub: self.hub.clone(),
            span: span.clone(),
        });
        let handler = self.handler.clone();
        let close_grace = self.close_grace;
        let _entered = span.enter();
        pending.on_upgrade(move |socket| {
            let info = ConnectionInfo {
                id: conn.id.clone(),
                route: conn.route.clone(),
                remote_addr: conn.remote_addr,
                connected_at: SystemTime::now(),
                protocol: conn.protocol.clone(),
            };
            conn.hub.insert(info, conn.writer.clone());
            let span = conn.span.clone();
            async move {
                let io = ConnectionTask {
                    socket,
                    outbound,
                    handler,
                    conn: conn.clone(),
                    close_grace,
                };
                let close = io.run().await;
                conn.hub.remove(&conn.id);
                tracing::debug!(code = close.code, reason = %close.reason, "connection closed");
            }
            .instrument(span)
        })
    }
}

/// One connection's I/O task: the only owner of the socket.
struct ConnectionTask {
    socket: WebSocket,
    outbound: mpsc::Receiver<Outbound>,
    handler: BoxHandler,
    conn: Arc<Connection>,
    close_grace: Duration,
}

type Running = std::pin::Pin<Box<dyn Future<Output = std::thread::Result<Reply>> + Send>>;

/// Where the closing handshake stands.
enum Closing {
    Open,
    /// A local close was asked for; it is sent once the running handler is done or the
    /// deadline passes.
    Requested(CloseFrame, Instant),
    /// Our close frame is out; waiting for the peer's.
    Sent,
}

impl ConnectionTask {
    /// Runs until the connection ends; returns how it was closed.
    async fn run(mut self) -> CloseFrame {
        tracing::debug!("connection open");
        let mut running: Option<Running> = None;
        // At most one message is read ahead while the handler runs, so reads stay bounded.
        let mut next: Option<Message> = None;
        let mut closing = Closing::Open;
        let mut ended_by = CloseFrame::new(close_code::ABNORMAL, "connection dropped");

        loop {
            if let Closing::Requested(frame, deadline) = &closing {
                if running.is_some() && Instant::now() >= *deadline {
                    tracing::warn!("handler still running after the close grace period; dropped");
                    running = None;
                }
                if running.is_none() {
                    let frame = frame.clone();
                    ended_by = frame.clone();
                    closing = Closing::Sent;
                    next = None;
                    if self.write(Message::Close(Some(frame))).await.is_err() {
                        break;
                    }
                }
            }
            let deadline = match &closing {
                Closing::Requested(_, deadline) => Some(*deadline),
                _ => None,
            };
            let may_read = match closing {
                Closing::Open => next.is_none(),
                Closing::Requested(..) => false,
                // Read until the peer's close frame or the end of the stream.
                Closing::Sent => true,
            };
            let may_write = !matches!(closing, Closing::Sent);

            tokio::select! {
                command = self.outbound.recv(), if may_write => {
                    // The hub and every context hold senders, so `None` cannot happen while
                    // the task runs; treat it as a close all the same.
                    let Some(command) = command else { break };
                    match self.write_batch(command).await {
                        Ok(Some(frame)) => {
                            closing = Closing::Requested(frame, Instant::now() + self.close_grace);
                        }
                        Ok(None) => {}
                        Err(()) => break,
                    }
                }
                reply = poll_running(&mut running) => {
                    running = None;
                    match self.finish(reply).await {
                        Ok(Some(frame)) => closing = Closing::Requested(frame, Instant::now()),
                        Ok(None) => {}
                        Err(()) => break,
                    }
                    if let Some(message) = next.take()
                        && matches!(closing, Closing::Open)
                    {
                        running = Some(self.start(message));
                    }
                }
                () = sleep_until(deadline) => {}
                incoming = self.socket.recv(), if may_read => match incoming {
                    None => break,
                    Some(Err(error)) => {
                        // The engine has stopped; tell the peer why (1002, 1007, 1009, ...).
                        tracing::debug!(%error, "connection failed");
                        ended_by = CloseFrame::new(error.close_code(), error.to_string());
                        let _ = tokio::time::timeout(FAIL_WRITE_TIMEOUT, self.socket.fail(&error)).await;
                        break;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        // The engine answers the close; keep reading until it reports the end.
                        ended_by = frame.unwrap_or_else(|| CloseFrame::new(close_code::NO_STATUS, ""));
                        closing = Closing::Sent;
                        next = None;
                    }
                    Some(Ok(message)) if message.is_data() => {
                        if running.is_none() && matches!(closing, Closing::Open) {
                            running = Some(self.start(message));
                        } else {
                            next = Some(message);
                        }
                    }
                    // Pings are answered by the engine; pongs feed its liveness timer.
                    Some(Ok(_)) => {}
                },
            }
        }
        ended_by
    }

    fn start(&self, message: Message) -> Running {
        let ctx = Context::new(self.conn.clone(), message);
        let future = (self.handler)(ctx).instrument(self.conn.span.clone());
        Box::pin(AssertUnwindSafe(future).catch_unwind())
    }

    /// Writes what the handler returned, after everything it queued while running. Returns a
    /// close frame when the connection must close.
    async fn finish(
        &mut self,
        reply: std::thread::Result<Reply>,
    ) -> Result<Option<CloseFrame>, ()> {
        let mut close = None;
        while let Ok(command) = self.outbound.try_recv() {
            match command {
                Outbound::Message(message) => self.feed(message).await?,
                Outbound::Close(frame) => {
                    close = Some(frame);
                    break;
                }
            }
        }
        match reply {
            Ok(Ok(Some(message))) => self.feed(message).await?,
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "handler error");
                self.feed(error_frame(&error)).await?;
            }
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(panic = %what, "handler panicked; closing the connection");
                close = Some(CloseFrame::new(
                    close_code::INTERNAL,
                    "internal server error",
                ));
            }
        }
        self.flush().await?;
        Ok(close)
    }

    /// Writes a queued command and whatever else is ready, then flushes once: many frames,
    /// one system call. Returns a close frame if one was among them.
    async fn write_batch(&mut self, first: Outbound) -> Result<Option<CloseFrame>, ()> {
        let mut command = first;
        let mut written = 0;
        loop {
            match command {
                Outbound::Message(message) => self.feed(message).await?,
                Outbound::Close(frame) => return self.flush().await.map(|()| Some(frame)),
            }
            written += 1;
            if written == MAX_BATCH {
                break;
            }
            match self.outbound.try_recv() {
                Ok(more) => command = more,
                Err(_) => break,
            }
        }
        self.flush().await.map(|()| None)
    }

    async fn feed(&mut self, message: Message) -> Result<(), ()> {
        self.socket.feed(message).await.map_err(|error| {
            tracing::debug!(%error, "write failed");
        })
    }

    async fn flush(&mut self) -> Result<(), ()> {
        self.socket.flush().await.map_err(|error| {
            tracing::debug!(%error, "flush failed");
        })
    }

    async fn write(&mut self, message: Message) -> Result<(), ()> {
        self.feed(message).await?;
        self.flush().await
    }
}

/// A copy of a request URI that owns its bytes. hyper parses the URI and header values as
/// slices of the connection's read buffer (8 KiB or more): kept as they are for the life of a
/// WebSocket, they keep that whole buffer allocated (about 9 KiB per idle connection measured
/// with `cargo xtask bench`, scenario S5).
fn owned_uri(uri: &Uri) -> Uri {
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

/// A copy of the request headers that owns its bytes; see [`owned_uri`].
fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}

async fn poll_running(running: &mut Option<Running>) -> std::thread::Result<Reply> {
    match running {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
