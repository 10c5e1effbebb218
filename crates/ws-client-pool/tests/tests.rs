//! Integration tests: the pool against real WebSocket services on 127.0.0.1.

mod support;

mod accounting;
mod connect;
mod delivery;
mod failures;
mod limits;
mod shutdown;
