//! Fuzz target `handshake`: the body is `ws_upgrader::fuzzing::handshake`, which
//! `crates/ws-upgrader/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz handshake` or `cargo +nightly fuzz run handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_upgrader::fuzzing::handshake(data));
