//! What the backplane records through the `metrics` facade (no-ops without a recorder).

pub(crate) const PUBLISHED: &str = "backplane_messages_published_total";
pub(crate) const RECEIVED: &str = "backplane_messages_received_total";
pub(crate) const PUBLISH_ERRORS: &str = "backplane_publish_errors_total";
pub(crate) const GAPS: &str = "backplane_gaps_total";
pub(crate) const DUPLICATES: &str = "backplane_duplicates_total";
pub(crate) const RECONNECTS: &str = "backplane_reconnects_total";
pub(crate) const OVERFLOW: &str = "backplane_overflow_total";
pub(crate) const INVALID: &str = "backplane_invalid_messages_total";
pub(crate) const NODES: &str = "backplane_nodes";
pub(crate) const LATENCY: &str = "backplane_delivery_latency_seconds";

/// Registers the help text of every metric this crate records. Call it once after
/// installing a recorder; the metrics work without it.
///
/// | metric | meaning |
/// |---|---|
/// | `backplane_messages_published_total` | deliveries Redis accepted for other instances |
/// | `backplane_messages_received_total` | deliveries received from other instances |
/// | `backplane_publish_errors_total` | deliveries that could not be published (Redis down, queue full, timeout) |
/// | `backplane_gaps_total` | breaks in a sender's sequence: messages lost between instances |
/// | `backplane_duplicates_total` | deliveries received twice, dropped |
/// | `backplane_reconnects_total` | times the connection to Redis came back |
/// | `backplane_overflow_total` | messages from Redis dropped because the reader's queue was full |
/// | `backplane_invalid_messages_total` | frames dropped, by `reason`: `malformed`, `too_long`, `wrong_channel`, `unsigned`, `bad_signature` |
/// | `backplane_nodes` (gauge) | live hubs in the cluster, this one included |
/// | `backplane_delivery_latency_seconds` (histogram) | send time to arrival, across instances |
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(PUBLISHED, "Deliveries published to other instances");
    describe_counter!(RECEIVED, "Deliveries received from other instances");
    describe_counter!(PUBLISH_ERRORS, "Deliveries that could not be published");
    describe_counter!(GAPS, "Breaks in a sender's sequence (lost messages)");
    describe_counter!(DUPLICATES, "Duplicate deliveries dropped");
    describe_counter!(RECONNECTS, "Times the connection to Redis came back");
    describe_counter!(
        OVERFLOW,
        "Messages dropped because the reader's queue was full"
    );
    describe_counter!(
        INVALID,
        "Frames dropped: malformed, too long, wrong channel, unsigned or wrongly signed"
    );
    describe_gauge!(NODES, "Live hubs in the cluster, this one included");
    describe_histogram!(
        LATENCY,
        metrics::Unit::Seconds,
        "Time from publish on one instance to arrival on another"
    );
}
