//! What connections record through the `metrics` facade. Without an installed recorder every
//! call is a no-op; `gofr-app` installs a Prometheus one.

use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, counter, gauge};
use ws_message::close_code;

/// The `route` label of connections whose request matched no route pattern (an endpoint
/// served as a fallback): one series, not one per path.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// Open connections, per route (gauge).
const OPEN: &str = "ws_connections_open";
/// Connections accepted since start, per route.
const TOTAL: &str = "ws_connections_total";
const MESSAGES_RECEIVED: &str = "ws_messages_received_total";
const BYTES_RECEIVED: &str = "ws_bytes_received_total";
const MESSAGES_SENT: &str = "ws_messages_sent_total";
const BYTES_SENT: &str = "ws_bytes_sent_total";
const UPGRADE_FAILURES: &str = "ws_upgrade_failures_total";
const HANDLER_ERRORS: &str = "ws_handler_errors_total";
const CLOSES: &str = "ws_closes_total";
const QUEUE_FULL: &str = "ws_queue_full_total";
const SLOW_PEERS: &str = "ws_slow_peer_disconnects_total";

/// Registers the help text of every metric this crate records, so exporters can show it.
/// Call it once after installing a recorder; the metrics work without it.
///
/// | metric | labels | meaning |
/// |---|---|---|
/// | `ws_connections_open` (gauge) | `route` | connections open now |
/// | `ws_connections_total` | `route` | connections accepted |
/// | `ws_messages_received_total`, `ws_bytes_received_total` | `route` | data frames (text and binary) read, and their payload bytes |
/// | `ws_messages_sent_total`, `ws_bytes_sent_total` | `route` | data frames written, and their payload bytes |
/// | `ws_upgrade_failures_total` | `route`, `reason` | refused upgrades (`method_not_get`, `not_upgrade`, `unsupported_version`, `bad_key`, `origin_refused`, `not_upgradable`, `overloaded`, `shutting_down`, `other`) |
/// | `ws_handler_errors_total` | `route`, `kind` | handler calls that returned an error (`error`) or panicked (`panic`) |
/// | `ws_closes_total` | `route`, `code` | ended connections by close code: the [`close_code`](crate::close_code) constants by number (1005 when the peer's close had no code, 1006 when the peer vanished), any other code `other` |
///
/// `route` is the route pattern (`/ws/{room}`), or `unmatched` for a request that matched no
/// pattern: no label takes a value the peer chose, so the number of series stays bounded.
/// | `ws_queue_full_total` | `route` | writes that found the outbound queue full |
/// | `ws_slow_peer_disconnects_total` | `route` | peers closed with 1008 for not reading |
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(OPEN, "WebSocket connections open now");
    describe_counter!(TOTAL, "WebSocket connections accepted");
    describe_counter!(MESSAGES_RECEIVED, "WebSocket data messages received");
    describe_counter!(
        BYTES_RECEIVED,
        "Payload bytes of WebSocket data messages received"
    );
    describe_counter!(MESSAGES_SENT, "WebSocket data messages sent");
    describe_counter!(BYTES_SENT, "Payload bytes of WebSocket data messages sent");
    describe_counter!(UPGRADE_FAILURES, "WebSocket upgrades refused, by reason");
    describe_counter!(HANDLER_ERRORS, "WebSocket handler errors and panics");
    describe_counter!(CLOSES, "WebSocket connections ended, by close code");
    describe_counter!(
        QUEUE_FULL,
        "Writes that found a connection's outbound queue full"
    );
    describe_counter!(SLOW_PEERS, "Peers closed with 1008 for not reading");
}

/// One route's handles, looked up once so each message costs an atomic add.
#[derive(Debug)]
pub(crate) struct ConnMetrics {
    route: String,
    open: Gauge,
    pub(crate) messages_received: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) messages_sent: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) queue_full: Counter,
    pub(crate) slow_peers: Counter,
}

impl ConnMetrics {
    pub(crate) fn new(route: &str) -> Self {
        let label = || [("route", route.to_owned())];
        ConnMetrics {
            route: route.to_owned(),
            open: gauge!(OPEN, &label()),
            messages_received: counter!(MESSAGES_RECEIVED, &label()),
            bytes_received: counter!(BYTES_RECEIVED, &label()),
            messages_sent: counter!(MESSAGES_SENT, &label()),
            bytes_sent: counter!(BYTES_SENT, &label()),
            queue_full: counter!(QUEUE_FULL, &label()),
            slow_peers: counter!(SLOW_PEERS, &label()),
        }
    }

    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    pub(crate) fn opened(&self) {
        counter!(TOTAL, "route" => self.route.clone()).increment(1);
        self.open.increment(1.0);
    }

    pub(crate) fn closed(&self, code: u16) {
        self.open.decrement(1.0);
        counter!(CLOSES, "route" => self.route.clone(), "code" => close_code_label(code))
            .increment(1);
    }

    pub(crate) fn handler_failed(&self, kind: &'static str) {
        counter!(HANDLER_ERRORS, "route" => self.route.clone(), "kind" => kind).increment(1);
    }
}

/// The handles of each route an endpoint serves, made at the route's first connection and
/// shared by the next ones: making them allocates, about 450 bytes per connection when each
/// connection had its own (measured with `cargo xtask bench`, [S5](bench/README.md#scenarios)).
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteMetrics(Arc<Mutex<Vec<Arc<ConnMetrics>>>>);

impl RouteMetrics {
    pub(crate) fn get(&self, route: &str) -> Arc<ConnMetrics> {
        let mut routes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(metrics) = routes.iter().find(|m| m.route() == route) {
            return metrics.clone();
        }
        let metrics = Arc::new(ConnMetrics::new(route));
        routes.push(metrics.clone());
        metrics
    }
}

/// The `code` label: known codes by number, every other one (a peer's 4xxx, 3xxx, ...) as
/// `other`, so a peer cannot make a series per code.
fn close_code_label(code: u16) -> &'static str {
    match code {
        close_code::NORMAL => "1000",
        close_code::GOING_AWAY => "1001",
        close_code::PROTOCOL_ERROR => "1002",
        close_code::UNSUPPORTED => "1003",
        close_code::NO_STATUS => "1005",
        close_code::ABNORMAL => "1006",
        close_code::INVALID_PAYLOAD => "1007",
        close_code::POLICY => "1008",
        close_code::TOO_BIG => "1009",
        close_code::INTERNAL => "1011",
        close_code::TRY_AGAIN_LATER => "1013",
        _ => "other",
    }
}

pub(crate) fn upgrade_failed(route: &str, reason: &'static str) {
    counter!(UPGRADE_FAILURES, "route" => route.to_owned(), "reason" => reason).increment(1);
}
