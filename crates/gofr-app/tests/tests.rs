//! The umbrella app served in-process on 127.0.0.1:0, with real clients.

mod support;

mod broadcast;
mod fuzz_corpus;
mod handshake_timeout;
mod http_routes;
mod limits;
mod metrics;
mod services;
mod websocket;
