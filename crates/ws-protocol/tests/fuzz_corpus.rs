//! Replays every input under `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` through the
//! same function the fuzz target calls, so that what the fuzzer found stays fixed on stable.

use ws_protocol::fuzzing;

#[test]
fn frames_corpus() {
    fuzzing::replay("frames", fuzzing::frames);
}

#[test]
fn frames_deflate_corpus() {
    fuzzing::replay("frames_deflate", fuzzing::frames_deflate);
}

#[test]
fn inflate_corpus() {
    fuzzing::replay("inflate", fuzzing::inflate);
}

#[test]
fn negotiate_corpus() {
    fuzzing::replay("negotiate", fuzzing::negotiate);
}
