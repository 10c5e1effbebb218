//! [`Endpoint`]: a WebSocket route, its builder and defaults, and the upgrade of one request
//! into a connection: the connection limit ([`Limit`]), the owned copy of the request, the
//! connection's span and writer. The connection's life is run from here through
//! [`lifecycle`](crate::lifecycle) (hooks, hub entry) and [`connection`](crate::connection)
//! (its task).

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    extract::{
        ConnectInfo, FromRequestParts, MatchedPath, OriginalUri, RawPathParams, Request,
        rejection::RawPathParamsRejection,
    },
    response::Response,
    routing::{MethodFilter, MethodRouter, on},
};
use http::{Extensions, Uri};
use ws_message::CloseFrame;
use ws_upgrader::{ConfigError, RejectionKind, UpgradeRejection, WsUpgrader};

use crate::{
    Connection, ConnectionHub, ConnectionId, Handler, SocketWriter,
    connection::ConnectionTask,
    context::{ConnShared, RequestHeaders, RequestUri},
    handler::BoxHandler,
    lifecycle::{Hooks, Registration},
    metrics::{RouteMetrics, UNMATCHED_ROUTE, upgrade_failed},
};

/// Default capacity of each connection's outbound queue, in messages.
pub const DEFAULT_QUEUE_MESSAGES: usize = 1024;
/// Default bound of each connection's outbound queue, in payload bytes: 4 MiB, 4 KiB for each
/// of the [`DEFAULT_QUEUE_MESSAGES`] slots. A peer that stops reading holds at most this much
/// of queued messages (plus the engine's write buffer), where a bound in messages alone let it
/// hold 1024 messages of any size (16 GiB of 16 MiB messages). A message larger than the
/// bound is still sent, alone: it waits for an empty queue.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Largest [`Endpoint::queue_bytes`]: the queue counts its bytes in 32 bits.
pub const MAX_QUEUE_BYTES: usize = u32::MAX as usize;
/// Default time a writer waits for room in a full queue before giving up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a running handler gets to finish when its connection is closed, and then
/// the peer gets to take the close frame.
pub const DEFAULT_CLOSE_GRACE: Duration = Duration::from_secs(5);

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
/// let route = Endpoint::new(echo).hub(hub.clone()).into_route()?;
/// let app: Router = Router::new().route("/ws", route);
/// # Ok::<(), ws_context::ConfigError>(())
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
    /// Shared: each connection's future holds a pointer, not the two hooks.
    hooks: Arc<Hooks>,
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
            .field("on_connect", &self.hooks.are_set().0)
            .field("on_close", &self.hooks.are_set().1)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for `handler` with the default upgrader, its own hub, a queue of
    /// [`DEFAULT_QUEUE_MESSAGES`] messages and [`DEFAULT_QUEUE_BYTES`], a
    /// [`DEFAULT_SEND_TIMEOUT`], a [`DEFAULT_CLOSE_GRACE`], no connection limit and no hooks.
    ///
    /// Option values are checked by [`into_route`](Endpoint::into_route).
    pub fn new<H: Handler<M>, M>(handler: H) -> Self {
        Endpoint {
            handler: handler.into_boxed().0,
            upgrader: WsUpgrader::new(),
            hub: ConnectionHub::new(),
            queue_capacity: DEFAULT_QUEUE_MESSAGES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            close_grace: DEFAULT_CLOSE_GRACE,
            limit: None,
            hooks: Arc::default(),
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

    /// Capacity of each connection's outbound queue, in messages (default
    /// [`DEFAULT_QUEUE_MESSAGES`]): at least 1, at most [`queue_bytes`](Self::queue_bytes).
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages;
        self
    }

    /// Bound of each connection's outbound queue, in payload bytes (default
    /// [`DEFAULT_QUEUE_BYTES`], 4 MiB). A write that would pass it waits as for a full queue:
    /// up to the send timeout, then [`WriteError::Full`](crate::WriteError::Full) and the
    /// 1008 close. Each message counts its payload, but at least `bytes / queue_capacity` (so
    /// one count bounds both); a message larger than the bound gets into an empty queue only.
    /// At least one byte per message of [`queue_capacity`](Self::queue_capacity), at most
    /// [`MAX_QUEUE_BYTES`]; rounded down to a multiple of the capacity.
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// How long a write waits for room in a full queue before it fails with
    /// [`WriteError::Full`](crate::WriteError::Full), and how long a write to the socket may
    /// make no progress (default [`DEFAULT_SEND_TIMEOUT`]; longer than zero). A peer that
    /// stays full that long is closed with
    /// [`SLOW_PEER_CLOSE_CODE`](crate::SLOW_PEER_CLOSE_CODE) (1008) and its queue dropped.
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How long a running handler may go on after its connection was asked to close (by
    /// [`ConnectionHub::close`], a shutdown, or [`SocketWriter::close`]), and then how long
    /// the peer gets to take the close frame before the connection is dropped (default
    /// [`DEFAULT_CLOSE_GRACE`]). Zero abandons the handler and drops the connection at once.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// At most this many connections open on this route at once (shared by clones of the
    /// endpoint; at least 1). Over it, the upgrade is refused with 503, a reason and
    /// `Retry-After: 5`. Default: no limit.
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
        Arc::make_mut(&mut self.hooks).set_on_connect(hook);
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
        Arc::make_mut(&mut self.hooks).set_on_close(hook);
        self
    }

    /// Checks every option value and gives the axum route: any method is accepted so that a
    /// wrong one gets the upgrader's 405 with a reason, not an empty answer.
    ///
    /// ```
    /// use ws_context::{ConfigError, Endpoint};
    /// # async fn handler(ctx: ws_context::Context) -> Result<(), ws_context::BindError> { Ok(()) }
    ///
    /// let refused = Endpoint::new(handler).queue_capacity(0).into_route::<()>();
    /// assert!(matches!(refused, Err(ConfigError::Size { option: "queue_capacity", value: 0, .. })));
    /// ```
    pub fn into_route<S: Clone + Send + Sync + 'static>(
        self,
    ) -> Result<MethodRouter<S>, ConfigError> {
        self.check()?;
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
        Ok(on(every_method, move |request: Request| {
            let endpoint = self.clone();
            async move { endpoint.serve(request).await }
        }))
    }

    /// Refuses a value that would not work, rather than changing it or failing later.
    fn check(&self) -> Result<(), ConfigError> {
        let size = ConfigError::check_size;
        size("queue_capacity", self.queue_capacity, 1, MAX_QUEUE_BYTES)?;
        size(
            "queue_bytes",
            self.queue_bytes,
            self.queue_capacity,
            MAX_QUEUE_BYTES,
        )?;
        if let Some(limit) = &self.limit {
            size("max_connections", limit.max, 1, usize::MAX)?;
        }
        if self.send_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                option: "send_timeout",
                value: self.send_timeout,
            });
        }
        Ok(())
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
        // Checked once the request is a valid upgrade, so a bad request still gets its own
        // status. A 101 now would only be followed by the shutdown's close frame, on an HTTP
        // connection hyper is closing (it answers `Connection: upgrade, close`).
        if self.hub.is_shutting_down() {
            return self.unavailable(
                metrics.route(),
                RejectionKind::ShuttingDown,
                "the server is shutting down; try again later".to_owned(),
            );
        }
        let permit = match &self.limit {
            Some(limit) => match Permit::acquire(limit) {
                Some(permit) => Some(permit),
                None => {
                    let reason = format!(
                        "too many connections: {route} allows {} at once; try again later",
                        limit.max
                    );
                    return self.unavailable(metrics.route(), RejectionKind::Overloaded, reason);
                }
            },
            None => None,
        };
        let raw_params = RawPathParams::from_request_parts(&mut parts, &()).await;
        let has_axum_params = !matches!(
            raw_params,
            Err(RawPathParamsRejection::MissingPathParams(_))
        );
        let path_params = match raw_params {
            Ok(params) => params
                .iter()
                .map(|(key, value)| (Arc::from(key), value.to_owned()))
                .collect(),
            Err(_) => Box::default(),
        };
        let remote_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        let Some(id) = ConnectionId::generate() else {
            tracing::error!("the OS random generator failed; refusing the upgrade");
            return self.unavailable(
                metrics.route(),
                RejectionKind::Overloaded,
                "no connection id could be made; try again later".to_owned(),
            );
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
        let conn = Connection(Arc::new(ConnShared {
            id,
            route,
            uri: RequestUri::new(&parts.uri),
            headers: RequestHeaders::new(&parts.headers),
            extensions: kept_extensions(parts.extensions, &parts.uri, has_axum_params),
            path_params,
            remote_addr,
            protocol: pending.protocol().map(Box::from),
            connected_at: SystemTime::now(),
            writer,
            hub: self.hub.clone(),
            span: span.clone(),
        }));
        let (handler, hooks, close_grace) =
            (self.handler.clone(), self.hooks.clone(), self.close_grace);
        let _entered = span.enter();
        pending.on_upgrade(move |socket| {
            if let Some(direct) = socket.direct_writer() {
                conn.0.writer.set_direct(direct);
            }
            let registration = Registration::new(conn);
            metrics.opened();
            let task = ConnectionTask::new(
                socket,
                registration.0.clone(),
                handler,
                close_grace,
                metrics.clone(),
            );
            live(task, registration, hooks, permit)
        })
    }

    /// A 503 refusal for a passing condition (`kind` says which), counted, with
    /// `Retry-After` telling clients when to come back.
    fn unavailable(&self, route: &str, kind: RejectionKind, reason: String) -> Response {
        upgrade_failed(route, kind.as_str());
        let mut refusal = self.upgrader.reject(&UpgradeRejection::new(kind, reason));
        refusal
            .headers_mut()
            .entry(http::header::RETRY_AFTER)
            .or_insert(http::HeaderValue::from_static(RETRY_AFTER_SECONDS));
        refusal
    }
}

/// A connection's life once upgraded: the connect hook, the task, the close hook. This future
/// is the connection's tokio task, held for the connection's whole life
/// ([S5](bench/README.md#scenarios)): it owns the task (socket included) once, captured here
/// and used in place, and keeps the connection through its registration only. Not an `async
/// fn`, whose state would hold each argument twice (as the argument and as the local it is
/// moved into). No `.instrument()` around it: the connection task enters the span once per
/// poll of the task (see `ConnectionTask::run`) and the hooks are instrumented
/// (`lifecycle.rs`).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state; see `connection_future_stays_small`"
)]
fn live(
    mut task: ConnectionTask,
    registration: Registration,
    hooks: Arc<Hooks>,
    permit: Option<Permit>,
) -> impl Future<Output = ()> + Send {
    async move {
        // `rejected` goes out of scope before the run is awaited, so that it takes no room in
        // this future while the connection lives.
        let (accepted, run) = {
            let rejected = hooks.connect(&registration.0).await;
            (rejected.is_none(), task.run(rejected))
        };
        let close = run.await;
        let metrics = task.metrics().clone();
        // The socket closes and writers see the connection closed before it leaves the hub.
        drop(task);
        let conn = registration.end();
        metrics.closed(close.code());
        tracing::debug!(parent: conn.span(), code = close.code(), reason = %close.reason(), "connection closed");
        if accepted {
            hooks.closed(conn, close).await;
        }
        drop(permit);
    }
}

/// The metrics label for a refused upgrade.
fn refusal_reason(refusal: &Response) -> &'static str {
    refusal
        .extensions()
        .get::<RejectionKind>()
        .map_or("other", RejectionKind::as_str)
}

/// The request's extensions as a connection keeps them, for its whole life. axum's routing
/// entries go: `Connection` has them already (`route`, `path_param`, `remote_addr`, and
/// `original_uri` unless the route is nested, where `OriginalUri` differs from `uri`). When
/// nothing else is left (no middleware added anything), no map is kept at all: a map of a few
/// entries is about 300 bytes per idle connection ([S5](bench/README.md#scenarios)); else
/// the entries move to a map sized for them, as the request's keeps the room its largest
/// size needed. `has_axum_params`: axum's path parameters are there, under a private type that
/// only a count can account for.
fn kept_extensions(mut extensions: Extensions, uri: &Uri, has_axum_params: bool) -> Extensions {
    extensions.remove::<MatchedPath>();
    extensions.remove::<ConnectInfo<SocketAddr>>();
    match extensions.get_mut::<OriginalUri>() {
        Some(OriginalUri(original)) if original == uri => {
            extensions.remove::<OriginalUri>();
        }
        Some(OriginalUri(original)) => *original = owned_uri(original),
        None => {}
    }
    if extensions.len() <= usize::from(has_axum_params) {
        return Extensions::new();
    }
    // `Extensions` has no iterator: `extend` into a map that has one entry already moves the
    // entries one by one, into a table made for them.
    #[derive(Clone)]
    struct Seed;
    let mut kept = Extensions::new();
    kept.insert(Seed);
    kept.extend(extensions);
    kept.remove::<Seed>();
    kept
}

/// A copy of a request URI that owns its bytes. hyper parses the URI and header values as
/// slices of the connection's read buffer (8 KiB or more): kept as they are for the life of a
/// WebSocket, they keep that whole buffer allocated (about 9 KiB per idle connection measured
/// with `cargo xtask bench`, scenario [S5](bench/README.md#scenarios)). For the `OriginalUri`
/// extension; the connection's own URI is a `RequestUri`, its headers `RequestHeaders`.
fn owned_uri(uri: &Uri) -> Uri {
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ignore(_ctx: crate::Context) -> Result<(), crate::BindError> {
        Ok(())
    }

    #[test]
    fn every_bad_value_is_refused_with_its_option_and_value() {
        let endpoint = || Endpoint::new(ignore);
        assert!(endpoint().into_route::<()>().is_ok());
        let size = |option, value, min, max| ConfigError::Size {
            option,
            value,
            min,
            max,
        };
        for (bad, refusal) in [
            (
                endpoint().queue_capacity(0),
                size("queue_capacity", 0, 1, MAX_QUEUE_BYTES),
            ),
            // One byte per message at least: 8 messages cannot share 4 bytes.
            (
                endpoint().queue_capacity(8).queue_bytes(4),
                size("queue_bytes", 4, 8, MAX_QUEUE_BYTES),
            ),
            (
                endpoint().queue_bytes(MAX_QUEUE_BYTES + 1),
                size(
                    "queue_bytes",
                    MAX_QUEUE_BYTES + 1,
                    DEFAULT_QUEUE_MESSAGES,
                    MAX_QUEUE_BYTES,
                ),
            ),
            (
                endpoint().max_connections(0),
                size("max_connections", 0, 1, usize::MAX),
            ),
            (
                endpoint().send_timeout(Duration::ZERO),
                ConfigError::ZeroDuration {
                    option: "send_timeout",
                    value: Duration::ZERO,
                },
            ),
        ] {
            assert_eq!(bad.into_route::<()>().unwrap_err(), refusal);
        }
        assert_eq!(
            endpoint()
                .send_timeout(Duration::ZERO)
                .into_route::<()>()
                .unwrap_err()
                .to_string(),
            "send_timeout must be longer than zero, got 0ns"
        );
        // Zero grace is a choice (abandon the handler at once), not a mistake.
        assert!(
            endpoint()
                .close_grace(Duration::ZERO)
                .into_route::<()>()
                .is_ok()
        );
    }

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Bounds a connection's future, its tokio task's state: held for the life of every
    /// connection, so growing it grows the memory of every idle connection
    /// ([S5](bench/README.md#scenarios)). To measure
    /// it, set `BOUND` to 0 and run `cargo test -p ws-context --lib connection_future`: the
    /// failure gives the size (2,472 bytes when the socket was captured here and moved into
    /// the task's own future, which kept it twice; 1,928 since; 1,728 with the futures of the
    /// read and write paths taking their arguments once; 1,664 with the hooks shared and the
    /// metrics taken from the task; 1,144 with the task's handling path synchronous; 1,048
    /// with the message span boxed, `rejected` scoped and the close write boxed; 1,016 with a
    /// turn's event polled by hand; 1,024 with the flag that copies the message after a slow
    /// call out of its block; rustc 1.95, x86_64). tokio's task cell adds 96 bytes and rounds
    /// up to 128: 1,152 bytes a connection now, and 1,280 from 1,057 bytes. A change that
    /// passes the bound should say why in its commit, and move the bound.
    #[test]
    fn connection_future_stays_small() {
        const BOUND: usize = 1_024;
        let size = returned_size(live);
        assert!(
            size <= BOUND,
            "a connection's future is {size} bytes, over its bound of {BOUND}"
        );
    }
}
