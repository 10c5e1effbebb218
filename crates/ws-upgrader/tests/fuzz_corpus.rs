//! Replays every input under `fuzz/corpus/handshake/` and `fuzz/artifacts/handshake/` through
//! the function the fuzz target calls, so that what the fuzzer found stays fixed on stable.

use ws_upgrader::fuzzing;

#[test]
fn handshake_corpus() {
    ws_protocol::fuzzing::replay("handshake", fuzzing::handshake);
}
