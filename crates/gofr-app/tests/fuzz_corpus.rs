//! Replays every input under `fuzz/corpus/config/` and `fuzz/artifacts/config/` through
//! the function the fuzz target calls, so that what the fuzzer found stays fixed on stable.

use gofr_app::fuzzing;

#[test]
fn config_corpus() {
    ws_protocol::fuzzing::replay("config", fuzzing::config);
}
