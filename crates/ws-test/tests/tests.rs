//! The kit's own tests: each helper against a real server on a loopback port.

mod app;
mod client;
mod deflate;
mod failures;
mod router;

/// `endpoint` as an axum route; the tests' endpoints have valid options.
fn route(endpoint: ws_context::Endpoint) -> axum::routing::MethodRouter {
    endpoint.into_route().expect("valid endpoint options")
}
