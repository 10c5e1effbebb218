//! The kit's own tests: each helper against a real server on a loopback port.

mod app;
mod client;
mod deflate;
mod failures;
mod router;
