//! `/metrics` in Prometheus text format, on its own port (GoFr serves it on `METRICS_PORT`).
//!
//! The crates below record through the `metrics` facade; this module installs the process's
//! Prometheus recorder once and renders it.

use std::sync::OnceLock;

use axum::{Router, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder's handle. Installed by the first app that serves; later apps in
/// the same process (tests) share it.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows nothing");
        }
        ws_context::describe_metrics();
        #[cfg(feature = "redis")]
        ws_backplane_redis::describe_metrics();
        handle
    })
}

/// Installs the recorder (once per process) so that metrics recorded from now on are kept.
pub(crate) fn install() {
    handle();
}

/// The router served on `METRICS_PORT`.
pub(crate) fn routes() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            let handle = handle();
            // Histograms and summaries need it; counters and gauges are unaffected.
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
                .into_response()
        }),
    )
}
