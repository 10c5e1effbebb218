//! Fuzz target `frames_deflate`: the body is `ws_protocol::fuzzing::frames_deflate`, which
//! `crates/ws-protocol/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz frames_deflate` or `cargo +nightly fuzz run frames_deflate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_protocol::fuzzing::frames_deflate(data));
