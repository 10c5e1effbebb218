//! Integration tests: real clients (ws-test's, and raw sockets where the bytes are the point)
//! against a real server on 127.0.0.1.

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
