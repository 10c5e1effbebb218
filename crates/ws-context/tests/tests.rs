//! Integration tests: a real tokio-tungstenite client against a real server on 127.0.0.1.

mod support;

mod backplane;
mod broadcast;
mod close;
mod handlers;
mod history;
mod hub;
mod liveness;
mod logging;
mod memory;
mod request;
mod writer;
