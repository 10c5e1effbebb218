//! The pool: named services, their tasks, writes, reads and shutdown.

use std::{
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderMap;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use ws_message::{Encode, Message};

use crate::{
    PoolError, Reconnect, ServiceOptions, ServiceState, ServiceStatus,
    connection::{self, Service},
};

/// A pool of named outbound WebSocket connections (GoFr's `AddWSService` /
/// `WriteMessageToService`). Cheap to clone; every clone is the same pool.
///
/// Each service has one task that owns its socket: it sends the service's queue in order,
/// reads what the service sends, pings it, and re-dials when the connection drops. The tasks
/// stop on [`shutdown`](WsClientPool::shutdown), or when the last clone of the pool is dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use ws_client_pool::WsClientPool;
///
/// # async fn run() -> Result<(), ws_client_pool::PoolError> {
/// let pool = WsClientPool::new();
/// pool.add_ws_service(
///     "notification-service",
///     "ws://127.0.0.1:8081/ws",
///     http::HeaderMap::new(),
///     true,
///     Duration::from_secs(5),
/// )
/// .await?;
/// pool.write_message_to_service(
///     "notification-service",
///     &serde_json::json!({"title": "New Message"}),
/// )?;
/// pool.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WsClientPool {
    inner: Arc<Inner>,
}

struct Inner {
    services: RwLock<HashMap<String, Arc<Service>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for WsClientPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClientPool")
            .field("services", &self.names())
            .finish_non_exhaustive()
    }
}

impl Default for WsClientPool {
    fn default() -> Self {
        WsClientPool::new()
    }
}

impl WsClientPool {
    /// An empty pool.
    pub fn new() -> Self {
        WsClientPool {
            inner: Arc::new(Inner {
                services: RwLock::new(HashMap::new()),
                stop: watch::channel(false).0,
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Registers a service and connects to it, with the seed's arguments: handshake
    /// `headers`, `enable_reconnection`, and the fixed `retry_interval` between dials. Other
    /// settings keep [`ServiceOptions`]' defaults; [`add_ws_service_with`](Self::add_ws_service_with)
    /// takes them all.
    ///
    /// Waits for the first dial. If it fails, with reconnection on this still returns `Ok`
    /// and the pool keeps dialling in the background (messages written meanwhile are queued);
    /// with it off, the dial error is returned and the service is not registered. A bad URL,
    /// a header the handshake sets itself or a zero `retry_interval` are [`PoolError::Config`] at once.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future during the first dial unregisters the service, as if it had never
    /// been added.
    pub async fn add_ws_service(
        &self,
        name: &str,
        url: &str,
        headers: HeaderMap,
        enable_reconnection: bool,
        retry_interval: Duration,
    ) -> Result<(), PoolError> {
        let options = ServiceOptions::builder(url).headers(headers);
        let options = if enable_reconnection {
            options.reconnect(Reconnect::fixed(retry_interval))
        } else {
            options.no_reconnect()
        };
        self.add_ws_service_with(name, options.build()?).await
    }

    /// Registers a service with every setting given; see
    /// [`add_ws_service`](Self::add_ws_service) for what happens on the first dial.
    pub async fn add_ws_service_with(
        &self,
        name: &str,
        options: ServiceOptions,
    ) -> Result<(), PoolError> {
        if *self.inner.stop.borrow() {
            return Err(PoolError::Closed {
                name: name.to_owned(),
            });
        }
        let service = Arc::new(Service::new(name, options));
        {
            let mut services = self.write_services();
            if services.contains_key(name) {
                return Err(PoolError::DuplicateService {
                    name: name.to_owned(),
                });
            }
            services.insert(name.to_owned(), service.clone());
        }
        // Until the task exists, a cancelled call must not leave the name taken.
        let registration = Registration {
            pool: self,
            name,
            armed: true,
        };
        let socket = match connection::dial(&service.options).await {
            Ok(socket) => {
                service.tracker.set_state(ServiceState::Connected);
                Some(socket)
            }
            Err(reason) => {
                tracing::error!(service = name, url = %service.options.shown_url(), %reason, "failed to establish WebSocket connection");
                if service.options.reconnect.is_none() {
                    return Err(PoolError::Connect {
                        name: name.to_owned(),
                        url: service.options.url.clone(),
                        reason,
                    });
                }
                service.tracker.set_error(reason);
                service.tracker.set_state(ServiceState::Reconnecting);
                None
            }
        };
        registration.keep();
        let task = tokio::spawn(connection::run(
            service,
            socket,
            self.inner.stop.subscribe(),
        ));
        self.lock_tasks().push(task);
        Ok(())
    }

    /// Queues a message for the service (GoFr's `WriteMessageToService`), with the same
    /// encoding as `write_message_to_socket` ([`ws_message::encode`], the value borrowed):
    /// strings as text, bytes as binary, other values as JSON text; `()`/`None` sends nothing.
    ///
    /// Returns once the message is queued, without waiting for the network. Messages are sent
    /// in the order they were queued, including those queued while the service is down. A full
    /// queue is [`PoolError::QueueFull`]; an unknown name [`PoolError::ServiceNotFound`]; a
    /// closed service [`PoolError::Closed`].
    pub fn write_message_to_service<T: Encode + ?Sized>(
        &self,
        name: &str,
        data: &T,
    ) -> Result<(), PoolError> {
        let service = self.service(name)?;
        if *self.inner.stop.borrow() {
            return Err(PoolError::Closed {
                name: name.to_owned(),
            });
        }
        let Some(message) = ws_message::encode(data)? else {
            return Ok(());
        };
        let kind = match message {
            Message::Text(_) | Message::Binary(_) => None,
            Message::Ping(_) => Some("ping"),
            Message::Pong(_) => Some("pong"),
            Message::Close(_) => Some("close"),
        };
        if let Some(kind) = kind {
            return Err(PoolError::NotData { kind });
        }
        if service.tracker.state() == ServiceState::Closed {
            return Err(PoolError::Closed {
                name: name.to_owned(),
            });
        }
        match service.queue.push_back(message) {
            Ok(depth) => {
                service.tracker.queue_depth(depth);
                Ok(())
            }
            Err(_) => Err(PoolError::QueueFull {
                name: name.to_owned(),
                capacity: service.queue.capacity(),
            }),
        }
    }

    /// The messages the service sends, text and binary, from now on. A second call takes
    /// over: the earlier stream ends. Until someone asks, received messages are discarded
    /// (counted in [`ServiceStatus::discarded`]).
    pub fn messages(&self, name: &str) -> Result<ServiceMessages, PoolError> {
        let service = self.service(name)?;
        let (sender, receiver) = mpsc::channel(service.options.inbound_capacity);
        *service
            .inbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender);
        Ok(ServiceMessages { receiver })
    }

    /// The state and counters of one service.
    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.read_services()
            .get(name)
            .map(|service| service.status())
    }

    /// The state and counters of every service, by name.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let mut statuses: Vec<_> = self
            .read_services()
            .values()
            .map(|service| service.status())
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// The names of the registered services.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.read_services().keys().cloned().collect();
        names.sort();
        names
    }

    /// Closes every connection with close 1001 (after sending what is still queued) and stops
    /// every reconnect loop, each within its close timeout; returns when all tasks have ended.
    /// Later writes get [`PoolError::Closed`]. Calling it again does nothing.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the tasks closing on their own.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.lock_tasks());
        for task in tasks {
            // Each task bounds its closing handshake by its close timeout; a panic in one is
            // logged and does not stop the others.
            if let Err(error) = task.await {
                tracing::error!(%error, "WebSocket service task failed");
            }
        }
    }

    fn service(&self, name: &str) -> Result<Arc<Service>, PoolError> {
        self.read_services()
            .get(name)
            .cloned()
            .ok_or_else(|| PoolError::ServiceNotFound {
                name: name.to_owned(),
            })
    }

    fn read_services(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Service>>> {
        self.inner
            .services
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_services(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Service>>> {
        self.inner
            .services
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a service being added unless [`keep`](Registration::keep) is called.
struct Registration<'a> {
    pool: &'a WsClientPool,
    name: &'a str,
    armed: bool,
}

impl Registration<'_> {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.write_services().remove(self.name);
        }
    }
}

/// The messages a service sends back: a [`Stream`](futures_util::Stream) of text and binary
/// [`Message`]s, across reconnects. Ends when the pool shuts down or another call to
/// [`WsClientPool::messages`] takes over.
#[derive(Debug)]
pub struct ServiceMessages {
    receiver: mpsc::Receiver<Message>,
}

impl ServiceMessages {
    /// The next message, or `None` once the stream has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is only taken when this returns it.
    pub async fn recv(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

impl futures_util::Stream for ServiceMessages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.receiver.poll_recv(cx)
    }
}
