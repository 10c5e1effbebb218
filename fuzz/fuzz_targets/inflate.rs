//! Fuzz target `inflate`: the body is `ws_protocol::fuzzing::inflate`, which
//! `crates/ws-protocol/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz inflate` or `cargo +nightly fuzz run inflate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_protocol::fuzzing::inflate(data));
