//! Replays every input under `fuzz/corpus/envelope/` and `fuzz/artifacts/envelope/` through
//! the function the fuzz target calls, so that what the fuzzer found stays fixed on stable.

use ws_backplane_redis::fuzzing;

#[test]
fn envelope_corpus() {
    ws_protocol::fuzzing::replay("envelope", fuzzing::envelope);
}
