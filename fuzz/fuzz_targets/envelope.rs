//! Fuzz target `envelope`: the body is `ws_backplane_redis::fuzzing::envelope`, which
//! `crates/ws-backplane-redis/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz envelope` or `cargo +nightly fuzz run envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ws_backplane_redis::fuzzing::envelope(data));
