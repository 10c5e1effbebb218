//! Fuzz target `frames`: the body is `ws_protocol::fuzzing::frames`, which
//! `crates/ws-protocol/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz frames` or `cargo +nightly fuzz run frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_protocol::fuzzing::frames(data));
