//! [`serve`]: a `Router` on hyper's HTTP/1.1 connection builder, with the limits `axum::serve`
//! lacks on by default (request head and body timeouts, header size, idle keep-alive, a
//! shutdown timeout) and an accept loop that backs off on EMFILE.

use std::{
    fmt,
    future::{Future, IntoFuture},
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, body::Body, extract::ConnectInfo};
use http::Request;
use hyper::{
    body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint},
    server::conn::http1,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Sleep,
};
use tower::ServiceExt as _;

/// Default time a client has to send each request head, from the moment the server waits for
/// it to the blank line that ends it: 10 s. A WebSocket handshake is one request head (the
/// `101` goes out as soon as it is read), so this bounds the whole handshake. Ten seconds is
/// plenty for a person on a slow mobile link and short enough that a client holding
/// connections open with half-sent heads (slowloris) gets few of them.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to send a whole request body once its head is read: 30 s.
/// Enough for a few MiB on a slow link; a client that stalls half-way is answered with an
/// error and does not hold the connection (or a shutdown) any longer.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a keep-alive HTTP connection may sit idle between two requests: 5 s, as
/// Node.js's `keepAliveTimeout`. Idle connections cost a descriptor and a buffer each.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit of a request head (request line and headers) in bytes: 64 KiB. A larger head
/// is answered `431 Request Header Fields Too Large`. Browsers send a few KiB; nginx allows
/// 32 KiB by default.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest head limit [`Serve::max_header_bytes`] takes (hyper's minimum buffer).
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default limit of the number of headers in a request: 100 (hyper's default). More is
/// answered `431`.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default time HTTP connections get to finish their current request after the shutdown
/// signal before they are dropped: 5 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause of the accept loop after a failed accept (out of file descriptors, say); each
/// failure in a row doubles it, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A request body that was not received within the body read timeout
/// ([`Serve::body_read_timeout`]); the error a handler gets when it reads such a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body not received within {timeout:?}")]
pub struct BodyTimeout {
    timeout: Duration,
}

impl BodyTimeout {
    /// The timeout that passed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Serves an axum [`Router`] on a TCP listener, as `axum::serve` does, with the time and size
/// limits a server on the open internet needs, which `axum::serve` lacks.
///
/// | limit | default | what happens |
/// |---|---|---|
/// | [`handshake_timeout`](Serve::handshake_timeout) | 10 s ([`DEFAULT_HANDSHAKE_TIMEOUT`]) | a request head not complete in time: the connection is closed |
/// | [`body_read_timeout`](Serve::body_read_timeout) | 30 s ([`DEFAULT_BODY_READ_TIMEOUT`]) | reading the body fails with [`BodyTimeout`] |
/// | [`idle_timeout`](Serve::idle_timeout) | 5 s ([`DEFAULT_IDLE_TIMEOUT`]) | an idle keep-alive connection is closed |
/// | [`max_header_bytes`](Serve::max_header_bytes) | 64 KiB ([`DEFAULT_MAX_HEADER_BYTES`]) | `431`, connection closed |
/// | [`max_headers`](Serve::max_headers) | 100 ([`DEFAULT_MAX_HEADERS`]) | `431`, connection closed |
/// | [`shutdown_timeout`](Serve::shutdown_timeout) | 5 s ([`DEFAULT_SHUTDOWN_TIMEOUT`]) | after the shutdown signal, unfinished HTTP connections are dropped |
///
/// The handshake timeout runs from the moment the server waits for a request head to its
/// final blank line: a client that connects and sends nothing, half a request line, or
/// headers without the final blank line is closed when it passes. It applies again to each
/// later request on a keep-alive connection, so the wait between two requests is bounded by
/// the smaller of it and the idle timeout. Once a WebSocket request head is complete the
/// server answers at once and the connection is a WebSocket: a client that goes silent then
/// is found by the upgrader's liveness pings.
///
/// Pass the timeout of the upgrader your routes use ([`WsUpgrader::handshake_timeout`]).
///
/// When `accept` fails for lack of file descriptors (`EMFILE`, `ENFILE`) or memory, the
/// server logs it, pauses (10 ms, doubling up to 1 s while it keeps failing) and goes on
/// accepting; connections already open are served meanwhile.
///
/// Each request carries [`ConnectInfo<SocketAddr>`](ConnectInfo) with the peer's address, as
/// with `Router::into_make_service_with_connect_info::<SocketAddr>()`. HTTP/1.1 only.
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use ws_upgrader::WsUpgrader;
///
/// # async fn run() -> std::io::Result<()> {
/// let upgrader = WsUpgrader::builder()
///     .handshake_timeout(Duration::from_secs(5))
///     .build()
///     .expect("valid options");
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
/// ws_upgrader::serve(listener, app)
///     .handshake_timeout(upgrader.handshake_timeout())
///     .body_read_timeout(Some(Duration::from_secs(10)))
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
///
/// [`WsUpgrader::handshake_timeout`]: crate::WsUpgrader::handshake_timeout
pub fn serve(listener: TcpListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        limits: Limits {
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            body_read_timeout: Some(DEFAULT_BODY_READ_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        },
    }
}

/// A server being set up by [`serve`]; `.await` it to run it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    router: Router,
    limits: Limits,
}

/// Every connection's limits, copied into its task.
#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Option<Duration>,
    body_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_header_bytes: usize,
    max_headers: usize,
    shutdown_timeout: Duration,
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.limits.handshake_timeout)
            .field("body_read_timeout", &self.limits.body_read_timeout)
            .field("idle_timeout", &self.limits.idle_timeout)
            .field("max_header_bytes", &self.limits.max_header_bytes)
            .field("max_headers", &self.limits.max_headers)
            .field("shutdown_timeout", &self.limits.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// The time a client has to send each request head (see [`serve`]). Default:
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s); `None` means no limit, as with `axum::serve`,
    /// which lets one client hold a connection (and a graceful shutdown) forever.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.handshake_timeout = timeout;
        self
    }

    /// The time a client has to send a request's whole body, from the end of its head.
    /// Reading the body after that fails with [`BodyTimeout`] (a handler answers it as it
    /// answers any body error; `gofr-app` says `408`). Default: [`DEFAULT_BODY_READ_TIMEOUT`]
    /// (30 s); `None` means no limit.
    pub fn body_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.body_read_timeout = timeout;
        self
    }

    /// How long a keep-alive connection may wait for its next request after a response; then
    /// it is closed. Default: [`DEFAULT_IDLE_TIMEOUT`] (5 s); `None` leaves only the
    /// handshake timeout, which also runs while the server waits for the next request head.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// The largest request head (request line and headers) in bytes; a larger one is
    /// answered `431` and the connection closed. Default: [`DEFAULT_MAX_HEADER_BYTES`]
    /// (64 KiB); values under [`MIN_MAX_HEADER_BYTES`] (8 KiB) are raised to it.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_header_bytes = bytes.max(MIN_MAX_HEADER_BYTES);
        self
    }

    /// The most headers a request may have; more is answered `431`. Default:
    /// [`DEFAULT_MAX_HEADERS`] (100).
    pub fn max_headers(mut self, headers: usize) -> Self {
        self.limits.max_headers = headers;
        self
    }

    /// After the shutdown signal, how long HTTP connections get to finish the request they
    /// are serving (idle ones close at once); those still open then are dropped, so a client
    /// that never finishes its request cannot hold the shutdown. Default:
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`] (5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.limits.shutdown_timeout = timeout;
        self
    }

    /// Runs until `signal` completes, then stops accepting, lets every HTTP connection finish
    /// its current request within the [`shutdown_timeout`](Serve::shutdown_timeout) and
    /// returns. Upgraded WebSockets are not waited for: they belong to the code that upgraded
    /// them.
    pub async fn with_graceful_shutdown<F>(self, signal: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.run(signal).await
    }

    async fn run<F>(self, signal: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Serve {
            listener,
            router,
            limits,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a receiver; `closed` resolves when the last one ends.
        let (live_tx, live_rx) = watch::channel(());
        let mut signal = pin!(signal);
        // The current pause after failed accepts, while they keep failing.
        let mut backoff: Option<Duration> = None;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut signal => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    // Out of file descriptors and the like: the pending connection stays in
                    // the backlog, so retrying at once would spin. Pause, growing the pause
                    // while it lasts, and keep serving the connections already open.
                    let pause = backoff.map_or(ACCEPT_BACKOFF_MIN, |last| {
                        (last * 2).min(ACCEPT_BACKOFF_MAX)
                    });
                    if backoff.is_none() || pause == ACCEPT_BACKOFF_MAX {
                        tracing::error!(%error, retry_in_ms = pause.as_millis() as u64, "accept failed; backing off");
                    }
                    backoff = Some(pause);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut signal => break,
                    }
                }
            };
            if backoff.take().is_some() {
                tracing::info!("accepting connections again");
            }
            // Frames are small and latency matters: no Nagle delay (measured: p99 across
            // instances at 1,000 msgs/s went from 25-48 ms to 3-5 ms).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            tokio::spawn(serve_connection(
                stream,
                peer,
                router.clone(),
                limits,
                stop_rx.clone(),
                live_rx.clone(),
            ));
        }
        drop(listener);
        stop_tx.send_replace(true);
        drop(live_rx);
        live_tx.closed().await;
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    /// Runs forever (until the task is dropped).
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run(std::future::pending()))
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What a connection is doing, for its idle timeout: requests being served and requests
/// served so far.
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    in_flight: usize,
    served: u64,
}

/// Marks a request in flight until dropped (its response is ready, or it was cancelled).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(activity: &Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.in_flight += 1);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            a.served += 1;
        });
    }
}

/// Resolves once the connection has served a request and then had none in flight for
/// `timeout`.
async fn idle(mut activity: watch::Receiver<Activity>, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let now = *activity.borrow_and_update();
        if now.in_flight == 0 && now.served > 0 {
            tokio::select! {
                () = tokio::time::sleep(timeout) => return,
                changed = activity.changed() => if changed.is_err() { return std::future::pending().await },
            }
        } else if activity.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _live: watch::Receiver<()>,
) {
    let activity = Arc::new(watch::Sender::new(Activity::default()));
    let mut idle = pin!(idle(activity.subscribe(), limits.idle_timeout));
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = InFlight::start(&activity);
        request.extensions_mut().insert(ConnectInfo(peer));
        let request = match limits.body_read_timeout {
            Some(timeout) if !request.body().is_end_stream() => {
                request.map(|body| Body::new(TimedBody::new(body, timeout)))
            }
            _ => request.map(Body::new),
        };
        let response = router.clone().oneshot(request);
        async move {
            let response = response.await;
            drop(in_flight);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    // hyper closes the connection when a request head is not complete in time, and answers
    // 431 to a head over the size or header-count limit.
    builder.header_read_timeout(limits.handshake_timeout);
    builder.max_header_size(limits.max_header_bytes);
    // Also what the connection's read buffer may grow to (hyper's default is ~400 KiB).
    builder.max_buf_size(limits.max_header_bytes);
    if limits.max_headers != DEFAULT_MAX_HEADERS {
        // hyper's own default; setting it moves the parser's header array to the heap.
        builder.max_headers(limits.max_headers);
    }
    let mut connection = pin!(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
    );
    let mut stopping: Option<Pin<Box<Sleep>>> = None;
    let mut idled = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|stop| *stop), if stopping.is_none() => {
                stopping = Some(Box::pin(tokio::time::sleep(limits.shutdown_timeout)));
                connection.as_mut().graceful_shutdown();
            }
            () = async { if let Some(deadline) = stopping.as_mut() { deadline.await } }, if stopping.is_some() => {
                tracing::debug!(%peer, "HTTP connection still busy after the shutdown timeout; dropping it");
                break;
            }
            () = &mut idle, if !idled => {
                idled = true;
                tracing::trace!(%peer, "keep-alive connection idle; closing it");
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A request body that must arrive whole within a time limit.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout {
                    timeout: this.timeout,
                })))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
