//! What the pool knows about each service, and the metrics it records.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

/// Where a service's connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServiceState {
    /// The first dial is in progress.
    Connecting,
    /// Connected; queued messages are being sent.
    Connected,
    /// Not connected (the first dial failed or the connection dropped); dialling again after
    /// the retry interval. Writes are queued.
    Reconnecting,
    /// Stopped for good: the pool shut down, or the connection dropped with reconnection off.
    Closed,
}

impl ServiceState {
    /// `CONNECTING`, `CONNECTED`, `RECONNECTING` or `CLOSED`, as the health endpoint shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Connecting => "CONNECTING",
            ServiceState::Connected => "CONNECTED",
            ServiceState::Reconnecting => "RECONNECTING",
            ServiceState::Closed => "CLOSED",
        }
    }

    /// The value of the `ws_client_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            ServiceState::Connecting => 0.0,
            ServiceState::Connected => 1.0,
            ServiceState::Reconnecting => 2.0,
            ServiceState::Closed => 3.0,
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one service: state, last error and counters since it was added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its URL as [`ServiceOptions::shown_url`](crate::ServiceOptions::shown_url) gives it:
    /// without credentials, query or fragment.
    pub url: String,
    /// The connection's state.
    pub state: ServiceState,
    /// The last dial or connection error, with when it happened; kept after a reconnect.
    pub last_error: Option<(SystemTime, String)>,
    /// Messages waiting in the send queue.
    pub queued: usize,
    /// Data messages handed to a connection. A message that never left a connection that
    /// dropped is sent again on the next one, and counted again.
    pub sent: u64,
    /// Data messages received from the service.
    pub received: u64,
    /// Received messages dropped because nobody was reading [`messages`](crate::WsClientPool::messages).
    pub discarded: u64,
    /// Successful connections after the first one.
    pub reconnects: u64,
    /// Messages that may have reached connections that then died without a closing
    /// handshake (the kernel had taken at least one of their bytes) and that the service had
    /// not confirmed (by answering a later ping): they may have been lost in the kernels'
    /// buffers, and are never sent again. Messages that never reached the kernel are not
    /// counted: they go back to the queue. Zero means nothing can have been lost.
    pub possibly_lost: u64,
}

/// The live counterpart of [`ServiceStatus`], updated by the connection task and writers.
#[derive(Debug)]
pub(crate) struct Tracker {
    name: String,
    state: Mutex<(ServiceState, Option<(SystemTime, String)>)>,
    sent: AtomicU64,
    received: AtomicU64,
    discarded: AtomicU64,
    reconnects: AtomicU64,
    possibly_lost: AtomicU64,
}

impl Tracker {
    pub(crate) fn new(name: &str) -> Self {
        let tracker = Tracker {
            name: name.to_owned(),
            state: Mutex::new((ServiceState::Connecting, None)),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            possibly_lost: AtomicU64::new(0),
        };
        tracker.gauge_state(ServiceState::Connecting);
        tracker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (ServiceState, Option<(SystemTime, String)>)> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn state(&self) -> ServiceState {
        self.lock().0
    }

    pub(crate) fn set_state(&self, state: ServiceState) {
        self.lock().0 = state;
        self.gauge_state(state);
    }

    fn gauge_state(&self, state: ServiceState) {
        metrics::gauge!("ws_client_state", "service" => self.name.clone()).set(state.gauge());
    }

    /// Records the gauges again, so that a metrics recorder installed after the service was
    /// added (as an app does when it starts serving) sees them within a ping interval.
    pub(crate) fn refresh_gauges(&self, queue_depth: usize) {
        self.gauge_state(self.state());
        self.queue_depth(queue_depth);
    }

    pub(crate) fn set_error(&self, error: String) {
        self.lock().1 = Some((SystemTime::now(), error));
    }

    pub(crate) fn queue_depth(&self, depth: usize) {
        metrics::gauge!("ws_client_queue_depth", "service" => self.name.clone()).set(depth as f64);
    }

    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ws_client_messages_sent_total", "service" => self.name.clone())
            .increment(1);
    }

    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ws_client_messages_received_total", "service" => self.name.clone())
            .increment(1);
    }

    pub(crate) fn discarded(&self) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ws_client_messages_discarded_total", "service" => self.name.clone())
            .increment(1);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ws_client_reconnects_total", "service" => self.name.clone())
            .increment(1);
    }

    pub(crate) fn possibly_lost(&self, count: u64) {
        if count == 0 {
            return;
        }
        self.possibly_lost.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("ws_client_messages_possibly_lost_total", "service" => self.name.clone())
            .increment(count);
    }

    pub(crate) fn snapshot(&self, url: &str, queued: usize) -> ServiceStatus {
        let (state, last_error) = self.lock().clone();
        ServiceStatus {
            name: self.name.clone(),
            url: url.to_owned(),
            state,
            last_error,
            queued,
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            possibly_lost: self.possibly_lost.load(Ordering::Relaxed),
        }
    }
}
