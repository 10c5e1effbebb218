use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    ops::ControlFlow,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams, Request},
    response::Response,
    routing::{MethodFilter, MethodRouter, on},
};
use futures_util::{FutureExt as _, Sink as _};
use http::Uri;
use tokio::time::Instant;
use tracing::Instrument as _;
use ws_message::{CloseFrame, Message};
use ws_upgrader::{RejectionKind, UpgradeRejection, WebSocket, WsError, WsUpgrader};

use crate::{
    Connection, ConnectionHub, ConnectionId, Context, Handler, SocketWriter,
    context::{ConnShared, RequestHeaders},
    handler::{BoxHandler, Reply, ReplyFuture, error_frame},
    metrics::{ConnMetrics, RouteMetrics, UNMATCHED_ROUTE, upgrade_failed},
    writer::{Delivery, Outbound},
};

/// Default capacity of each connection's outbound queue, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Default bound of each connection's outbound queue, in payload bytes: 4 MiB, 4 KiB for each
/// of the [`DEFAULT_QUEUE_CAPACITY`] slots. A peer that stops reading holds at most this much
/// of queued messages (plus the engine's write buffer), where a bound in messages alone let it
/// hold 1024 messages of any size (16 GiB of 16 MiB messages). A message larger than the
/// bound is still sent, alone: it waits for an empty queue.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Default time a writer waits for room in a full queue before giving up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a running handler gets to finish when its connection is closed, and then
/// the peer gets to take the close frame.
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

type HookFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ConnectHook = Arc<dyn Fn(Connection) -> HookFuture<Result<(), CloseFrame>> + Send + Sync>;
type CloseHook = Arc<dyn Fn(Connection, CloseFrame) -> HookFuture<()> + Send + Sync>;

/// How many connections a route may have open at once, and how many it has.
struct Limit {
    max: usize,
    open: AtomicUsize,
}

/// A place under a [`Limit`], given back when dropped (also when the upgrade never
/// completes).
struct Permit(Arc<Limit>);

impl Permit {
    fn acquire(limit: &Arc<Limit>) -> Option<Permit> {
        limit
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit.max).then_some(open + 1)
            })
            .ok()
            .map(|_| Permit(limit.clone()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `Retry-After` of a refusal for too many connections, in seconds.
const RETRY_AFTER_SECONDS: &str = "5";

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
    queue_bytes: usize,
    send_timeout: Duration,
    close_grace: Duration,
    limit: Option<Arc<Limit>>,
    on_connect: Option<ConnectHook>,
    on_close: Option<CloseHook>,
    metrics: RouteMetrics,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("upgrader", &self.upgrader)
            .field("hub", &self.hub)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("send_timeout", &self.send_timeout)
            .field("close_grace", &self.close_grace)
            .field("max_connections", &self.limit.as_ref().map(|l| l.max))
            .field("on_connect", &self.on_connect.is_some())
            .field("on_close", &self.on_close.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for `handler` with the default upgrader, its own hub, a queue of
    /// [`DEFAULT_QUEUE_CAPACITY`] messages, a [`DEFAULT_SEND_TIMEOUT`], a
    /// [`DEFAULT_CLOSE_GRACE`], no connection limit and no hooks.
    pub fn new<H: Handler<M>, M>(handler: H) -> Self {
        Endpoint {
            handler: handler.into_boxed().0,
            upgrader: WsUpgrader::new(),
            hub: ConnectionHub::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            close_grace: DEFAULT_CLOSE_GRACE,
            limit: None,
            on_connect: None,
            on_close: None,
            metrics: RouteMetrics::default(),
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

    /// Bound of each connection's outbound queue, in payload bytes (default
    /// [`DEFAULT_QUEUE_BYTES`], 4 MiB). A write that would pass it waits as for a full queue:
    /// up to the send timeout, then [`WriteError::Full`](crate::WriteError::Full) and the
    /// 1008 close. Each message counts its payload, but at least `bytes / queue_capacity` (so
    /// one count bounds both); a message larger than the bound gets into an empty queue only.
    /// The bound is rounded down to a multiple of the capacity, at least one byte per message,
    /// at most 4 GiB.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// How long a write waits for room in a full queue before it fails with
    /// [`WriteError::Full`](crate::WriteError::Full), and how long a write to the socket may
    /// make no progress. A peer that stays full that long is closed with
    /// [`SLOW_PEER_CLOSE_CODE`](crate::SLOW_PEER_CLOSE_CODE) (1008) and its queue dropped.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How long a running handler may go on after its connection was asked to close (by
    /// [`ConnectionHub::close`], a shutdown, or [`SocketWriter::close`]), and then how long
    /// the peer gets to take the close frame before the connection is dropped.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// At most this many connections open on this route at once (shared by clones of the
    /// endpoint). Over it, the upgrade is refused with 503, a reason and `Retry-After: 5`.
    /// Default: no limit.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.limit = Some(Arc::new(Limit {
            max: connections,
            open: AtomicUsize::new(0),
        }));
        self
    }

    /// Runs `hook` when a connection opens, after the upgrade and before its first message
    /// is read. The connection is already in the hub, so the hook can join rooms or greet.
    /// An `Err(frame)` closes the connection with that code and reason (after anything the
    /// hook wrote); the handler is then never called, nor the close hook. A panic closes
    /// with 1011.
    ///
    /// ```no_run
    /// use ws_context::{CloseFrame, Connection, Endpoint};
    ///
    /// async fn only_with_token(conn: Connection) -> Result<(), CloseFrame> {
    ///     match conn.query_param("token") {
    ///         Some(token) if token == "let-me-in" => Ok(()),
    ///         // An invalid code would turn into 1011 through `?`.
    ///         _ => Err(CloseFrame::new(4001, "missing or wrong token")?),
    ///     }
    /// }
    /// # async fn handler(ctx: ws_context::Context) -> Result<(), ws_context::BindError> { Ok(()) }
    /// let endpoint = Endpoint::new(handler).on_connect(only_with_token);
    /// ```
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CloseFrame>> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |conn| Box::pin(hook(conn))));
        self
    }

    /// Runs `hook` once a connection accepted by the connect hook has ended, with how it
    /// ended: the peer's close frame, ours, or 1006 when the peer vanished. The connection has
    /// already left the hub and every room. A panic is logged.
    ///
    /// ```no_run
    /// use ws_context::{CloseFrame, Connection, Endpoint};
    ///
    /// async fn log_close(conn: Connection, close: CloseFrame) {
    ///     tracing::info!(id = %conn.id(), code = close.code(), reason = %close.reason(), "left");
    /// }
    /// # async fn handler(ctx: ws_context::Context) -> Result<(), ws_context::BindError> { Ok(()) }
    /// let endpoint = Endpoint::new(handler).on_close(log_close);
    /// ```
    pub fn on_close<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Connection, CloseFrame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_close = Some(Arc::new(move |conn, close| Box::pin(hook(conn, close))));
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
        let matched = parts.extensions.get::<MatchedPath>();
        // Metrics name the pattern, or one label for every unmatched path (a fallback
        // service): a path the client chose would make a series per path.
        let label = matched.map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        let metrics = self.metrics.get(label);
        let route: Arc<str> =
            matched.map_or_else(|| parts.uri.path().into(), |p| p.as_str().into());
        let pending = match self.upgrader.upgrade(&mut parts) {
            Ok(pending) => pending,
            Err(refusal) => {
                upgrade_failed(metrics.route(), refusal_reason(&refusal));
                return refusal;
            }
        };
        let permit = match &self.limit {
            Some(limit) => match Permit::acquire(limit) {
                Some(permit) => Some(permit),
                None => {
                    upgrade_failed(metrics.route(), "overloaded");
                    let reason = format!(
                        "too many connections: {route} allows {} at once; try again later",
                        limit.max
                    );
                    let mut refusal = self
                        .upgrader
                        .reject(&UpgradeRejection::new(RejectionKind::Overloaded, reason));
                    // A place frees when a connection ends; tell clients when to come back.
                    refusal
                        .headers_mut()
                        .entry(http::header::RETRY_AFTER)
                        .or_insert(http::HeaderValue::from_static(RETRY_AFTER_SECONDS));
                    return refusal;
                }
            },
            None => None,
        };
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
        let Some(id) = ConnectionId::generate() else {
            tracing::error!("the OS random generator failed; refusing the upgrade");
            upgrade_failed(metrics.route(), "overloaded");
            return self.upgrader.reject(&UpgradeRejection::new(
                RejectionKind::Overloaded,
                "no connection id could be made; try again later",
            ));
        };
        let span = tracing::info_span!(
            "ws",
            conn_id = %id,
            route = %route,
            peer = remote_addr.map(tracing::field::display),
        );
        let writer = SocketWriter::new(
            id.clone(),
            self.queue_capacity,
            self.queue_bytes,
            self.send_timeout,
            metrics.clone(),
        );
        if let Some(OriginalUri(original)) = parts.extensions.get_mut::<OriginalUri>() {
            *original = owned_uri(original);
        }
        let conn = Connection(Arc::new(ConnShared {
            id,
            route,
            uri: owned_uri(&parts.uri),
            headers: RequestHeaders::new(&parts.headers),
            extensions: parts.extensions,
            path_params,
            remote_addr,
            protocol: pending.protocol().map(str::to_owned),
            writer,
            hub: self.hub.clone(),
            span: span.clone(),
        }));
        let endpoint = self.clone();
        let _entered = span.enter();
        pending.on_upgrade(move |socket| {
            // The task keeps the connection through its registration only: every field of
            // this future is there for the connection's whole life (S5, `cargo xtask bench`).
            let registration = Registration::new(conn);
            metrics.opened();
            async move {
                // Scoped so that only the running connection's future stays in this one's
                // state while it runs, not also the locals that built it.
                let (accepted, run) = {
                    let conn = &registration.0;
                    let rejected = connect_hook(endpoint.on_connect.as_ref(), conn).await;
                    let io = ConnectionTask::new(socket, conn.clone(), &endpoint, metrics.clone());
                    (rejected.is_none(), io.run(rejected))
                };
                let close = run.await;
                let conn = registration.end();
                metrics.closed(close.code());
                tracing::debug!(parent: conn.span(), code = close.code(), reason = %close.reason(), "connection closed");
                if accepted && let Some(hook) = &endpoint.on_close {
                    let hook = AssertUnwindSafe(hook(conn.clone(), close).instrument(conn.span().clone())).catch_unwind();
                    if let Err(panic) = hook.await {
                        tracing::error!(parent: conn.span(), panic = %panic_message(&panic), "close hook panicked");
                    }
                }
                drop(permit);
            }
            // Not instrumented as a whole: the connection task enters the span once per turn
            // (see `ConnectionTask::run`) and the hooks are instrumented above.
        })
    }
}

/// Runs the connect hook, if any: `Some(frame)` when it refuses the connection (or panics).
async fn connect_hook(hook: Option<&ConnectHook>, conn: &Connection) -> Option<CloseFrame> {
    let hook = hook?;
    let span = conn.span();
    match AssertUnwindSafe(hook(conn.clone()).instrument(span.clone()))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => None,
        Ok(Err(frame)) => {
            tracing::debug!(parent: span, code = frame.code(), reason = %frame.reason(), "connect hook refused the connection");
            Some(frame)
        }
        Err(panic) => {
            let what = panic_message(&panic);
            tracing::error!(parent: span, panic = %what, "connect hook panicked; closing the connection");
            Some(CloseFrame::internal("internal server error"))
        }
    }
}

/// A connection's entry in its hub, taken out when this is dropped: when the connection ends,
/// and also when its task is dropped unfinished (a runtime shutting down), since the entry
/// holds the connection, which holds the hub.
struct Registration(Connection);

impl Registration {
    fn new(conn: Connection) -> Self {
        conn.hub().insert(conn.clone());
        Registration(conn)
    }

    /// Takes the connection out of the hub; what the close hook is given.
    fn end(self) -> Connection {
        self.0.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.hub().remove(self.0.id());
    }
}

/// The metrics label for a refused upgrade.
fn refusal_reason(refusal: &Response) -> &'static str {
    match refusal.extensions().get::<RejectionKind>() {
        Some(RejectionKind::MethodNotGet) => "method_not_get",
        Some(RejectionKind::NotUpgrade) => "not_upgrade",
        Some(RejectionKind::UnsupportedVersion) => "unsupported_version",
        Some(RejectionKind::BadKey) => "bad_key",
        Some(RejectionKind::OriginRefused) => "origin_refused",
        Some(RejectionKind::NotUpgradable) => "not_upgradable",
        Some(RejectionKind::Overloaded) => "overloaded",
        _ => "other",
    }
}

/// One connection's I/O task: the only owner of the socket.
struct ConnectionTask {
    socket: WebSocket,
    handler: BoxHandler,
    conn: Connection,
    close_grace: Duration,
    send_timeout: Duration,
    metrics: Arc<ConnMetrics>,
    /// The handler call in progress, if any.
    running: Option<Running>,
    /// At most one message is read ahead while the handler runs, so reads stay bounded.
    next: Option<Message>,
    closing: Closing,
    /// How the connection ended, for the close hook and the log; `None` until known (made
    /// then, not up front for every connection).
    ended_by: Option<CloseFrame>,
    /// Frames are fed but not flushed yet: they go out in one write at the end of the turn.
    unflushed: bool,
    /// Traffic not yet added to the shared counters: published once per turn, so a burst
    /// costs one update per counter, not one per message.
    tally: Tally,
}

/// Writers see the connection closed as soon as its task is gone, however it ended.
impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.conn.0.writer.queue().close();
    }
}

#[derive(Default)]
struct Tally {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

impl Tally {
    fn publish(&mut self, metrics: &ConnMetrics) {
        let Tally {
            messages_in,
            bytes_in,
            messages_out,
            bytes_out,
        } = std::mem::take(self);
        if messages_in > 0 {
            metrics.messages_received.increment(messages_in);
            metrics.bytes_received.increment(bytes_in);
        }
        if messages_out > 0 {
            metrics.messages_sent.increment(messages_out);
            metrics.bytes_sent.increment(bytes_out);
        }
    }
}

/// A handler call in progress: its (already boxed) future, guarded against panics, and the
/// per-message span when debug logging is on.
struct Running {
    future: futures_util::future::CatchUnwind<AssertUnwindSafe<ReplyFuture>>,
    span: Option<tracing::Span>,
}

/// Where the closing handshake stands.
enum Closing {
    Open,
    /// A local close was asked for; it is sent once the running handler is done or the
    /// deadline passes. An urgent close has dropped the queue and writes nothing else first.
    Requested {
        frame: CloseFrame,
        deadline: Instant,
        urgent: bool,
    },
    /// Our close frame is out; waiting for the peer's.
    Sent,
}

/// Why a write to the socket did not complete.
enum WriteFailed {
    /// The transport failed: nothing more can be written.
    Broken,
    /// An urgent close arrived, or the peer took nothing for the send timeout (and was
    /// then closed as slow): go on with the urgent close.
    Urgent,
}

/// Whether the connection task goes on after a step; `Break` ends it.
type Step = ControlFlow<()>;

impl ConnectionTask {
    fn new(
        socket: WebSocket,
        conn: Connection,
        endpoint: &Endpoint,
        metrics: Arc<ConnMetrics>,
    ) -> Self {
        ConnectionTask {
            socket,
            handler: endpoint.handler.clone(),
            conn,
            close_grace: endpoint.close_grace,
            send_timeout: endpoint.send_timeout,
            metrics,
            running: None,
            next: None,
            closing: Closing::Open,
            ended_by: None,
            unflushed: false,
            tally: Tally::default(),
        }
    }

    /// Runs until the connection ends; returns how it was closed. `rejected` closes at once
    /// (the connect hook refused the connection).
    ///
    /// Each turn waits for one event, handles it with everything else already ready of the
    /// same kind (a burst of parsed messages, a run of queued frames), then flushes once: one
    /// write per turn, and no extra turn of the scheduler before it.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps `self` twice in its state, as the argument and as the local \
                  it is moved into: about 200 bytes per connection (S5)"
    )]
    fn run(mut self, rejected: Option<CloseFrame>) -> impl Future<Output = CloseFrame> {
        async move {
            tracing::debug!(parent: self.conn.span(), "connection open");
            if let Some(frame) = rejected {
                self.closing = Closing::Requested {
                    frame,
                    deadline: Instant::now(),
                    urgent: false,
                };
            }
            // The turns run inside the connection's span, so the handler's events carry the
            // connection's fields: one enter per poll of the task, not one per message or turn.
            let conn = self.conn.clone();
            {
                let mut turns = std::pin::pin!(async { while self.turn().await.is_continue() {} });
                std::future::poll_fn(|cx| {
                    let _entered = conn.span().enter();
                    turns.as_mut().poll(cx)
                })
                .await;
            }
            self.tally.publish(&self.metrics);
            self.ended_by
                .take()
                .unwrap_or_else(|| CloseFrame::abnormal("connection dropped"))
        }
    }

    async fn turn(&mut self) -> Step {
        if self.may_write() {
            // One atomic load; an urgent close goes before anything else, even a burst of reads.
            self.begin_urgent_close();
        }
        if let Closing::Requested {
            frame, deadline, ..
        } = &self.closing
        {
            if self.running.is_some() && Instant::now() >= *deadline {
                tracing::warn!(parent: self.conn.span(), "handler still running after the close grace period; dropped");
                self.running = None;
            }
            if self.running.is_none() {
                let frame = frame.clone();
                self.ended_by = Some(frame.clone());
                self.closing = Closing::Sent;
                self.next = None;
                if !self.write_close(frame).await {
                    return Step::Break(());
                }
            }
        }
        let deadline = match &self.closing {
            Closing::Requested { deadline, .. } => Some(*deadline),
            _ => None,
        };
        let may_read = self.may_read();
        let keep_alive = self.keeps_alive_only();
        let may_write = self.may_write();
        let handler_running = self.running.is_some();

        // Biased: the order is fixed (no random draw per turn); reads cannot starve queued
        // frames because every turn that wrote also takes the queue before its flush, and an
        // urgent close is checked above at every turn.
        let step = tokio::select! {
            biased;
            reply = poll_running(&mut self.running), if handler_running => self.on_reply(reply).await,
            incoming = next_incoming(&mut self.socket, keep_alive), if may_read || keep_alive => {
                if keep_alive {
                    self.on_incoming(incoming).await
                } else {
                    self.on_burst(incoming).await
                }
            }
            delivery = self.conn.0.writer.delivery(), if may_write => match delivery {
                Delivery::Urgent => {
                    self.begin_urgent_close();
                    Step::Continue(())
                }
                Delivery::Command(command) => self.on_command(command).await,
                // Only once the queue is closed, which this task does itself after an urgent
                // close (and then stops polling it); end all the same.
                Delivery::Closed => Step::Break(()),
            },
            () = sleep_until(deadline) => Step::Continue(()),
        };
        step?;
        if self.unflushed {
            // Frames other tasks queued meanwhile go out in the same write.
            if self.may_write()
                && let Some(command) = self.try_next_command()
            {
                self.on_command(command).await?;
            }
            match self.flush().await {
                Ok(()) => {}
                Err(WriteFailed::Urgent) => self.begin_urgent_close(),
                Err(WriteFailed::Broken) => return Step::Break(()),
            }
        }
        self.tally.publish(&self.metrics);
        Step::Continue(())
    }

    fn may_read(&self) -> bool {
        match self.closing {
            Closing::Open => self.next.is_none(),
            Closing::Requested { .. } => false,
            // Read until the peer's close frame or the end of the stream.
            Closing::Sent => true,
        }
    }

    /// A message is read ahead while the handler runs: the socket still answers pings, pings
    /// the peer and watches its deadlines, reading no further data.
    fn keeps_alive_only(&self) -> bool {
        matches!(self.closing, Closing::Open) && self.next.is_some()
    }

    /// False once an urgent close is under way or our close frame is out.
    fn may_write(&self) -> bool {
        matches!(
            self.closing,
            Closing::Open | Closing::Requested { urgent: false, .. }
        )
    }

    /// Handles what the socket gave, then each further message the socket has ready without
    /// waiting (already parsed or already readable), up to `MAX_BATCH`: a burst costs one turn.
    async fn on_burst(&mut self, first: Option<Result<Message, WsError>>) -> Step {
        let mut incoming = first;
        for _ in 1..MAX_BATCH {
            self.on_incoming(incoming).await?;
            if !self.may_read() {
                return Step::Continue(());
            }
            match poll_now(self.socket.recv()).await {
                Some(more) => incoming = more,
                None => return Step::Continue(()),
            }
        }
        self.on_incoming(incoming).await
    }

    async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Step {
        match incoming {
            None => Step::Break(()),
            Some(Err(error)) => {
                // The socket has stopped reading; tell the peer why (1002, 1007, 1009, 1013, ...).
                tracing::debug!(parent: self.conn.span(), %error, "connection failed");
                // Only reported (1006 for a broken transport), so a code that may not be sent
                // is kept as "abnormal".
                self.ended_by = Some(
                    CloseFrame::new(error.close_code(), error.to_string())
                        .unwrap_or_else(|_| CloseFrame::abnormal(error.to_string())),
                );
                // Boxed, as every rare wait with a timer: a timer is large, and inline it would
                // grow every connection's task (S5) and every move of its futures.
                let _ = Box::pin(tokio::time::timeout(
                    FAIL_WRITE_TIMEOUT,
                    self.socket.fail(&error),
                ))
                .await;
                Step::Break(())
            }
            Some(Ok(Message::Close(frame))) => {
                // The socket answers the close; keep reading until it reports the end.
                self.ended_by = Some(frame.unwrap_or_else(CloseFrame::no_status));
                self.closing = Closing::Sent;
                self.next = None;
                Step::Continue(())
            }
            Some(Ok(message)) if message.is_data() => {
                self.tally.messages_in += 1;
                self.tally.bytes_in += payload_len(&message);
                if self.running.is_none() && matches!(self.closing, Closing::Open) {
                    self.start(message).await
                } else {
                    self.next = Some(message);
                    Step::Continue(())
                }
            }
            // Pings are answered by the socket; any frame feeds its liveness timer.
            Some(Ok(_)) => Step::Continue(()),
        }
    }

    /// Calls the handler for a message. Most handlers finish at their first poll: their
    /// reply is written now rather than one turn later.
    async fn start(&mut self, message: Message) -> Step {
        self.running = Some(self.call_handler(message));
        match poll_now(poll_running(&mut self.running)).await {
            Some(reply) => self.on_reply(reply).await,
            None => Step::Continue(()),
        }
    }

    /// Writes a finished handler's reply, then starts the message read ahead, if any.
    async fn on_reply(&mut self, reply: std::thread::Result<Reply>) -> Step {
        self.running = None;
        match self.finish(reply).await {
            Ok(Some(frame)) => {
                self.closing = Closing::Requested {
                    frame,
                    deadline: Instant::now(),
                    urgent: false,
                };
            }
            Ok(None) => {}
            Err(WriteFailed::Urgent) => self.begin_urgent_close(),
            Err(WriteFailed::Broken) => return Step::Break(()),
        }
        match self.next.take() {
            Some(message) if matches!(self.closing, Closing::Open) => {
                // Boxed: `start` and `on_reply` call each other.
                Box::pin(self.start(message)).await
            }
            _ => Step::Continue(()),
        }
    }

    /// Writes a queued command and the rest of the queue, up to `MAX_BATCH` frames.
    async fn on_command(&mut self, command: Outbound) -> Step {
        match self.write_batch(command).await {
            Ok(Some(frame)) => {
                self.closing = Closing::Requested {
                    frame,
                    deadline: Instant::now() + self.close_grace,
                    urgent: false,
                };
            }
            Ok(None) => {}
            Err(WriteFailed::Urgent) => self.begin_urgent_close(),
            Err(WriteFailed::Broken) => return Step::Break(()),
        }
        Step::Continue(())
    }

    /// Takes the urgent close: drops the queue (its memory goes with it) and closes without
    /// writing anything more, once the running handler is done or the grace period passes.
    fn begin_urgent_close(&mut self) {
        let Some(frame) = self.conn.0.writer.urgent().take() else {
            return;
        };
        self.conn.0.writer.queue().close();
        self.closing = Closing::Requested {
            frame,
            deadline: Instant::now() + self.close_grace,
            urgent: true,
        };
    }

    fn try_next_command(&mut self) -> Option<Outbound> {
        self.conn.0.writer.queue().try_pop()
    }

    fn call_handler(&self, message: Message) -> Running {
        // Checked first: making a disabled span and dropping it is a cost on every message.
        let span = tracing::level_enabled!(tracing::Level::DEBUG)
            .then(|| {
                tracing::debug_span!(
                    parent: self.conn.span(),
                    "message",
                    kind = message_kind(&message),
                    bytes = payload_len(&message),
                )
            })
            .filter(|span| !span.is_disabled());
        let ctx = Context::new(self.conn.clone(), message);
        // A panic in the handler's synchronous part (before its future exists) is caught too,
        // and resumed when the future is polled: the same catch then logs it, counts it and
        // closes with 1011, as for a panic in the future. No cost unless it panics.
        let future = std::panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(ctx)))
            .unwrap_or_else(|panic| Box::pin(async move { std::panic::resume_unwind(panic) }));
        Running {
            future: AssertUnwindSafe(future).catch_unwind(),
            // `poll_running` enters it inside the connection's span, which the turn is in.
            span,
        }
    }

    /// Writes what the handler returned, after everything it queued while running. Returns a
    /// close frame when the connection must close. While an urgent close is under way nothing
    /// is written.
    async fn finish(
        &mut self,
        reply: std::thread::Result<Reply>,
    ) -> Result<Option<CloseFrame>, WriteFailed> {
        let mut close = None;
        let mut reply_frame = None;
        match reply {
            Ok(Ok(message)) => reply_frame = message,
            Ok(Err(error)) => {
                tracing::warn!(parent: self.conn.span(), %error, "handler error");
                self.metrics.handler_failed("error");
                reply_frame = Some(error_frame(&error));
            }
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(parent: self.conn.span(), panic = %what, "handler panicked; closing the connection");
                self.metrics.handler_failed("panic");
                close = Some(CloseFrame::internal("internal server error"));
            }
        }
        if !self.may_write() {
            return Ok(None);
        }
        while let Some(command) = self.try_next_command() {
            match command {
                Outbound::Message(message) => self.feed(message).await?,
                Outbound::Close(frame) => {
                    close = Some(frame);
                    break;
                }
            }
        }
        if let Some(message) = reply_frame {
            self.feed(message).await?;
        }
        if close.is_some() {
            self.flush().await?;
        }
        Ok(close)
    }

    /// Writes a queued command and whatever else is ready, without flushing (the flush branch
    /// of `run` does that once nothing else is ready). Returns a close frame if one was among
    /// them, after flushing what came before it.
    async fn write_batch(&mut self, first: Outbound) -> Result<Option<CloseFrame>, WriteFailed> {
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
            match self.try_next_command() {
                Some(more) => command = more,
                None => break,
            }
        }
        Ok(None)
    }

    /// Queues a frame on the socket. The socket almost always has room: that is tried first
    /// without a future, so the futures of every caller stay small (this one is in the state of
    /// each connection's task, S5); only a full socket is waited for, boxed and bounded.
    async fn feed(&mut self, message: Message) -> Result<(), WriteFailed> {
        let data = message.is_data().then(|| payload_len(&message));
        let ready = Pin::new(&mut self.socket).poll_ready(&mut no_wake());
        let waited = match ready {
            Poll::Ready(Ok(())) => Waited::Done(Pin::new(&mut self.socket).start_send(message)),
            Poll::Ready(Err(error)) => Waited::Done(Err(error)),
            Poll::Pending => {
                let writer = &self.conn.0.writer;
                let write = self.socket.feed(message);
                Box::pin(bounded_write(write, self.send_timeout, writer)).await
            }
        };
        self.settle(waited, "write failed")?;
        self.unflushed = true;
        if let Some(bytes) = data {
            self.tally.messages_out += 1;
            self.tally.bytes_out += bytes;
        }
        Ok(())
    }

    /// Writes what is queued on the socket; tried at once first, as in [`feed`](Self::feed).
    async fn flush(&mut self) -> Result<(), WriteFailed> {
        self.unflushed = false;
        let flushed = Pin::new(&mut self.socket).poll_flush(&mut no_wake());
        let waited = match flushed {
            Poll::Ready(result) => Waited::Done(result),
            Poll::Pending => {
                let writer = &self.conn.0.writer;
                let write = self.socket.flush();
                Box::pin(bounded_write(write, self.send_timeout, writer)).await
            }
        };
        self.settle(waited, "flush failed")
    }

    fn settle(&self, waited: Waited, failure: &str) -> Result<(), WriteFailed> {
        match waited {
            Waited::Done(Ok(())) => Ok(()),
            Waited::Done(Err(error)) => {
                tracing::debug!(parent: self.conn.span(), %error, "{failure}");
                Err(WriteFailed::Broken)
            }
            Waited::Stalled => Err(self.stalled()),
            Waited::Urgent => Err(WriteFailed::Urgent),
        }
    }

    /// The peer took nothing for the send timeout: it is closed as slow.
    fn stalled(&self) -> WriteFailed {
        self.conn.0.writer.close_slow();
        WriteFailed::Urgent
    }

    /// Writes our close frame, giving the peer the close grace period to take it. False if it
    /// could not be written.
    async fn write_close(&mut self, frame: CloseFrame) -> bool {
        let write = async {
            self.socket.feed(Message::Close(Some(frame))).await?;
            self.socket.flush().await
        };
        match Box::pin(tokio::time::timeout(self.close_grace, write)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(parent: self.conn.span(), %error, "close frame not written");
                false
            }
            Err(_) => {
                tracing::debug!(parent: self.conn.span(), "peer did not take the close frame in time; dropping it");
                false
            }
        }
    }
}

/// The next message, or with `control_only` the next control frame (a data message read ahead
/// is kept by the socket).
async fn next_incoming(
    socket: &mut WebSocket,
    control_only: bool,
) -> Option<Result<Message, WsError>> {
    if control_only {
        socket.recv_control().await
    } else {
        socket.recv().await
    }
}

fn payload_len(message: &Message) -> u64 {
    u64::try_from(message.len()).unwrap_or(u64::MAX)
}

fn message_kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        _ => "control",
    }
}

/// A copy of a request URI that owns its bytes. hyper parses the URI and header values as
/// slices of the connection's read buffer (8 KiB or more): kept as they are for the life of a
/// WebSocket, they keep that whole buffer allocated (about 9 KiB per idle connection measured
/// with `cargo xtask bench`, scenario S5). The headers are copied by `RequestHeaders`.
fn owned_uri(uri: &Uri) -> Uri {
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

/// How a bounded socket write ended.
enum Waited {
    Done(Result<(), WsError>),
    /// The send timeout passed with the write still waiting for the peer.
    Stalled,
    /// An urgent close arrived while waiting.
    Urgent,
}

/// Runs a socket write, bounded by `timeout` and cut short by an urgent close. The write is
/// polled once first, so one that the socket takes at once (the usual case) arms no timer,
/// and the wait with a timer is boxed, so it costs no room in the futures that write.
async fn bounded_write(
    write: impl Future<Output = Result<(), WsError>>,
    timeout: Duration,
    writer: &SocketWriter,
) -> Waited {
    let mut write = std::pin::pin!(write);
    if let Some(result) = poll_now(&mut write).await {
        return Waited::Done(result);
    }
    Box::pin(async move {
        tokio::select! {
            biased;
            result = write => Waited::Done(result),
            () = tokio::time::sleep(timeout) => Waited::Stalled,
            () = writer.urgent_close() => Waited::Urgent,
        }
    })
    .await
}

/// A context whose waker does nothing: for trying a socket operation that, when it is not
/// ready, is then awaited with the task's own waker, which replaces this one.
fn no_wake() -> std::task::Context<'static> {
    std::task::Context::from_waker(futures_util::task::noop_waker_ref())
}

/// Polls a future once in the task's own context; its output if it was ready.
async fn poll_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Polls the running handler, inside its message span when there is one.
async fn poll_running(running: &mut Option<Running>) -> std::thread::Result<Reply> {
    match running {
        Some(Running { future, span }) => {
            std::future::poll_fn(|cx| {
                let _message = span.as_ref().map(tracing::Span::enter);
                Pin::new(&mut *future).poll(cx)
            })
            .await
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => Box::pin(tokio::time::sleep_until(deadline)).await,
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
