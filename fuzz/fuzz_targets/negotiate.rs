//! Fuzz target `negotiate`: the body is `ws_protocol::fuzzing::negotiate`, which
//! `crates/ws-protocol/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz negotiate` or `cargo +nightly fuzz run negotiate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_protocol::fuzzing::negotiate(data));
