//! Tests with a real `redis-server` and real WebSocket clients on 127.0.0.1.

mod cluster;
mod fuzz_corpus;
mod history;
mod isolation;
mod presence;
mod redis_cluster;
mod slow_member;
mod support;
