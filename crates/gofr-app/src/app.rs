//! [`App`]: the routes (HTTP, WebSocket, health), the hub and outbound services it owns, and
//! [`App::serve`]: config checked, routes built, listeners served until a signal or the
//! [`ShutdownHandle`], then the ordered shutdown.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use ::http::HeaderMap;
use axum::{
    Extension, Json, Router,
    extract::Request,
    routing::{MethodFilter, on},
};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use ws_client_pool::{PoolError, ServiceOptions, WsClientPool};
use ws_context::{BoxHandlerFn, CloseFrame, ConnectionHub, Endpoint, Handler};
use ws_message::Encode;
use ws_upgrader::WsUpgrader;

use crate::{
    AppError, Config, ConfigError, HttpHandler,
    admission::{self, Admission},
    http::{self, BoxHttpHandler},
};

/// Time allowed, after the handlers' grace period, for close handshakes to complete; the
/// outbound services get what is left of [`EXIT_MARGIN`].
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(1);
/// The process exits within `SHUTDOWN_GRACE_PERIOD` plus this after the signal, whatever the
/// clients do.
const EXIT_MARGIN: Duration = Duration::from_secs(2);
/// Of [`EXIT_MARGIN`], what is kept back for returning from `serve` and exiting.
const EXIT_RESERVE: Duration = Duration::from_millis(400);

type RouterLayer = Box<dyn FnOnce(Router) -> Router + Send>;
type ConfigureEndpoint = Box<dyn FnOnce(Endpoint) -> Endpoint + Send>;

/// A WebSocket route waiting for `serve`, where it becomes an [`Endpoint`].
struct WebSocketRoute {
    path: String,
    handler: BoxHandlerFn,
    configure: Option<ConfigureEndpoint>,
}

/// The application: routes, WebSocket endpoints and the server that runs them (GoFr's
/// `gofr.New()`).
///
/// ```no_run
/// use gofr_app::{App, Context, Error, HttpContext};
///
/// async fn ws_handler(ctx: Context) -> Result<String, Error> {
///     let message: String = ctx.bind()?;
///     tracing::info!(%message, "received");
///     Ok(message)
/// }
///
/// async fn hello(_ctx: HttpContext) -> Result<&'static str, Error> {
///     Ok("Hello World!")
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), gofr_app::AppError> {
///     let mut app = App::new();
///     app.get("/hello", hello);
///     app.websocket("/ws", ws_handler);
///     app.run().await
/// }
/// ```
pub struct App {
    config: Result<Config, ConfigError>,
    router: Router,
    websockets: Vec<WebSocketRoute>,
    upgrader: WsUpgrader,
    hub: ConnectionHub,
    services: WsClientPool,
    layers: Vec<RouterLayer>,
    shutdown: ShutdownHandle,
    metrics_listener: Option<TcpListener>,
    /// The hub's link to the other instances; joined in `serve` when `REDIS_URL` is set.
    #[cfg(feature = "redis")]
    cluster: ws_backplane_redis::RedisBackplane,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field(
                "websockets",
                &self.websockets.iter().map(|w| &w.path).collect::<Vec<_>>(),
            )
            .field("upgrader", &self.upgrader)
            .finish_non_exhaustive()
    }
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    /// An app configured from the environment and `configs/.env` (see [`Config`]). An invalid
    /// value is reported by [`run`](App::run), before anything is bound.
    pub fn new() -> Self {
        App::build(Config::from_env())
    }

    /// An app with the given configuration.
    pub fn with_config(config: Config) -> Self {
        App::build(Ok(config))
    }

    fn build(config: Result<Config, ConfigError>) -> Self {
        // Logging starts with the app, as in GoFr, so what happens before `run` (a first dial
        // of `add_ws_service` that fails, say) is logged too.
        if let Ok(config) = &config {
            crate::logging::init(config);
        }
        // With the feature, the hub always has the Redis backplane; until `serve` connects
        // it (only when `REDIS_URL` is set) it keeps every delivery in this process.
        #[cfg(feature = "redis")]
        let mut config = config;
        #[cfg(feature = "redis")]
        let cluster = match &config {
            Ok(settings) => match backplane_settings(settings) {
                Ok(settings) => ws_backplane_redis::RedisBackplane::with_settings(settings),
                Err(error) => {
                    config = Err(error);
                    ws_backplane_redis::RedisBackplane::new()
                }
            },
            Err(_) => ws_backplane_redis::RedisBackplane::new(),
        };
        #[cfg(feature = "redis")]
        let hub = ConnectionHub::with_backplane(cluster.clone());
        #[cfg(not(feature = "redis"))]
        let hub = ConnectionHub::new();
        let upgrader = default_upgrader(config.as_ref().ok());
        App {
            config,
            router: Router::new(),
            websockets: Vec::new(),
            upgrader,
            hub,
            services: WsClientPool::new(),
            layers: Vec::new(),
            shutdown: ShutdownHandle::new(),
            metrics_listener: None,
            #[cfg(feature = "redis")]
            cluster,
        }
    }

    /// Joins the cluster of instances on this Redis when the app starts, as `REDIS_URL`
    /// does: rooms, broadcasts, send-to-id and close-by-id then span every instance.
    #[cfg(feature = "redis")]
    pub fn redis_url(&mut self, url: impl Into<String>) -> &mut Self {
        if let Ok(config) = &mut self.config {
            config.redis_url = Some(url.into());
        }
        self
    }

    /// The configuration, or why it is invalid.
    pub fn config(&self) -> Result<&Config, &ConfigError> {
        self.config.as_ref()
    }

    /// Adds a GET route.
    pub fn get<H: HttpHandler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.http(MethodFilter::GET, path, handler.into_boxed())
    }

    /// Adds a POST route; a successful answer is 201 Created.
    pub fn post<H: HttpHandler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.http(MethodFilter::POST, path, handler.into_boxed())
    }

    /// Adds a PUT route.
    pub fn put<H: HttpHandler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.http(MethodFilter::PUT, path, handler.into_boxed())
    }

    /// Adds a PATCH route.
    pub fn patch<H: HttpHandler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.http(MethodFilter::PATCH, path, handler.into_boxed())
    }

    /// Adds a DELETE route.
    pub fn delete<H: HttpHandler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.http(MethodFilter::DELETE, path, handler.into_boxed())
    }

    fn http(&mut self, method: MethodFilter, path: &str, handler: BoxHttpHandler) -> &mut Self {
        let hub = self.hub.clone();
        let route = on(method, move |request: Request| {
            http::serve(handler.clone(), hub.clone(), request)
        });
        self.router = std::mem::take(&mut self.router).route(path, route);
        self
    }

    /// Adds a WebSocket route (GoFr's `app.WebSocket`): the handler is called once for every
    /// message, and what it returns is written back.
    pub fn websocket<H: Handler<M>, M>(&mut self, path: &str, handler: H) -> &mut Self {
        self.websockets.push(WebSocketRoute {
            path: path.to_owned(),
            handler: handler.into_boxed(),
            configure: None,
        });
        self
    }

    /// Adds a WebSocket route like [`websocket`](App::websocket), then lets `configure`
    /// adjust its [`Endpoint`]: lifecycle hooks, a connection limit, queue size, send
    /// timeout. It gets the endpoint with the app's upgrader, hub and grace period already
    /// set. An option value that cannot work stops [`serve`](App::serve) before it serves
    /// anything, with [`AppError::WebSocketRoute`].
    ///
    /// ```no_run
    /// use gofr_app::{App, CloseFrame, Connection, Context, Error, Message};
    ///
    /// async fn join_room(conn: Connection) -> Result<(), CloseFrame> {
    ///     let room = conn.path_param("room").unwrap_or("lobby").to_owned();
    ///     conn.hub().join(conn.id(), &room).await;
    ///     Ok(())
    /// }
    ///
    /// async fn chat(ctx: Context) -> Result<(), Error> {
    ///     let text: String = ctx.bind()?;
    ///     let room = ctx.path_param("room").unwrap_or("lobby");
    ///     ctx.hub().send_to_room(room, Message::text(text)).await;
    ///     Ok(())
    /// }
    ///
    /// let mut app = App::new();
    /// app.websocket_with("/ws/{room}", chat, |route| {
    ///     route.on_connect(join_room).max_connections(10_000)
    /// });
    /// ```
    pub fn websocket_with<H, M, F>(&mut self, path: &str, handler: H, configure: F) -> &mut Self
    where
        H: Handler<M>,
        F: FnOnce(Endpoint) -> Endpoint + Send + 'static,
    {
        self.websockets.push(WebSocketRoute {
            path: path.to_owned(),
            handler: handler.into_boxed(),
            configure: Some(Box::new(configure)),
        });
        self
    }

    /// Replaces the upgrader of every WebSocket route, registered before or after this call
    /// (GoFr's `app.OverrideWebsocketUpgrader`).
    pub fn override_websocket_upgrader(&mut self, upgrader: WsUpgrader) -> &mut Self {
        self.upgrader = upgrader;
        self
    }

    /// Every open WebSocket connection: list them, push to them, close them.
    pub fn hub(&self) -> ConnectionHub {
        self.hub.clone()
    }

    /// Registers an outbound WebSocket service and connects to it (GoFr's `app.AddWSService`):
    /// handshake `headers`, `enable_reconnection`, and the fixed `retry_interval` between
    /// dials. Waits for the first dial; if it fails, with reconnection on this returns `Ok` and
    /// keeps dialling in the background, with it off it returns the dial error. A bad URL or
    /// a header the handshake sets itself is an error at once.
    ///
    /// The connection also comes back after any later drop, messages written while it is down
    /// are queued, and `/.well-known/health` shows its state. See [`WsClientPool`].
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), gofr_app::PoolError> {
    /// use std::time::Duration;
    ///
    /// let app = gofr_app::App::new();
    /// app.add_ws_service(
    ///     "notification-service",
    ///     "ws://notifications.example.com/ws",
    ///     http::HeaderMap::new(),
    ///     true,
    ///     Duration::from_secs(5),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_ws_service(
        &self,
        name: &str,
        url: &str,
        headers: HeaderMap,
        enable_reconnection: bool,
        retry_interval: Duration,
    ) -> Result<(), PoolError> {
        self.services
            .add_ws_service(name, url, headers, enable_reconnection, retry_interval)
            .await
    }

    /// [`add_ws_service`](App::add_ws_service) with every setting: queue capacity, ping
    /// interval, backoff policy, timeouts.
    pub async fn add_ws_service_with(
        &self,
        name: &str,
        options: ServiceOptions,
    ) -> Result<(), PoolError> {
        self.services.add_ws_service_with(name, options).await
    }

    /// Queues a message for a service (GoFr's `WriteMessageToService`), encoded as
    /// `write_message_to_socket` does. Handlers use
    /// [`ServiceExt::write_message_to_service`](crate::ServiceExt::write_message_to_service).
    pub fn write_message_to_service<T: Encode + ?Sized>(
        &self,
        name: &str,
        data: &T,
    ) -> Result<(), PoolError> {
        self.services.write_message_to_service(name, data)
    }

    /// The outbound WebSocket services: state, the messages they send back.
    pub fn ws_services(&self) -> WsClientPool {
        self.services.clone()
    }

    /// Adds plain axum routes, for what the GoFr-style handlers do not cover.
    pub fn merge(&mut self, router: Router) -> &mut Self {
        self.router = std::mem::take(&mut self.router).merge(router);
        self
    }

    /// Wraps every route, HTTP and WebSocket, in a tower layer (GoFr's `app.UseMiddleware`).
    /// WebSocket routes run it before the upgrade, so authentication refuses with 401 before
    /// any socket exists. Health endpoints are not wrapped.
    pub fn layer<L>(&mut self, layer: L) -> &mut Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: tower::Service<Request, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<Request>>::Response: axum::response::IntoResponse + 'static,
        <L::Service as tower::Service<Request>>::Future: Send + 'static,
    {
        self.layers
            .push(Box::new(move |router| router.layer(layer)));
        self
    }

    /// Serves `/metrics` on this listener instead of binding `METRICS_PORT`.
    pub fn metrics_listener(&mut self, listener: TcpListener) -> &mut Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// At most this many WebSocket connections open at once across all routes (at least 1),
    /// as `WS_MAX_CONNECTIONS` sets; more are refused with 503 and `Retry-After` before the
    /// upgrade. Default 10,000. Each route may have its own lower limit
    /// ([`Endpoint::max_connections`]).
    pub fn ws_max_connections(&mut self, connections: usize) -> &mut Self {
        if let Ok(config) = &mut self.config {
            config.ws_max_connections = connections.max(1);
        }
        self
    }

    /// At most this many WebSocket connections open at once from one client IP address, as
    /// `WS_MAX_CONNECTIONS_PER_IP` sets; `None` (the default) means no such limit. Behind a
    /// proxy every client has the proxy's address: limit there instead.
    pub fn ws_max_connections_per_ip(&mut self, connections: Option<usize>) -> &mut Self {
        if let Ok(config) = &mut self.config {
            config.ws_max_connections_per_ip = connections.map(|n| n.max(1));
        }
        self
    }

    /// A handle that shuts the app down when asked, as SIGINT or SIGTERM do.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Binds `HTTP_HOST:HTTP_PORT` and serves until SIGINT, SIGTERM or the
    /// [`ShutdownHandle`]; then shuts down gracefully (see [`serve`](App::serve)).
    pub async fn run(self) -> Result<(), AppError> {
        let config = self.config.clone()?;
        let address = SocketAddr::new(config.http_host, config.http_port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| AppError::Io {
                address: address.to_string(),
                source,
            })?;
        self.serve(listener).await
    }

    /// Serves on a bound listener until SIGINT, SIGTERM or the [`ShutdownHandle`], with
    /// `/metrics` on `METRICS_PORT` (or the [`metrics_listener`](App::metrics_listener)).
    /// Then it stops accepting, sends close 1001 to every WebSocket (also to those whose
    /// upgrade completes during the shutdown), gives running handlers and unfinished HTTP
    /// requests the shutdown grace period to finish, waits for the close handshakes, closes
    /// every outbound service with 1001 (stopping their reconnect loops) and returns: within
    /// `SHUTDOWN_GRACE_PERIOD` plus 2 s of the signal, whatever the clients do.
    pub async fn serve(self, listener: TcpListener) -> Result<(), AppError> {
        let config = self.config?;
        // Routes first: an option that cannot work stops the app before anything is served (the metrics port included).
        let mut router = self.router;
        let admission = Admission::new(config.ws_max_connections, config.ws_max_connections_per_ip);
        for route in self.websockets {
            let mut endpoint = Endpoint::new(route.handler)
                .upgrader(self.upgrader.clone())
                .hub(self.hub.clone())
                .close_grace(config.shutdown_grace);
            if let Some(configure) = route.configure {
                endpoint = configure(endpoint);
            }
            // Inside the app's own layers: authentication refuses before a place is taken.
            let (admission, upgrader) = (admission.clone(), self.upgrader.clone());
            let admit = axum::middleware::from_fn(move |request, next| {
                admission::admit(admission.clone(), upgrader.clone(), request, next)
            });
            let method_router =
                endpoint
                    .into_route()
                    .map_err(|source| AppError::WebSocketRoute {
                        path: route.path.clone(),
                        source,
                    })?;
            router = router.route(&route.path, method_router.layer(admit));
        }
        crate::metrics::install();
        // Every upgrader that was not given a budget of its own shares the process's.
        ws_upgrader::process_inbound_budget().set_limit(config.ws_inbound_budget);
        if config.history_len.is_some() || config.history_age.is_some() {
            let (len, age) = self.hub.history_limits();
            self.hub.set_history_limits(
                config.history_len.unwrap_or(len),
                config.history_age.unwrap_or(age),
            );
        }
        if let Some(delay) = config.presence_leave_delay {
            self.hub.set_presence_leave_delay(delay);
        }
        #[cfg(feature = "redis")]
        if let Some(url) = &config.redis_url {
            self.cluster.connect(url).await?;
        }
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let metrics_listener = match self.metrics_listener {
            Some(listener) => listener,
            None => {
                let metrics_address = SocketAddr::new(config.http_host, config.metrics_port);
                TcpListener::bind(metrics_address)
                    .await
                    .map_err(|source| AppError::Io {
                        address: metrics_address.to_string(),
                        source,
                    })?
            }
        };
        let metrics_address = metrics_listener
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        // The same head, idle and size limits as the app's port.
        let metrics_serve = ws_upgrader::serve(metrics_listener, crate::metrics::routes())
            .handshake_timeout(Some(config.http_read_header_timeout))
            .body_read_timeout(Some(config.http_read_timeout))
            .idle_timeout(Some(config.http_idle_timeout))
            .max_header_bytes(config.http_max_header_bytes);
        let metrics_server = tokio::spawn(async move {
            if let Err(error) = metrics_serve.await {
                tracing::error!(%error, "metrics server failed");
            }
        });
        tracing::info!(%metrics_address, "metrics on http://{metrics_address}/metrics");

        // Handlers find the services in the request extensions (`ServiceExt`).
        router = router.layer(Extension(self.services.clone()));
        for layer in self.layers {
            router = layer(router);
        }
        let router = router
            .merge(crate::health::routes(
                &config,
                self.hub.clone(),
                self.services.clone(),
            ))
            .layer(axum::middleware::from_fn(admission::catch_panic));

        tracing::info!(app = %config.app_name, %address, "server listening on {address}");
        let hub = self.hub.clone();
        let mut stop = self.shutdown.subscribe();
        // The head timeout is the stricter of the upgrader's handshake timeout and
        // `HTTP_READ_HEADER_TIMEOUT`: both are promises about the same wait.
        let header_timeout = self
            .upgrader
            .handshake_timeout()
            .map_or(config.http_read_header_timeout, |t| {
                t.min(config.http_read_header_timeout)
            });
        // When the shutdown started: every later wait is measured from it, so the process
        // exits within the grace period plus EXIT_MARGIN whatever the clients do.
        let stopped_at = Arc::new(OnceLock::new());
        let stop_clock = stopped_at.clone();
        // Not axum::serve: it has no limit on reading a request, and the upgrader's handshake
        // timeout must cover that too. Requests still carry ConnectInfo<SocketAddr>.
        ws_upgrader::serve(listener, router)
            .handshake_timeout(Some(header_timeout))
            .body_read_timeout(Some(config.http_read_timeout))
            .idle_timeout(Some(config.http_idle_timeout))
            .max_header_bytes(config.http_max_header_bytes)
            // HTTP requests get the handlers' grace period too; then they are dropped.
            .shutdown_timeout(config.shutdown_grace)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    () = os_signal() => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
                let _ = stop_clock.set(Instant::now());
                // Also every socket whose upgrade is under way and completes from now on.
                let sockets = hub.shutdown(CloseFrame::going_away("server shutting down"));
                tracing::info!(
                    sockets,
                    "shutting down: no new connections, closing WebSockets with 1001"
                );
            })
            .await
            .map_err(|source| AppError::Io {
                address: address.clone(),
                source,
            })?;

        let stopped_at = stopped_at.get().copied().unwrap_or_else(Instant::now);
        let grace_end = stopped_at
            .checked_add(config.shutdown_grace)
            .unwrap_or_else(Instant::now);
        let sockets_deadline = grace_end + CLOSE_HANDSHAKE;
        let exit_deadline = grace_end + EXIT_MARGIN - EXIT_RESERVE;
        if tokio::time::timeout_at(sockets_deadline, self.hub.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.hub.len(),
                "WebSockets still open after the grace period; exiting anyway"
            );
        }
        // After the handlers, so what they queued is still sent.
        if tokio::time::timeout_at(exit_deadline, self.services.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "outbound services still closing after the grace period; exiting anyway"
            );
        }
        metrics_server.abort();
        #[cfg(feature = "redis")]
        self.cluster.disconnect();
        tracing::info!("server stopped");
        Ok(())
    }
}

/// The backplane's settings from the configuration: channel prefix, shared secret, TLS CA.
#[cfg(feature = "redis")]
fn backplane_settings(config: &Config) -> Result<ws_backplane_redis::Settings, ConfigError> {
    let mut settings = ws_backplane_redis::Settings::builder().prefix(&config.backplane_prefix);
    if let Some(secret) = &config.backplane_secret {
        settings = settings.secret(secret.expose());
    }
    if let Some(path) = &config.redis_tls_ca_cert {
        let pem = std::fs::read(path).map_err(|_| {
            ConfigError::new(
                "REDIS_TLS_CA_CERT",
                &path.display().to_string(),
                "is not a readable file",
            )
        })?;
        settings = settings.tls_root_ca(pem);
    }
    // Only the prefix comes from the configuration, which checked it by the same rule.
    settings.build().map_err(|_| {
        ConfigError::new(
            "WS_BACKPLANE_PREFIX",
            &config.backplane_prefix,
            "must be 1-64 ASCII letters, digits, '.', '_' or '-'",
        )
    })
}

/// Shuts an [`App`] down from code, as a signal would. Cloneable.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    fn new() -> Self {
        ShutdownHandle(watch::channel(false).0)
    }

    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

async fn os_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// `{"data": value}`, GoFr's success envelope.
pub(crate) fn data<T: serde::Serialize>(value: T) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "data": value }))
}

/// The upgrader of an app that is given none: the defaults, with `WS_MESSAGE_TIMEOUT`.
fn default_upgrader(config: Option<&Config>) -> WsUpgrader {
    let Some(config) = config else {
        return WsUpgrader::new();
    };
    WsUpgrader::builder()
        .message_timeout(config.ws_message_timeout)
        .build()
        // The setting was checked against the same range when it was read.
        .unwrap_or_default()
}
