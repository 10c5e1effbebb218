//! [`TestServer`]: an `App` or an axum `Router` served on a free loopback port.

use std::{fmt, future::Future, net::SocketAddr, panic::Location, time::Duration};

use axum::Router;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use ws_context::{CloseFrame, ConnectionHub, ConnectionId};

use crate::{
    client::WsClient,
    served::Served,
    wait::{DEFAULT_TIMEOUT, fail, wait_until},
};

/// How long [`TestServer::shutdown`] waits for the server to finish: an app's own bound
/// (its grace period plus 2 s) with the default grace period of 5 s, and a margin.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A server under test on `127.0.0.1` with a port the OS chose, bound before it is spawned
/// (so a client can connect at once). Dropping it stops it; [`shutdown`](TestServer::shutdown)
/// stops it gracefully and waits.
///
/// ```
/// use ws_context::{Context, Endpoint};
/// use ws_test::TestServer;
///
/// async fn echo(ctx: Context) -> Result<String, ws_context::BindError> {
///     ctx.bind()
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let router = axum::Router::new().route("/ws", Endpoint::new(echo).into_route().expect("valid endpoint options"));
/// let server = TestServer::router(router).await;
/// let mut client = server.connect("/ws").await;
/// client.send_text("hi").await;
/// assert_eq!(client.recv_text().await, "hi");
/// # }
/// ```
pub type TestServer = Served<InProcess>;

/// What runs a [`TestServer`]: a task of the test's runtime, stopped when the server is
/// dropped.
pub struct InProcess {
    hub: Option<ConnectionHub>,
    stop: StopHandle,
    /// The server; `Err` with the reason when it stopped with an error.
    task: Option<JoinHandle<Result<(), String>>>,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess")
            .field("hub", &self.hub.as_ref().map(ConnectionHub::len))
            .finish_non_exhaustive()
    }
}

/// Stops a [`TestServer`] from anywhere (a handler, another task), as a signal stops an app.
/// Cloneable.
#[derive(Clone)]
pub struct StopHandle(Stop);

#[derive(Clone)]
enum Stop {
    Router(watch::Sender<bool>),
    #[cfg(feature = "app")]
    App(gofr_app::ShutdownHandle),
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StopHandle")
    }
}

impl StopHandle {
    /// Starts the graceful shutdown: no new connections, close 1001 to every WebSocket of
    /// the hub (if the server has one).
    pub fn shutdown(&self) {
        match &self.0 {
            Stop::Router(stop) => {
                stop.send_replace(true);
            }
            #[cfg(feature = "app")]
            Stop::App(handle) => handle.shutdown(),
        }
    }
}

#[track_caller]
fn bind_loopback() -> impl Future<Output = (TcpListener, SocketAddr)> {
    let caller = Location::caller();
    async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail(caller, &format!("cannot bind 127.0.0.1:0: {e}")));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| fail(caller, &format!("no local address: {e}")));
        (listener, addr)
    }
}

impl TestServer {
    /// Serves a plain axum `Router` (say, routes of ws-context `Endpoint`s) with the
    /// upgrader's `serve` (peer addresses known to the hub). Without a hub,
    /// [`hub`](TestServer::hub) and the room and connection assertions are not available:
    /// see [`router_with_hub`](TestServer::router_with_hub).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    #[track_caller]
    pub fn router(router: Router) -> impl Future<Output = TestServer> {
        TestServer::serve_router(router, None)
    }

    /// Serves a plain axum `Router` whose endpoints share `hub`
    /// (`Endpoint::new(h).hub(hub.clone())`); on shutdown every connection of the hub gets
    /// close 1001, as an app does.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    #[track_caller]
    pub fn router_with_hub(router: Router, hub: ConnectionHub) -> impl Future<Output = TestServer> {
        TestServer::serve_router(router, Some(hub))
    }

    /// Serves one ws-context `Endpoint` at `path`: the shortest way to test a handler.
    ///
    /// ```
    /// use ws_context::{Context, Endpoint};
    /// use ws_test::TestServer;
    ///
    /// async fn echo(ctx: Context) -> Result<String, ws_context::BindError> {
    ///     ctx.bind()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = TestServer::endpoint("/ws", Endpoint::new(echo)).await;
    /// let mut client = server.connect("/ws").await;
    /// client.send_text("hi").await;
    /// assert_eq!(client.recv_text().await, "hi");
    /// server.shutdown().await;
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// When the endpoint refuses one of its options (the message names it), or no loopback
    /// port can be bound.
    #[track_caller]
    pub fn endpoint(
        path: &str,
        endpoint: ws_context::Endpoint,
    ) -> impl Future<Output = TestServer> {
        let route = match endpoint.into_route() {
            Ok(route) => route,
            Err(error) => panic!("TestServer::endpoint({path:?}): {error}"),
        };
        TestServer::router(Router::new().route(path, route))
    }

    #[track_caller]
    fn serve_router(
        router: Router,
        hub: Option<ConnectionHub>,
    ) -> impl Future<Output = TestServer> {
        let bind = bind_loopback();
        async move {
            let (listener, addr) = bind.await;
            let (stop, mut stopped) = watch::channel(false);
            let closing = hub.clone();
            let task = tokio::spawn(async move {
                ws_upgrader::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                        if let Some(hub) = closing {
                            hub.shutdown(CloseFrame::going_away("test server stopped"));
                        }
                    })
                    .await
                    .map_err(|error| error.to_string())
            });
            TestServer {
                addr,
                metrics_addr: None,
                kind: InProcess {
                    hub,
                    stop: StopHandle(Stop::Router(stop)),
                    task: Some(task),
                },
            }
        }
    }

    /// Serves a gofr-app `App` as `App::serve` does (same routes, layers, limits and
    /// shutdown), on a loopback port, with `/metrics` on another one
    /// ([`metrics_url`](TestServer::metrics_url)), whatever `HTTP_PORT` and `METRICS_PORT`
    /// say. The app's hub and shutdown handle are the server's.
    ///
    /// # Panics
    ///
    /// When the app's configuration is invalid (the message names the variable), or no
    /// loopback port can be bound.
    #[cfg(feature = "app")]
    #[cfg_attr(docsrs, doc(cfg(feature = "app")))]
    #[track_caller]
    pub fn app(mut app: gofr_app::App) -> impl Future<Output = TestServer> {
        let caller = Location::caller();
        if let Err(error) = app.config() {
            fail(
                caller,
                &format!("the App's configuration is invalid: {error}"),
            );
        }
        let bind = bind_loopback();
        let bind_metrics = bind_loopback();
        async move {
            let (listener, addr) = bind.await;
            let (metrics, metrics_addr) = bind_metrics.await;
            app.metrics_listener(metrics);
            let hub = app.hub();
            let stop = StopHandle(Stop::App(app.shutdown_handle()));
            let task = tokio::spawn(async move {
                app.serve(listener).await.map_err(|error| {
                    tracing::error!(%error, "ws-test: the App stopped with an error");
                    error.to_string()
                })
            });
            TestServer {
                addr,
                metrics_addr: Some(metrics_addr),
                kind: InProcess {
                    hub: Some(hub),
                    stop,
                    task: Some(task),
                },
            }
        }
    }

    /// The hub of every open connection.
    ///
    /// # Panics
    ///
    /// For a router started without one ([`router`](TestServer::router)).
    #[track_caller]
    pub fn hub(&self) -> &ConnectionHub {
        match &self.kind.hub {
            Some(hub) => hub,
            None => fail(
                Location::caller(),
                "this TestServer has no hub: start it with TestServer::router_with_hub or ::app",
            ),
        }
    }

    /// A handle that stops the server from anywhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.kind.stop.clone()
    }

    /// Stops the server gracefully (close 1001 to every WebSocket, handlers given their
    /// grace period) and waits until it has stopped, at most 10 s.
    ///
    /// # Panics
    ///
    /// When it has not stopped by then, stopped with an error, or its task panicked.
    #[track_caller]
    pub fn shutdown(mut self) -> impl Future<Output = ()> {
        let caller = Location::caller();
        self.kind.stop.shutdown();
        let task = self.kind.task.take();
        async move {
            let Some(task) = task else { return };
            match tokio::time::timeout(SHUTDOWN_WAIT, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => fail(
                    caller,
                    &format!("the server stopped with an error: {error}"),
                ),
                Ok(Err(error)) => fail(caller, &format!("the server task failed: {error}")),
                Err(_) => fail(
                    caller,
                    &format!("the server did not stop within {SHUTDOWN_WAIT:?}"),
                ),
            }
        }
    }

    /// Waits until the hub holds exactly `count` connections.
    ///
    /// # Panics
    ///
    /// When it does not within [`DEFAULT_TIMEOUT`] (the message gives the last count), or
    /// the server has no hub.
    #[track_caller]
    pub fn expect_connections(&self, count: usize) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        let hub = self.hub();
        async move {
            let waited = wait_until(DEFAULT_TIMEOUT, || match hub.len() {
                n if n == count => Ok(()),
                n => Err(Some(format!(", there are {n}"))),
            })
            .await;
            if let Err(last) = waited {
                fail(
                    caller,
                    &format!(
                        "waited {DEFAULT_TIMEOUT:?} for {count} open connections on the hub{}",
                        last.unwrap_or_default()
                    ),
                );
            }
        }
    }

    /// The server's id for `client`'s connection, found in the hub by the client's address
    /// (waiting, bounded, for the connection to be registered).
    ///
    /// # Panics
    ///
    /// When no connection from that address appears within [`DEFAULT_TIMEOUT`], or the
    /// server has no hub.
    #[track_caller]
    pub fn connection_id(&self, client: &WsClient) -> impl Future<Output = ConnectionId> + '_ {
        let caller = Location::caller();
        let hub = self.hub();
        let peer = client.local_addr();
        async move {
            let found = wait_until(DEFAULT_TIMEOUT, || {
                hub.list()
                    .into_iter()
                    .find(|info| info.remote_addr == Some(peer))
                    .map(|info| info.id)
                    .ok_or(None)
            })
            .await;
            found.unwrap_or_else(|_| {
                fail(
                    caller,
                    &format!("no connection from {peer} in the hub after {DEFAULT_TIMEOUT:?}"),
                )
            })
        }
    }

    /// Waits until `room` has exactly `count` members.
    ///
    /// # Panics
    ///
    /// When it does not within [`DEFAULT_TIMEOUT`] (the message gives the last members),
    /// or the server has no hub.
    #[track_caller]
    pub fn expect_room_size<'a>(
        &'a self,
        room: &'a str,
        count: usize,
    ) -> impl Future<Output = ()> + 'a {
        let caller = Location::caller();
        let hub = self.hub();
        async move {
            let waited = wait_until(DEFAULT_TIMEOUT, || {
                let members = hub.room_members(room);
                if members.len() == count {
                    Ok(())
                } else {
                    Err(Some(format!(", it has {}: {members:?}", members.len())))
                }
            })
            .await;
            if let Err(last) = waited {
                fail(
                    caller,
                    &format!(
                        "waited {DEFAULT_TIMEOUT:?} for room {room:?} to have {count} members{}",
                        last.unwrap_or_default()
                    ),
                );
            }
        }
    }

    /// Waits until `client` is a member of `room` (`true`) or is not (`false`).
    ///
    /// # Panics
    ///
    /// When that does not happen within [`DEFAULT_TIMEOUT`], the client's connection is not
    /// in the hub, or the server has no hub.
    #[track_caller]
    pub fn expect_member<'a>(
        &'a self,
        room: &'a str,
        client: &WsClient,
        member: bool,
    ) -> impl Future<Output = ()> + 'a {
        let caller = Location::caller();
        let hub = self.hub();
        let id = self.connection_id(client);
        let peer = client.local_addr();
        async move {
            let id = id.await;
            let waited = wait_until(DEFAULT_TIMEOUT, || {
                if hub.room_members(room).contains(&id) == member {
                    Ok(())
                } else {
                    Err(None)
                }
            })
            .await;
            if waited.is_err() {
                let is = if member { "be" } else { "no longer be" };
                fail(
                    caller,
                    &format!(
                        "waited {DEFAULT_TIMEOUT:?} for {id} ({peer}) to {is} a member of room \
                         {room:?}; members: {:?}",
                        hub.room_members(room)
                    ),
                );
            }
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
