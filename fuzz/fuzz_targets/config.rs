//! Fuzz target `config`: the body is `gofr_app::fuzzing::config`, which
//! `crates/gofr-app/tests/fuzz_corpus.rs` replays on stable. Run with
//! `cargo xtask fuzz config` or `cargo +nightly fuzz run config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gofr_app::fuzzing::config(data));
